"""pymatgen ``StructureMatcher`` plumbing shared by the CSP, uniqueness and novelty metrics.

``MatcherSettings`` names the matcher options a metric uses. ``StructureSet`` groups structures by
reduced formula and reduces each cell once (Niggli, then primitive: what ``StructureMatcher.fit``
would do on every call), lazily and kept, so uniqueness and novelty of the same structures share
one grouping and one reduction. Structures whose reduced cells hold different numbers of sites are
never compared: with ``attempt_supercell=False`` pymatgen cannot match them, so that prefilter
changes no verdict. ``parallel_map`` hands the pymatgen work to a ``crystalforge.execution``
executor; results never depend on the number of workers. ``structure_set(ctx)`` is the
``StructureSet`` of an evaluation's samples, kept in its ``EvaluationContext``;
``PerStructureResult`` and ``matching_protocol`` are the parts uniqueness and novelty report alike.

Cell reduction runs under a per-structure time limit (``StructureSet(time_limit_s=...)``): pymatgen's
Niggli reduction of an extremely skewed cell can spend minutes in a C neighbour search, so a
structure over the limit gets the error ``timed out after N s in Niggli reduction`` (it then
matches nothing), is listed in ``StructureSet.aborted`` and the metric goes on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.versions import distribution_version
from crystalforge.execution import ExecutorConfig, make_executor
from crystalforge.execution.time_limit import StepAbortedError, map_with_time_limit

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed import DataclassInstance
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "CSP_ANGLE_TOL",
    "CSP_LTOL",
    "CSP_STOL",
    "FIT_ANGLE_TOL",
    "FIT_LTOL",
    "FIT_STOL",
    "PYMATGEN_MODULES",
    "FormulaKey",
    "MatcherSettings",
    "PerStructureResult",
    "ReducedCell",
    "StructureSet",
    "formula_key",
    "matching_protocol",
    "parallel_map",
    "structure_set",
]

CSP_LTOL, CSP_STOL, CSP_ANGLE_TOL = 0.3, 0.5, 10.0
"""CDVAE / DiffCSP ``StructureMatcher`` tolerances for CSP and reconstruction."""

FIT_LTOL, FIT_STOL, FIT_ANGLE_TOL = 0.2, 0.3, 5.0
"""pymatgen's default tolerances, used by MatterGen for uniqueness and novelty."""

FITS_PER_TASK = 256
"""Rough number of pymatgen calls sent to a worker at once."""

REDUCTION_STEP = "Niggli reduction"
"""The step name in a time-out reason of ``reduce_cell``."""

PYMATGEN_MODULES = ("pymatgen.analysis.structure_matcher", "pymatgen.optimization.neighbors")
"""What reduction and matching import lazily: loaded before a time-limited child is forked."""

FormulaKey = tuple[tuple[int, int], ...]
"""Reduced composition ``((Z, count), ...)`` in increasing Z."""

