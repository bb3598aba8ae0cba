"""``EvaluationContext``: the inputs of one evaluation and the expensive shared results, computed once.

Metrics read what they need from the context (validity flags, fingerprints, uniqueness, relaxation
results, ...). Each such thing is computed lazily on first use and kept, so coverage and S.U.N. do
not featurize or relax twice. Nothing here knows which model made the structures: inputs are
``Sample`` records (a crystal, or the reason there is none) and plain reference crystals. Things
that live in other packages (fingerprint featurizers, the relaxer, the hull) come in as objects.
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

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.metrics.matching import NoveltyResult, UniquenessResult, novelty, uniqueness
from crystalforge.evaluation.metrics.validity import ValidityReport, validity
from crystalforge.relax.interfaces import RelaxResult

Task = Literal["dng", "csp"]
ProgressFactory = Callable[[int | None, str], Any]
"""``factory(total, description)`` → an object with ``update(n)`` and ``close()`` (e.g. tqdm)."""


_RELAX = "relax"  # memo key of the relaxation results


@dataclass(frozen=True)
class Sample:
    """One input record: a crystal, or ``error`` saying why the record gave none."""

    index: int
    source: str
    crystal: Crystal | None = None
    error: str | None = None
    group: str | None = None  # CSP: the reference material_id this prediction belongs to
    material_id: str | None = None  # the record's id when it has no crystal (e.g. an unreadable extxyz frame)
    rank: int = -1  # CSP: the prediction number k parsed from "<id>_<k>" (-1: none)

    @property
    def ident(self) -> str:
        """The record's name: its material_id, else its source."""
        if self.crystal is not None and self.crystal.material_id:
            return self.crystal.material_id
        return self.material_id or self.source


class _NullBar:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def null_progress(total: int | None, desc: str) -> _NullBar:
    """A progress factory that shows nothing."""
    return _NullBar()


_SUFFIX = re.compile(r"^(?P<base>.+?)(?:[_:#.]|__)(?P<num>\d+)$")


def assign_groups(samples: Sequence[Sample], reference_ids: Sequence[str]) -> list[Sample]:
    """Link CSP predictions to reference ``material_id``s.

    A sample belongs to reference ``R`` when its ``material_id`` is ``R``, or is ``R`` followed by
    ``_k``, ``__k``, ``:k``, ``#k`` or ``.k`` with an integer ``k`` (k-th prediction, e.g. the file
    ``mp-1234_3.cif`` or the block ``mp-1234:3``). Unlinked samples keep ``group=None``.
    """
    known = set(reference_ids)
    out = []
    for s in samples:
        ident = s.ident if (s.crystal is not None or s.material_id) else Path(s.source.split(":")[0]).stem
        group, rank = None, -1
        if ident:
            if ident in known:
                group = ident
            else:
                m = _SUFFIX.match(ident)
                while m is not None and group is None:
                    base = m.group("base")
                    if base in known:
                        group, rank = base, int(m.group("num"))
                    m = _SUFFIX.match(base)
        out.append(Sample(s.index, s.source, s.crystal, s.error, group, s.material_id, rank))
    return out


def group_members(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """Sample indices per linked reference id, ordered by prediction number (``_k``), then input order."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.group is not None:
            groups.setdefault(s.group, []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: (samples[i].rank, i))
    return groups


@dataclass
class EvaluationContext:
    """Inputs and lazily computed shared results of one evaluation.

    Args:
        samples: the input records, in input order.
        task: ``"dng"`` (de novo generation) or ``"csp"`` (structure prediction).
        reference: the reference crystals (the test split of the protocol), or None.
        reference_name: the dataset or file the reference came from (for the protocol block).
        train: the training crystals of the protocol (for novelty), or None.
        train_name: where ``train`` came from.
        struct_featurizer / comp_featurizer: fingerprint featurizers for coverage (objects with
            ``name`` and ``featurize(crystals) -> [B, D]``), or None to skip coverage.
        coverage_cutoffs: (structure, composition) cutoffs, or None to skip coverage.
        relaxer: an object satisfying ``crystalforge.relax.interfaces.Relaxer``, or None.
        hull: a reference hull with ``e_above_hull``, or None.
        workers: processes for the expensive parts.
        cache_dir: where reference fingerprints are cached (None: no cache).
        sample_cache_dir: where the samples' fingerprints are cached, chunk by chunk, so an
            interrupted coverage evaluation resumes (None: no cache).
        progress: progress-bar factory.

    """

    samples: Sequence[Sample]
    task: Task = "dng"
    reference: Sequence[Crystal] | None = None
    reference_name: str | None = None
    train: Sequence[Crystal] | None = None
    train_name: str | None = None
    struct_featurizer: Any = None
    comp_featurizer: Any = None
    coverage_cutoffs: tuple[float, float] | None = None
    relaxer: Any = None
    hull: Any = None
    k: int | None = None
    property_name: str | None = None
    target_window: tuple[float | None, float | None] | None = None
    workers: int = 1
    cache_dir: Path | None = None
    sample_cache_dir: Path | None = None
    progress: ProgressFactory = null_progress
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False)

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
        return self.memo("validity", lambda: validity([self.samples[i].crystal for i in self.parsed_indices()]))

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

    def uniqueness(self) -> UniquenessResult:
        """Structure-matching uniqueness over all samples (None entries are never unique)."""
        return self.memo("uniqueness", lambda: uniqueness(self.crystals, workers=self.workers))

    def novelty(self) -> NoveltyResult:
        """Novelty of every sample against the training set."""
        if self.train is None:
            raise ValueError("no training set given")
        train = self.train
        return self.memo("novelty", lambda: novelty(self.crystals, train, workers=self.workers))

    def relax_results(self) -> list[RelaxResult]:
        """One relaxation result per sample (unreadable samples get a failed result)."""
        if self.relaxer is None:
            raise ValueError("no relaxer given")

        def compute() -> list[RelaxResult]:
            idx = self.parsed_indices()
            bar = self.progress(len(idx), f"relaxing ({self.relaxer.name})")
            last = [0]

            def advance(done: int, total: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            if hasattr(self.relaxer, "progress"):
                self.relaxer.progress = advance
            try:
                done = self.relaxer.relax([self.samples[i].crystal for i in idx])
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
