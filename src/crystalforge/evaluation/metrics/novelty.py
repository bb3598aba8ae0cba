"""Novelty of generated structures against a training set (MatterGen's rule), and its suite adapter.

A structure is novel when no training structure with the same reduced formula fits it
(``StructureMatcher.fit`` with pymatgen's default tolerances; ``docs/metrics.md``, section
"Novelty"). Pass a ``StructureSet`` of the generated structures to share its grouping and reduced
cells with ``uniqueness``, and a ``TrainingSet`` to reuse the training reductions across calls.
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
    FITS_PER_TASK,
    MatcherSettings,
    PerStructureResult,
    ReducedCell,
    StructureSet,
    check_workers,
    first_fit,
    fit_error_text,
    formula_key,
    matching_protocol,
    parallel_map,
    percent,
    site_subgroups,
    split_reduced,
    structure_set,
    to_structure,
)
from crystalforge.evaluation.metrics.uniqueness import UniquenessResult
from crystalforge.execution import ExecutorConfig

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "NoveltyMetric",
    "NoveltyResult",
    "StructureNovelty",
    "TrainingSet",
    "novel_unique_rate",
    "novelty",
    "novelty_result",
]


class TrainingSet(StructureSet):
    """Training structures grouped by reduced formula, reduced lazily once; ``ids`` names each one.

    Build it once and pass it to every ``novelty`` call: only the formula groups that generated
    structures need are converted to pymatgen and reduced, and the reductions are kept.
    """

    def __init__(self, crystals: Sequence[Crystal], *, time_limit_s: float | None = None) -> None:
        missing = [i for i, c in enumerate(crystals) if c is None]
        if missing:
            raise ValueError(f"training structures {missing[:5]} are None")
        super().__init__(crystals, time_limit_s=time_limit_s)
        self.ids: tuple[str, ...] = tuple(
            str(c.material_id) if c is not None and c.material_id is not None else str(i)
            for i, c in enumerate(self.crystals)
        )


@dataclass(frozen=True)
class StructureNovelty:
    """One structure: novel unless a training structure of the same reduced formula fits it."""

    novel: bool
    matched_id: str | None  # material_id of the first training structure it fits
    matched_index: int | None  # that structure's index in the training set
    reason: str


@dataclass(frozen=True)
class NoveltyResult(PerStructureResult):
    """Percent of structures (None entries included) that match no training structure."""

    SUMMARY = ("novel_rate", "num_structures", "num_novel", "num_errors")

    novel_rate: float
    num_structures: int
    num_novel: int
    num_errors: int  # structures for which pymatgen raised at least once (treated as no match)
    structures: tuple[StructureNovelty, ...]
    protocol: Mapping[str, Any] = field(default_factory=dict)

    @property
    def novel(self) -> np.ndarray:
        """``[n]`` bool flags."""
        return np.array([s.novel for s in self.structures], dtype=bool)


def _novelty_task(
    task: tuple[MatcherSettings, list[ReducedCell], list[ReducedCell]],
) -> list[tuple[int | None, int, str | None]]:
    """For each generated cell: (local index of the first training cell it fits, errors, first error)."""
    settings, generated, training = task
    matcher = settings.matcher()
    train = [to_structure(t) for t in training]
    return [first_fit(matcher, to_structure(g), enumerate(train)) for g in generated]


def novelty(
    crystals: Sequence[Crystal | None] | StructureSet,
    reference_train: Sequence[Crystal] | TrainingSet,
    *,
    ltol: float = FIT_LTOL,
    stol: float = FIT_STOL,
    angle_tol: float = FIT_ANGLE_TOL,
    primitive_cell: bool = True,
    scale: bool = True,
    attempt_supercell: bool = False,
    workers: int | ExecutorConfig = 1,
    time_limit_s: float | None = None,
) -> NoveltyResult:
    """Novelty of generated structures against a training set (MatterGen's rule).

    A structure is novel when no training structure with the same reduced formula fits it
    (``fit(structure, training_structure)``).

    Args:
        crystals: the structures, or a ``StructureSet`` of them (reuses its reduced cells); None
            entries count in the total and are never novel.
        reference_train: the training crystals, or a ``TrainingSet`` built from them (reuses its
            reduced cells across calls).
        ltol: ``StructureMatcher`` fractional length tolerance (pymatgen default).
        stol: ``StructureMatcher`` site tolerance (pymatgen default).
        angle_tol: ``StructureMatcher`` angle tolerance in degrees (pymatgen default).
        primitive_cell: reduce to primitive cells before matching.
        scale: scale both cells to the same volume before matching.
        attempt_supercell: try supercells when primitive site counts differ.
        workers: processes for the pymatgen calls (1: in this process), or an executor config.
        time_limit_s: seconds one cell reduction may take (None: no limit; a ``StructureSet`` or
            ``TrainingSet`` keeps its own); a structure over it is novel, with the time-out in its reason.

    Returns:
        The novel rate (percent of all entries), per-structure flags and the matched training id.

    """
    check_workers(workers)
    settings = MatcherSettings(ltol, stol, angle_tol, primitive_cell, scale, attempt_supercell)
    limit = time_limit_s
    generated = crystals if isinstance(crystals, StructureSet) else StructureSet(crystals, time_limit_s=limit)
    train = (
        reference_train
        if isinstance(reference_train, TrainingSet)
        else TrainingSet(reference_train, time_limit_s=limit)
    )
    by_sites = settings.site_count_prefilter
    # Generated structures whose formula occurs in the training set, grouped by formula.
    by_key = {key: members for key, members in generated.groups.items() if key in train.groups}
    todo = [i for members in by_key.values() for i in members]
    needed = [t for key in by_key for t in train.groups[key]]
    errors: dict[int, str] = {}
    train_errors: dict[int, str] = {}
    train_found = train.reduced(needed, primitive_cell=primitive_cell, workers=workers)
    train_reduced = split_reduced(needed, train_found, train_errors)
    gen_found = generated.reduced(todo, primitive_cell=primitive_cell, workers=workers)
    gen_reduced = split_reduced(todo, gen_found, errors)

    # Jobs: (generated indices, training candidates) sharing formula (and reduced site count).
    jobs: list[tuple[list[int], list[int]]] = []
    for key, members in by_key.items():
        train_sub = site_subgroups(train.groups[key], train_reduced, by_sites)
        for site_key, gen in site_subgroups(members, gen_reduced, by_sites).items():
            candidates = train_sub.get(site_key, [])
            if candidates:
                step = max(1, FITS_PER_TASK // len(candidates))
                jobs.extend((gen[s : s + step], candidates) for s in range(0, len(gen), step))
    tasks = [(settings, [gen_reduced[i] for i in g], [train_reduced[t] for t in cands]) for g, cands in jobs]
    outcomes = parallel_map(_novelty_task, tasks, workers)

    hits: dict[int, int] = {}
    for (gen, cands), outcome in zip(jobs, outcomes, strict=True):
        for i, (hit, n_err, first) in zip(gen, outcome, strict=True):
            if hit is not None:
                hits[i] = cands[hit]
            if n_err:
                errors[i] = fit_error_text(n_err, first)

    rows = []
    for i, c in enumerate(generated.crystals):
        if c is None:
            rows.append(StructureNovelty(False, None, None, "no structure"))
        elif i in hits:
            t = hits[i]
            rows.append(StructureNovelty(False, train.ids[t], t, f"matches training structure {train.ids[t]}"))
        else:
            count = len(train.groups.get(formula_key(c), ()))
            note = f" ({errors[i]})" if i in errors else ""
            reason = f"novel: fits none of {count} training structures of {c.formula}{note}"
            rows.append(StructureNovelty(True, None, None, reason))

    num_novel = sum(s.novel for s in rows)
    extra = {"num_training_structures": len(train), "training_reduction_errors": len(train_errors)}
    comparison = "StructureMatcher.fit(structure, training structure)"
    protocol = matching_protocol("novelty", settings, comparison, extra, "novel")
    return NoveltyResult(
        novel_rate=percent(num_novel, len(rows)),
        num_structures=len(rows),
        num_novel=num_novel,
        num_errors=len(errors),
        structures=tuple(rows),
        protocol=protocol,
    )


def novel_unique_rate(unique: UniquenessResult, novel: NoveltyResult) -> float:
    """Percent of structures that are both unique and novel (MatterGen's ``frac_novel_unique_structures``)."""
    if unique.num_structures != novel.num_structures:
        raise ValueError(f"{unique.num_structures} uniqueness rows but {novel.num_structures} novelty rows")
    both = sum(u.unique and n.novel for u, n in zip(unique.structures, novel.structures, strict=True))
    return percent(both, unique.num_structures)


def novelty_result(ctx: EvaluationContext) -> NoveltyResult:
    """Novelty of every sample of the context against its training set, computed once per context."""
    if ctx.train is None:
        raise ValueError("no training set given")
    train = ctx.train
    return ctx.memo(
        "novelty", lambda: novelty(structure_set(ctx), train, workers=ctx.workers, time_limit_s=ctx.time_limit_s)
    )


class NoveltyMetric:
    """Fraction of samples that match no training structure of the same reduced formula."""

    name = "novelty"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs the protocol's training set."""
        return None if ctx.train is not None else f"no training set ({ctx.train_name})"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Over all input records (unreadable ones are never novel)."""
        result = novelty_result(ctx)
        ctx.note_aborted(structure_set(ctx).aborted)
        return MetricResult(
            summary={"novel_rate": result.novel_rate},
            columns={
                "novel": [s.novel for s in result.structures],
                "matches_train": [s.matched_id for s in result.structures],
            },
            protocol={**result.protocol, "train": ctx.train_name},
        )
