"""``EvaluationContext``: the inputs of one evaluation and the expensive shared results, computed once.

Metrics read what they need from the context (validity flags, the grouped and reduced structures,
uniqueness, novelty, relaxation results, ...). Each such thing is computed lazily on first use and
kept, so coverage and S.U.N. do not featurize or relax twice, and uniqueness and novelty reduce
each cell once. Nothing here knows which model made the structures: inputs are
``crystalforge.core.candidate.Candidate``s (a crystal, or the reason there is none) and plain
reference crystals. For CSP, ``csp_links`` (built by ``assign_groups``) says which reference each
candidate predicts. Things that live in other packages (fingerprint featurizers, the relaxer)
come in as objects satisfying ``FeaturizerLike`` and ``Relaxer``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.features import FeaturizerLike
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.novelty import NoveltyResult, novelty
from crystalforge.evaluation.metrics.structure_matcher import StructureSet
from crystalforge.evaluation.metrics.uniqueness import UniquenessResult, uniqueness
from crystalforge.evaluation.metrics.validity import ValidityReport, validity
from crystalforge.execution import ExecutorConfig
from crystalforge.progress import ProgressBar, null_progress
from crystalforge.relax.interfaces import Relaxer, RelaxResult

__all__ = [
    "CSPLink",
    "EvaluationContext",
    "ProgressFactory",
    "Task",
    "assign_groups",
    "group_members",
]

Task = Literal["dng", "csp"]

_RELAX = "relax"  # memo key of the relaxation results


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
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.csp_links is not None and len(self.csp_links) != len(self.samples):
            raise ValueError(f"{len(self.csp_links)} CSP links for {len(self.samples)} samples")

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

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context; later calls return the kept value."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # ---- shared expensive results ----------------------------------------------------------
    def validity_report(self) -> ValidityReport:
        """Validity of the parsed crystals (unparsed samples are handled by ``valid_mask``)."""
        return self.memo("validity", lambda: validity([c for c in self.crystals if c is not None]))

    def valid_mask(self) -> np.ndarray:
        """``[n]`` bool: sample parsed and is valid (structure and composition)."""

        def compute() -> np.ndarray:
            mask = np.zeros(self.n, dtype=bool)
            for i, result in zip(self.parsed_indices(), self.validity_report().crystals, strict=True):
                mask[i] = result.valid
            return mask

        return self.memo("valid_mask", compute)

    def reference_validity(self) -> np.ndarray:
        """``[n_ref]`` bool validity of the reference crystals (the DiffCSP CSP rule needs it)."""
        if self.reference is None:
            raise ValueError("no reference set given")
        ref = self.reference
        return self.memo("reference_validity", lambda: np.array([c.valid for c in validity(ref).crystals], dtype=bool))

    def structure_set(self) -> StructureSet:
        """The samples grouped by reduced formula, each cell reduced at most once (uniqueness and novelty share it)."""
        return self.memo("structure_set", lambda: StructureSet(self.crystals))

    def uniqueness(self) -> UniquenessResult:
        """Structure-matching uniqueness over all samples (None entries are never unique)."""
        return self.memo("uniqueness", lambda: uniqueness(self.structure_set(), workers=self.workers))

    def novelty(self) -> NoveltyResult:
        """Novelty of every sample against the training set."""
        if self.train is None:
            raise ValueError("no training set given")
        train = self.train
        return self.memo("novelty", lambda: novelty(self.structure_set(), train, workers=self.workers))

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
            out = [RelaxResult.failed(f"unreadable: {s.error}") for s in self.samples]
            for i, result in zip(idx, done, strict=True):
                out[i] = result
            return out

        return self.memo(_RELAX, compute)

    def relaxed_crystals(self) -> list[Crystal]:
        """The relaxed structures of a run that relaxed (failures left out); empty otherwise."""
        results = self._cache.get(_RELAX, [])  # never starts a relaxation
        return [r.crystal for r in results if r.crystal is not None]
