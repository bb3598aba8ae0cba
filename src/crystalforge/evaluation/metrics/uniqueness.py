"""Uniqueness of generated structures by structure matching (MatterGen's rule), and its suite adapter.

``StructureMatcher.fit`` with pymatgen's default tolerances (``ltol=0.2, stol=0.3, angle_tol=5``),
compared only within a reduced formula (``docs/metrics.md``, section "Uniqueness"). Structures
are taken in order; one joins the cluster of the first earlier representative it fits, else it
starts a cluster and is unique. Pass a ``StructureSet`` to share its grouping and reduced cells
with ``novelty`` of the same structures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.metrics.base import MetricResult
from crystalforge.evaluation.metrics.structure_matcher import (
    FIT_ANGLE_TOL,
    FIT_LTOL,
    FIT_STOL,
    MatcherSettings,
    PerStructureResult,
    ReducedCell,
    StructureSet,
    check_workers,
    first_fit,
    fit_error_text,
    matching_protocol,
    parallel_map,
    percent,
    site_subgroups,
    split_reduced,
    structure_set,
    to_structure,
)
from crystalforge.execution import ExecutorConfig

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = ["StructureUniqueness", "UniquenessMetric", "UniquenessResult", "uniqueness", "uniqueness_result"]


@dataclass(frozen=True)
class StructureUniqueness:
    """One structure: unique if it is the first of its cluster; ``representative`` is that first one."""

    unique: bool
    representative: int | None  # index of its cluster's first structure (itself when unique); None if no structure
    reason: str


@dataclass(frozen=True)
class UniquenessResult(PerStructureResult):
    """Percent of structures that are the first of their cluster (= clusters / all structures)."""

    SUMMARY = ("unique_rate", "num_structures", "num_unique", "num_errors")

    unique_rate: float
    num_structures: int
    num_unique: int
    num_errors: int  # structures for which pymatgen raised at least once (treated as no match)
    structures: tuple[StructureUniqueness, ...]
    protocol: Mapping[str, Any] = field(default_factory=dict)

    @property
    def unique(self) -> np.ndarray:
        """``[n]`` bool flags."""
        return np.array([s.unique for s in self.structures], dtype=bool)


def _cluster_task(task: tuple[MatcherSettings, list[ReducedCell]]) -> list[tuple[int, int, str | None]]:
    """Greedy clusters of one (formula, site count) group: (local representative, errors, first error)."""
    settings, reduced = task
    matcher = settings.matcher()
    structures = [to_structure(r) for r in reduced]
    reps: list[int] = []
    out: list[tuple[int, int, str | None]] = []
    for j, s in enumerate(structures):
        rep, errors, first = first_fit(matcher, s, ((r, structures[r]) for r in reps))
        if rep is None:
            rep = j
            reps.append(j)
        out.append((rep, errors, first))
    return out


def uniqueness(
    crystals: Sequence[Crystal | None] | StructureSet,
    *,
    ltol: float = FIT_LTOL,
    stol: float = FIT_STOL,
    angle_tol: float = FIT_ANGLE_TOL,
    primitive_cell: bool = True,
    scale: bool = True,
    attempt_supercell: bool = False,
    workers: int | ExecutorConfig = 1,
    time_limit_s: float | None = None,
) -> UniquenessResult:
    """Uniqueness of generated structures (MatterGen's greedy rule within each reduced formula).

    Structures are taken in order; one joins the cluster of the first earlier representative it
    fits (``fit(structure, representative)``), else it starts a cluster and is unique.

    Args:
        crystals: the structures, or a ``StructureSet`` of them (reuses its reduced cells); None
            entries (failed or invalid generations) count in the total and are never unique.
        ltol: ``StructureMatcher`` fractional length tolerance (pymatgen default).
        stol: ``StructureMatcher`` site tolerance (pymatgen default).
        angle_tol: ``StructureMatcher`` angle tolerance in degrees (pymatgen default).
        primitive_cell: reduce to primitive cells before matching.
        scale: scale both cells to the same volume before matching.
        attempt_supercell: try supercells when primitive site counts differ.
        workers: processes for the pymatgen calls (1: in this process), or an executor config.
        time_limit_s: seconds one cell reduction may take (None: no limit; a ``StructureSet``
            keeps its own); a structure over it is unique, with the time-out in its reason.

    Returns:
        The unique rate (percent of all entries), per-structure flags and representatives.

    """
    check_workers(workers)
    settings = MatcherSettings(ltol, stol, angle_tol, primitive_cell, scale, attempt_supercell)
    structures = crystals if isinstance(crystals, StructureSet) else StructureSet(crystals, time_limit_s=time_limit_s)
    # Only formulas shared by several structures need pymatgen.
    to_reduce = [i for members in structures.groups.values() if len(members) > 1 for i in members]
    errors: dict[int, str] = {}
    found = structures.reduced(to_reduce, primitive_cell=primitive_cell, workers=workers)
    reduced = split_reduced(to_reduce, found, errors)
    jobs = [
        job
        for members in structures.groups.values()
        for job in site_subgroups(members, reduced, settings.site_count_prefilter).values()
        if len(job) > 1
    ]
    outcomes = parallel_map(_cluster_task, [(settings, [reduced[i] for i in job]) for job in jobs], workers)
    rep_of: dict[int, int] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        for i, (local_rep, n_err, first) in zip(job, outcome, strict=True):
            rep_of[i] = job[local_rep]
            if n_err:
                errors[i] = fit_error_text(n_err, first)

    rows: list[StructureUniqueness] = []
    for i, c in enumerate(structures.crystals):
        if c is None:
            rows.append(StructureUniqueness(False, None, "no structure"))
            continue
        rep = rep_of.get(i, i)
        note = f" ({errors[i]})" if i in errors else ""
        rows.append(StructureUniqueness(rep == i, rep, ("unique" if rep == i else f"duplicate of {rep}") + note))

    num_unique = sum(s.unique for s in rows)
    comparison = "StructureMatcher.fit(structure, earlier representative), greedy in input order"
    protocol = matching_protocol("uniqueness", settings, comparison, {}, "unique")
    return UniquenessResult(
        unique_rate=percent(num_unique, len(rows)),
        num_structures=len(rows),
        num_unique=num_unique,
        num_errors=len(errors),
        structures=tuple(rows),
        protocol=protocol,
    )


def uniqueness_result(ctx: EvaluationContext) -> UniquenessResult:
    """Uniqueness over all of the context's samples (unreadable ones are never unique), computed once per context."""
    return ctx.memo("uniqueness", lambda: uniqueness(structure_set(ctx), workers=ctx.workers))


class UniquenessMetric:
    """Fraction of samples that are the first of their structure-matching cluster."""

    name = "uniqueness"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Over all input records (unreadable ones are never unique)."""
        result = uniqueness_result(ctx)
        ctx.note_aborted(structure_set(ctx).aborted)
        return MetricResult(
            summary={"unique_rate": result.unique_rate},
            columns={
                "unique": [s.unique for s in result.structures],
                "duplicate_of": [None if s.unique else s.representative for s in result.structures],
            },
            protocol=result.protocol,
        )
