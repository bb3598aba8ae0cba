"""``evaluate_candidates``: one evaluation from candidates to a written report.

This is the assembly behind ``crystalforge.api.evaluate`` and ``crystalforge evaluate``: it checks
the settings, links CSP predictions to their references, finds CDVAE's coverage cutoffs for a
benchmark, loads the shipped reference hull when a relaxer is given, builds the
``EvaluationContext``, runs the task's suite and writes ``summary.json``, ``per_structure.csv``,
``summary.md`` (and ``relaxed.extxyz`` after a relaxation) into ``out``. Reading files, loading
datasets and building featurizers or relaxers stay with the caller: they come in as objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.extras import require
from crystalforge.core.limits import StructureLimits
from crystalforge.evaluation.context import (
    REJECTED,
    CSPLink,
    EvaluationContext,
    ProgressFactory,
    Task,
    assign_groups,
    time_limit_from_env,
)
from crystalforge.evaluation.features import FeaturizerLike
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.coverage import coverage_cutoffs as published_cutoffs
from crystalforge.evaluation.report import MetricReport
from crystalforge.evaluation.suite import run_evaluation
from crystalforge.execution import ExecutorConfig
from crystalforge.io.files import write_structures
from crystalforge.progress import ProgressBar, null_progress, progress_bar
from crystalforge.relax.interfaces import Relaxer

__all__ = ["RELAXED_FILE", "evaluate_candidates", "featurizers_needed", "link_predictions", "within_limits"]

RELAXED_FILE = "relaxed.extxyz"
"""The relaxed structures of a run with a relaxer, written beside the summary."""

_TASKS: tuple[Task, ...] = ("dng", "csp")


def link_predictions(
    candidates: Sequence[Candidate], reference: Sequence[Crystal] | None, reference_name: str | None
) -> list[CSPLink | None]:
    """CSP links of ``candidates`` to ``reference`` (``assign_groups``), or a ``ValueError`` saying what is wrong.

    Raises:
        ValueError: without a reference, when a reference structure has no or a repeated
            ``material_id``, or when no candidate links to any reference.

    """
    if reference is None:
        raise ValueError("task='csp' needs a reference set")
    ids = [c.material_id or "" for c in reference]
    if "" in ids or len(set(ids)) != len(ids):
        raise ValueError(f"reference {reference_name}: CSP needs a distinct material_id for every reference structure")
    links = assign_groups(candidates, ids)
    if not any(link is not None for link in links):
        raise ValueError(
            "no sample is linked to a reference material_id: name files <material_id>.cif or "
            "<material_id>_<k>.cif, or give extxyz frames a material_id"
        )
    return links


def _cutoffs(given: tuple[float, float] | None, reference_key: str | None) -> tuple[float, float] | None:
    """The given cutoffs, else CDVAE's for the benchmark ``reference_key``, else None."""
    if given is not None:
        return (float(given[0]), float(given[1]))
    if reference_key is None:
        return None
    try:
        return published_cutoffs(reference_key)
    except KeyError:
        return None


def featurizers_needed(
    task: str, reference_key: str | None, coverage_cutoffs: tuple[float, float] | None = None
) -> bool:
    """Whether coverage can run (a DNG task with cutoffs given or published for ``reference_key``).

    Callers build the fingerprint featurizers only when it does.
    """
    return task == "dng" and _cutoffs(coverage_cutoffs, reference_key) is not None


def within_limits(candidates: Sequence[Candidate], limits: StructureLimits) -> list[Candidate]:
    """The candidates, each one over a resource limit turned into a failed record ``rejected: <problem>``."""
    out = []
    for candidate in candidates:
        why = None if candidate.crystal is None else limits.problem(candidate.crystal)
        out.append(candidate if why is None else candidate.failed(f"{REJECTED}{why}"))
    return out


def _quiet_bar(total: int | None, desc: str) -> ProgressBar:
    return progress_bar(total, desc, leave=False)


