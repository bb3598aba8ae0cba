"""``EvaluationContext``: the inputs of one evaluation and a memo of the expensive shared results.

Metrics read their inputs from the context and keep what several of them need in its memo
(``ctx.memo(key, compute)``): each shared result is computed by a small function of the metric
module that owns it (``metrics.validity.valid_mask``, ``metrics.structure_matcher.structure_set``,
``metrics.uniqueness.uniqueness_result``, ``metrics.novelty.novelty_result``, ...) on first use and
kept, so coverage and S.U.N. do not featurize twice, and uniqueness and novelty reduce each cell
once. The context itself knows no metric, and only the relaxation (``relax_results``), which
belongs to no metric, is computed here. Nothing here knows which model made the structures:
inputs are ``crystalforge.core.candidate.Candidate``s (a crystal, or the reason there is none) and
plain reference crystals. For CSP, ``csp_links`` (built by ``assign_groups``) says which reference
each candidate predicts. Things that live in other packages (fingerprint featurizers, the relaxer)
come in as objects satisfying ``FeaturizerLike`` and ``Relaxer``.

Per-structure steps that a library can hang on (cell reduction, structure matching, spglib,
fingerprints) run under ``time_limit_s`` (``execution.time_limit.map_with_time_limit``); a structure
a step gave up on is noted with ``note_aborted`` and reported in the per-structure ``failure``
column and ``details["aborted"]``, and the run goes on.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.features import FeaturizerLike
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.execution import ExecutorConfig
from crystalforge.progress import ProgressBar, null_progress
from crystalforge.relax.interfaces import Relaxer, RelaxResult

__all__ = [
    "DEFAULT_TIME_LIMIT_S",
    "REJECTED",
    "TIME_LIMIT_ENV",
    "CSPLink",
    "EvaluationContext",
    "ProgressFactory",
    "Task",
    "assign_groups",
    "group_members",
    "no_structure_reason",
    "time_limit_from_env",
]

logger = logging.getLogger(__name__)

Task = Literal["dng", "csp"]

_RELAX = "relax"  # memo key of the relaxation results

_T = TypeVar("_T")

DEFAULT_TIME_LIMIT_S = 60.0
"""Seconds one structure may spend in one step (Niggli reduction, matching, spglib, a fingerprint)."""
TIME_LIMIT_ENV = "CRYSTALFORGE_TIME_LIMIT_S"
"""Environment variable overriding ``DEFAULT_TIME_LIMIT_S`` (``none`` or ``0``: no limit)."""
REJECTED = "rejected: "
"""Prefix of the error of a record refused before evaluation (over a ``core.limits`` resource limit)."""


def time_limit_from_env() -> float | None:
    """``DEFAULT_TIME_LIMIT_S``, or ``$CRYSTALFORGE_TIME_LIMIT_S`` when set (``none``/``0``: None, no limit)."""
    raw = os.environ.get(TIME_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIME_LIMIT_S
    if raw.lower() in ("none", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIME_LIMIT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIME_LIMIT_ENV}={raw!r} must be positive (or none)")
    return value


def no_structure_reason(error: str) -> str:
    """Why a record without a crystal failed: the rejection itself, else ``unreadable: <error>``."""
    return error if error.startswith(REJECTED) else f"unreadable: {error}"


ProgressFactory = Callable[[int | None, str], ProgressBar]
"""``factory(total, description)`` → a ``ProgressBar`` (``crystalforge.progress.progress_bar``, tqdm)."""


# ---- CSP linking ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CSPLink:
    """The reference a CSP prediction belongs to, and its prediction number ``k`` (-1: none given)."""

    reference_id: str
    rank: int = -1


_SUFFIX = re.compile(r"^(?P<base>.+?)(?:[_:#.]|__)(?P<num>\d+)$")


def _link(candidate: Candidate, known: set[str]) -> CSPLink | None:
    ident = candidate.ident if (candidate.ok or candidate.material_id) else Path(candidate.source.split(":")[0]).stem
    if not ident:
        return None
    if ident in known:
        return CSPLink(ident)
    m = _SUFFIX.match(ident)
    while m is not None:
        base = m.group("base")
        if base in known:
            return CSPLink(base, int(m.group("num")))
        m = _SUFFIX.match(base)
    return None


def assign_groups(candidates: Sequence[Candidate], reference_ids: Sequence[str]) -> list[CSPLink | None]:
    """Link CSP predictions to reference ``material_id``s: one ``CSPLink`` or None per candidate.

    A candidate belongs to reference ``R`` when its ``ident`` is ``R``, or is ``R`` followed by
    ``_k``, ``__k``, ``:k``, ``#k`` or ``.k`` with an integer ``k`` (k-th prediction, e.g. the file
    ``mp-1234_3.cif`` or the block ``mp-1234:3``); a candidate with neither a crystal nor an id is
    named by the stem of its source file.
    """
    known = set(reference_ids)
    return [_link(c, known) for c in candidates]


def group_members(links: Sequence[CSPLink | None]) -> dict[str, list[int]]:
    """Candidate indices per linked reference id, ordered by prediction number (``_k``), then input order."""
    groups: dict[str, list[int]] = {}
    for i, link in enumerate(links):
        if link is not None:
            groups.setdefault(link.reference_id, []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: (links[i].rank, i))  # type: ignore[union-attr]
    return groups


# ---- the context ---------------------------------------------------------------------------------------
@dataclass
class EvaluationContext:
    """Inputs and lazily computed shared results of one evaluation.

    Args:
        samples: the candidates to evaluate, in input order.
        task: ``"dng"`` (de novo generation) or ``"csp"`` (structure prediction).
        reference: the reference crystals (the test split of the protocol), or None.
        reference_name: the dataset or file the reference came from (for the protocol block).
        train: the training crystals of the protocol (for novelty), or None.
        train_name: where ``train`` came from.
        struct_featurizer / comp_featurizer: fingerprint featurizers for coverage, or None to skip it.
        coverage_cutoffs: (structure, composition) cutoffs, or None to skip coverage.
        relaxer: the relaxer for stability, or None.
        hull: the reference hull for stability, or None.
        k: CSP predictions per reference (None: the most any reference has).
        property_name / target_window: the targeting metric's property and ``(low, high)``.
        csp_links: per candidate, the reference it predicts (``assign_groups``), or None.
        workers: processes (or an executor config) for the expensive parts.
        cache_dir: where reference fingerprints are cached (None: no cache).
        sample_cache_dir: where the samples' fingerprints are cached, chunk by chunk, so an
            interrupted coverage evaluation resumes (None: no cache).
        progress: progress-bar factory.
        seed: seed of the property-distribution draw.
        time_limit_s: seconds one structure may spend in one step that a library can hang on
            (None: no limit; ``evaluate_candidates`` sets ``time_limit_from_env()``).

    """

    samples: Sequence[Candidate]
    task: Task = "dng"
    reference: Sequence[Crystal] | None = None
    reference_name: str | None = None
    train: Sequence[Crystal] | None = None
    train_name: str | None = None
    struct_featurizer: FeaturizerLike | None = None
    comp_featurizer: FeaturizerLike | None = None
    coverage_cutoffs: tuple[float, float] | None = None
    relaxer: Relaxer | None = None
    hull: ReferenceHull | None = None
    k: int | None = None
    property_name: str | None = None
    target_window: tuple[float | None, float | None] | None = None
    csp_links: Sequence[CSPLink | None] | None = None
    workers: int | ExecutorConfig = 1
    cache_dir: Path | None = None
    sample_cache_dir: Path | None = None
    progress: ProgressFactory = null_progress
    seed: int = 0
    time_limit_s: float | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False)
    aborted: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.csp_links is not None and len(self.csp_links) != len(self.samples):
            raise ValueError(f"{len(self.csp_links)} CSP links for {len(self.samples)} samples")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive or None, got {self.time_limit_s}")

    # ---- plain views -----------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of input records (unreadable ones included)."""
        return len(self.samples)

    @property
    def crystals(self) -> list[Crystal | None]:
        """One entry per sample: the crystal or None."""
        return [s.crystal for s in self.samples]

    def parsed_indices(self) -> list[int]:
        """Indices of samples that have a crystal."""
        return [i for i, s in enumerate(self.samples) if s.crystal is not None]

    def link(self, index: int) -> CSPLink | None:
        """The CSP link of sample ``index`` (None when unlinked or not a CSP evaluation)."""
        return None if self.csp_links is None else self.csp_links[index]

    def csp_groups(self) -> dict[str, list[int]]:
        """Sample indices per linked reference id, in prediction order (empty without links)."""
        return {} if self.csp_links is None else group_members(self.csp_links)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def note_aborted(self, reasons: Mapping[int, str]) -> None:
        """Record samples (by index) a step gave up on (``"timed out after 60 s in ..."``); the first reason stays."""
        for index, reason in reasons.items():
            if index not in self.aborted:
                logger.warning("%s: %s", self.samples[index].ident, reason)
                self.aborted[index] = reason

    def memo(self, key: str, compute: Callable[[], _T]) -> _T:
        """``compute()`` once per context; later calls with the same ``key`` return the kept value.

        Each key belongs to one function (e.g. ``metrics.validity.validity_report``), so the kept
        value always has the type that function's ``compute`` returns.
        """
        if key not in self._cache:
            self._cache[key] = compute()
        value: _T = self._cache[key]
        return value

    # ---- the relaxation (shared by stability and the written relaxed structures) ------------
    def relax_results(self) -> list[RelaxResult]:
        """One relaxation result per sample (unreadable samples get a failed result)."""
        if self.relaxer is None:
            raise ValueError("no relaxer given")
        relaxer = self.relaxer

        def compute() -> list[RelaxResult]:
            idx = self.parsed_indices()
            bar = self.progress(len(idx), f"relaxing ({relaxer.name})")
            last = [0]

            def advance(done: int, total: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            if hasattr(relaxer, "progress"):
                relaxer.progress = advance
            try:
                done = relaxer.relax([c for c in self.crystals if c is not None])
            finally:
                bar.close()
            out = [RelaxResult.failed(no_structure_reason(s.error or "")) for s in self.samples]
            for i, result in zip(idx, done, strict=True):
                out[i] = result
            return out

        return self.memo(_RELAX, compute)

    def relaxed_crystals(self) -> list[Crystal]:
        """The relaxed structures of a run that relaxed (failures left out); empty otherwise."""
        results = self._cache.get(_RELAX, [])  # never starts a relaxation
        return [r.crystal for r in results if r.crystal is not None]