ReducedCell = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(Z [n], frac [n, 3], lattice [3, 3])`` of a Niggli- (and primitive-) reduced cell."""

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class MatcherSettings:
    """The ``StructureMatcher`` options a metric uses (the comparator is always pymatgen's default)."""

    ltol: float
    stol: float
    angle_tol: float
    primitive_cell: bool = True
    scale: bool = True
    attempt_supercell: bool = False

    def __post_init__(self) -> None:
        for name in ("ltol", "stol", "angle_tol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def matcher(self) -> StructureMatcher:
        """A pymatgen ``StructureMatcher`` with these settings."""
        return _matcher(self)

    @property
    def site_count_prefilter(self) -> bool:
        """Whether reduced cells with different site counts can be skipped (exact without supercells)."""
        return not self.attempt_supercell

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data, for a protocol block."""
        return asdict(self)


@lru_cache(maxsize=16)
def _matcher(settings: MatcherSettings) -> StructureMatcher:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(
        ltol=settings.ltol,
        stol=settings.stol,
        angle_tol=settings.angle_tol,
        primitive_cell=settings.primitive_cell,
        scale=settings.scale,
        attempt_supercell=settings.attempt_supercell,
    )


# ---- small helpers -----------------------------------------------------------------------------------
def formula_key(crystal: Crystal) -> FormulaKey:
    """Reduced composition ``((Z, count), ...)`` in increasing Z, counts divided by their gcd."""
    z, counts = np.unique(crystal.atomic_numbers, return_counts=True)
    g = int(np.gcd.reduce(counts))
    return tuple(zip(z.tolist(), (counts // g).tolist(), strict=True))


def error_text(exc: BaseException) -> str:
    """``"Type: message"``, cut to 200 characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def percent(count: int, total: int) -> float:
    """``100 * count / total``, NaN for an empty total."""
    return 100.0 * count / total if total else math.nan


def check_workers(workers: int | ExecutorConfig) -> ExecutorConfig:
    """The executor config of ``workers`` (an int >= 1 or an ``ExecutorConfig``)."""
    if isinstance(workers, ExecutorConfig):
        return workers
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return ExecutorConfig(workers=workers)


def parallel_map(fn: Callable[[_T], _R], tasks: Sequence[_T], workers: int | ExecutorConfig) -> list[_R]:
    """``[fn(t) for t in tasks]`` on an executor (same results, same order, whatever the workers)."""
    config = check_workers(workers)
    if config.ray is None:
        if config.workers <= 1 or len(tasks) <= 1:
            return [fn(t) for t in tasks]
        config = dataclasses.replace(config, workers=min(config.workers, len(tasks)))
    with make_executor(config) as executor:
        return executor.map(fn, tasks)


# ---- cell reduction --------------------------------------------------------------------------------
def reduce_cell(crystal: Crystal, primitive_cell: bool) -> ReducedCell | str:
    """The cell ``StructureMatcher.fit`` works on (Niggli, then primitive), or the error text."""
    try:
        structure = crystal.to_pymatgen().get_reduced_structure(reduction_algo="niggli")
        if primitive_cell:
            structure = structure.get_primitive_structure()
        z = np.array([site.specie.Z for site in structure], dtype=np.int64)
        return z, np.array(structure.frac_coords, dtype=np.float64), np.array(structure.lattice.matrix)
    except Exception as exc:  # noqa: BLE001 - a pathological structure must not stop the metric
        return error_text(exc)


def _reduce_chunk(task: tuple[bool, list[Crystal], float | None]) -> list[ReducedCell | str | StepAbortedError]:
    primitive_cell, crystals, seconds = task
    reduce = partial(reduce_cell, primitive_cell=primitive_cell)
    return map_with_time_limit(reduce, crystals, seconds=seconds, step=REDUCTION_STEP, preload=PYMATGEN_MODULES)


def reduce_many(
    crystals: Sequence[Crystal],
    primitive_cell: bool,
    workers: int | ExecutorConfig,
    time_limit_s: float | None = None,
) -> list[ReducedCell | str | StepAbortedError]:
    """``reduce_cell`` of every crystal, in order, chunked over the executor; ``StepAbortedError`` past the limit."""
    n_workers = check_workers(workers).workers
    size = max(1, min(64, math.ceil(len(crystals) / max(1, 4 * n_workers))))
    tasks = [(primitive_cell, list(crystals[i : i + size]), time_limit_s) for i in range(0, len(crystals), size)]
    return [r for chunk in parallel_map(_reduce_chunk, tasks, workers) for r in chunk]


def to_structure(reduced: ReducedCell) -> Structure:
    """A pymatgen ``Structure`` of a reduced cell."""
    from pymatgen.core import Lattice, Structure

    z, frac, lattice = reduced
    return Structure(Lattice(lattice), species=z.tolist(), coords=frac, coords_are_cartesian=False)


def fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    """``matcher.fit`` of two already reduced structures."""
    return bool(matcher.fit(a, b, skip_structure_reduction=True))


def first_fit(
    matcher: StructureMatcher, structure: Structure, candidates: Iterable[tuple[int, Structure]]
) -> tuple[int | None, int, str | None]:
    """(index of the first candidate ``structure`` fits, errors raised, first error); an error is no match."""
    errors, first = 0, None
    for index, candidate in candidates:
        try:
            if fit(matcher, structure, candidate):
                return index, errors, first
        except Exception as exc:  # noqa: BLE001 - counted as no match
            errors += 1
            first = first or error_text(exc)
    return None, errors, first


def split_reduced(
    indices: Sequence[int], found: Mapping[int, ReducedCell | str], errors: dict[int, str]
) -> dict[int, ReducedCell]:
    """The reduced cells that worked; failures go to ``errors`` (they can then match nothing)."""
    ok: dict[int, ReducedCell] = {}
    for i in indices:
        r = found[i]
        if isinstance(r, str):
            errors[i] = f"cell reduction failed: {r}"
        else:
            ok[i] = r
    return ok


def site_subgroups(indices: Iterable[int], reduced: Mapping[int, ReducedCell], by_sites: bool) -> dict[int, list[int]]:
    """Reducible structures split by reduced site count (when that prefilter is exact), in order."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        if i in reduced:
            groups.setdefault(len(reduced[i][0]) if by_sites else 0, []).append(i)
    return groups


# ---- a set of structures, grouped and reduced once ----------------------------------------------------
class StructureSet:
    """Structures grouped by reduced formula, with their reduced cells computed once, lazily.

    Build it once and pass it to every ``uniqueness`` / ``novelty`` call on the same structures:
    only the structures a metric needs are converted to pymatgen and reduced, and the reductions
    are kept for the next metric. None entries (no structure) belong to no group. A reduction that
    runs past ``time_limit_s`` seconds (None: no limit) is stopped; ``aborted`` maps the index of
    such a structure to the reason.
    """

    def __init__(self, crystals: Sequence[Crystal | None], *, time_limit_s: float | None = None) -> None:
        self.crystals: tuple[Crystal | None, ...] = tuple(crystals)
        self.time_limit_s = time_limit_s
        self.aborted: dict[int, str] = {}
        self.groups: dict[FormulaKey, list[int]] = {}
        for i, c in enumerate(self.crystals):
            if c is not None:
                self.groups.setdefault(formula_key(c), []).append(i)
        self._reduced: dict[bool, dict[int, ReducedCell | str]] = {}

    def __len__(self) -> int:
        return len(self.crystals)

    def num_reduced(self, *, primitive_cell: bool = True) -> int:
        """How many structures have been reduced so far."""
        return len(self._reduced.get(primitive_cell, {}))

    def reduced(
        self, indices: Sequence[int], *, primitive_cell: bool = True, workers: int | ExecutorConfig = 1
    ) -> dict[int, ReducedCell | str]:
        """Reduced cells (or error texts) of structures ``indices``, computing only missing ones."""
        cache = self._reduced.setdefault(primitive_cell, {})
        missing = [i for i in dict.fromkeys(indices) if i not in cache]
        crystals = [self.crystals[i] for i in missing]
        if any(c is None for c in crystals):
            raise ValueError("a None entry has no cell to reduce")
        if missing:
            found = reduce_many([c for c in crystals if c is not None], primitive_cell, workers, self.time_limit_s)
            for i, result in zip(missing, found, strict=True):
                if isinstance(result, StepAbortedError):
                    self.aborted[i] = str(result)
                cache[i] = str(result) if isinstance(result, StepAbortedError) else result
        return {i: cache[i] for i in indices}

    def prepare(self, *, primitive_cell: bool = True, workers: int | ExecutorConfig = 1) -> StructureSet:
        """Reduce every structure now (e.g. before pickling the set); returns ``self``."""
        todo = [i for i, c in enumerate(self.crystals) if c is not None]
        self.reduced(todo, primitive_cell=primitive_cell, workers=workers)
        return self


def prefilter_text(settings: MatcherSettings) -> str:
    """What the protocol block says about the prefilter."""
    return "same reduced formula" + (
        " and same site count of the reduced cell" if settings.site_count_prefilter else ""
    )


def fit_error_text(num_errors: int, first: str | None) -> str:
    """Why a structure's verdict may have missed a match: ``num_errors`` comparisons raised."""
    return f"{num_errors} comparison(s) raised, counted as no match: {first}"


def matching_protocol(
    metric: str, settings: MatcherSettings, comparison: str, extra: Mapping[str, Any], never: str
) -> dict[str, Any]:
    """Protocol block of uniqueness and novelty; ``extra`` goes before the None-entry and error rules.

    ``never`` is what a None entry (no structure) never is: ``"unique"``, ``"novel"``.
    """
    return {
        "metric": metric,
        **settings.as_dict(),
        "comparison": comparison,
        "prefilter": prefilter_text(settings),
        **extra,
        "none_entries": f"counted in the total, never {never}",
        "errors": "an exception from pymatgen counts as no match",
        "pymatgen_version": distribution_version("pymatgen"),
    }


class PerStructureResult:
    """``to_dict`` of the uniqueness and novelty results (frozen dataclasses with one row per structure).

    ``SUMMARY`` names the summary attributes in the order ``to_dict`` writes them; the protocol
    and the rows (dataclasses, ``structures``) follow.
    """

    SUMMARY: ClassVar[tuple[str, ...]]
    protocol: Mapping[str, Any]
    structures: Sequence[DataclassInstance]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): the summary, the protocol and one row per structure."""
        summary = {name: getattr(self, name) for name in self.SUMMARY}
        return {**summary, "protocol": dict(self.protocol), "structures": [asdict(s) for s in self.structures]}


def structure_set(ctx: EvaluationContext) -> StructureSet:
    """The context's samples grouped by reduced formula, each cell reduced at most once (kept in ``ctx``)."""
    return ctx.memo("structure_set", lambda: StructureSet(ctx.crystals, time_limit_s=ctx.time_limit_s))