def evaluate_candidates(
    candidates: Sequence[Candidate],
    *,
    task: str = "dng",
    reference: Sequence[Crystal] | None,
    reference_name: str | None,
    reference_key: str | None = None,
    train: Sequence[Crystal] | None = None,
    train_name: str | None = None,
    struct_featurizer: FeaturizerLike | None = None,
    comp_featurizer: FeaturizerLike | None = None,
    coverage_cutoffs: tuple[float, float] | None = None,
    relaxer: Relaxer | None = None,
    k: int | None = None,
    target: tuple[str, float | None, float | None] | None = None,
    out: Path | None = None,
    workers: int | ExecutorConfig = 1,
    cache_dir: Path | None = None,
    progress: ProgressFactory = null_progress,
    show_progress: bool = False,
    time_limit_s: float | str | None = "env",
    limits: StructureLimits | None = None,
) -> MetricReport:
    """Evaluate generated (``task="dng"``) or predicted (``task="csp"``) candidates by the pinned protocol.

    Args:
        candidates: the records to evaluate, in order; those without a crystal count as invalid.
        task: ``"dng"`` or ``"csp"``. For CSP, candidates link to reference ``material_id``s by
            name (``mp-1234``, ``mp-1234_3``, ...; see ``assign_groups``), up to ``k`` per reference.
        reference: the reference crystals (a benchmark's test split), or None for the
            reference-free metrics only.
        reference_name: the reference's name in the protocol block (e.g. ``"mp_20/test"``).
        reference_key: the benchmark name, used only to look up CDVAE's coverage cutoffs.
        train: the training crystals for novelty (and S.U.N.), or None; not used for CSP.
        train_name: where ``train`` came from, or why there is none (for the protocol block).
        struct_featurizer: structure fingerprints for coverage (None skips coverage).
        comp_featurizer: composition fingerprints for coverage (None skips coverage).
        coverage_cutoffs: (structure, composition) cutoffs; None takes CDVAE's for ``reference_key``.
        relaxer: relaxes the candidates for stability and S.U.N. against the shipped hull, or None.
        k: predictions per reference for best-of-k (CSP; None: the most any reference has).
        target: ``(property, low, high)`` window for the targeting success rate.
        out: folder for the report files (also caches the samples' fingerprints in
            ``out/fingerprints`` so an interrupted coverage run resumes), or None.
        workers: processes (or an executor config) for structure matching and symmetry analysis;
            featurizers and the relaxer bring their own.
        cache_dir: folder of the reference fingerprint cache (None: no cache).
        progress: progress-bar factory (``total, description`` → bar).
        show_progress: tqdm bars on stderr (``crystalforge.progress.progress_bar``) when no
            ``progress`` factory is given.
        time_limit_s: seconds one structure may spend in one step a library can hang on (cell
            reduction, matching, spglib, a fingerprint); a structure over it fails that step with
            ``timed out after N s in <step>`` and the run goes on. None: no limit; ``"env"``:
            ``$CRYSTALFORGE_TIME_LIMIT_S``, else 60 s.
        limits: what one structure may cost (``core.limits``; None: ``StructureLimits.from_env()``);
            a candidate over a limit is rejected before any work, kept as a record without a
            structure whose failure reads ``rejected: <problem>``.

    Returns:
        The report (also written into ``out`` when given).

    Raises:
        ValueError: for an unknown task, ``k < 1``, ``workers < 1`` and the CSP linking errors of
            ``link_predictions``.
        CrystalError: when there are no candidates.
        FileNotFoundError: when a relaxer is given but the shipped hull is not installed.
        MissingDependencyError: when smact (the ``evaluation`` extra) is not installed.

    """
    if task not in _TASKS:
        raise ValueError(f"task must be 'dng' or 'csp', not {task!r}")
    require("smact", "the validity metric (SMACT composition rule)", extra="evaluation")
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be >= 1, got {k}")
    config = ExecutorConfig.of(workers)
    items = within_limits(candidates, limits or StructureLimits.from_env())
    if not items:
        raise CrystalError("no structures to evaluate")
    links = None
    if task == "csp":
        links = link_predictions(items, reference, reference_name)
        train, train_name = None, "not used for CSP"
    cutoffs = _cutoffs(coverage_cutoffs, reference_key) if task == "dng" and reference is not None else None
    ctx = EvaluationContext(
        samples=items,
        task="csp" if task == "csp" else "dng",
        reference=None if reference is None else list(reference),
        reference_name=reference_name,
        train=None if train is None else list(train),
        train_name=train_name,
        struct_featurizer=struct_featurizer,
        comp_featurizer=comp_featurizer,
        coverage_cutoffs=cutoffs,
        relaxer=relaxer,
        hull=None if relaxer is None else ReferenceHull.load(),
        k=k,
        property_name=None if target is None else target[0],
        target_window=None if target is None else (target[1], target[2]),
        csp_links=links,
        workers=config,
        cache_dir=cache_dir,
        sample_cache_dir=None if out is None else Path(out) / "fingerprints",
        progress=_quiet_bar if show_progress and progress is null_progress else progress,
        time_limit_s=_time_limit(time_limit_s),
    )
    report = run_evaluation(ctx)
    if out is not None:
        report.write(out)
        relaxed = ctx.relaxed_crystals()
        if relaxed:
            write_structures(relaxed, Path(out) / RELAXED_FILE)
    return report


def _time_limit(value: float | str | None) -> float | None:
    """Seconds, None (no limit), or the environment's setting for ``"env"``."""
    if isinstance(value, str):
        if value != "env":
            raise ValueError(f"time_limit_s must be a number of seconds, None or 'env', not {value!r}")
        return time_limit_from_env()
    return value
