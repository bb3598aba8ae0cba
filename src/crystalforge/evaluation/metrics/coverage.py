"""Coverage of a reference set by generated crystals: COV-R (recall) and COV-P (precision), CDVAE's rule.

Each crystal has a structure fingerprint (mean CrystalNN "ops" site fingerprint, 61 values) and a
composition fingerprint (Magpie statistics normalised with CDVAE's constants, NaN → 0; 132 values).
This module receives the fingerprint arrays; computing them is the caller's job
(``crystalforge.representations.fingerprints``, cached with ``crystalforge.evaluation.features``).

The rule, as in CDVAE's ``scripts/eval_utils.py::compute_cov`` (also used unchanged by DiffCSP):

- Euclidean distances; the nearest neighbour in structure space and the nearest neighbour in
  composition space are found *separately* (they may be different crystals).
- A generated crystal *enters* when both its fingerprint rows are finite (CDVAE drops crystals
  whose fingerprint could not be computed) and, if ``gen_valid`` is given, it is valid.
- COV-R: fraction of reference crystals whose nearest entering generated crystal is within
  ``struct_cutoff`` in structure space **and** whose nearest one is within ``comp_cutoff`` in
  composition space. Both comparisons are ``<=`` (inclusive), as in CDVAE.
- COV-P: number of entering generated crystals whose nearest reference distances are both within
  the cutoffs, divided by **all** generated crystals passed in (CDVAE's ``num_gen_crystals``).

Reference rows with non-finite fingerprints: CDVAE has no rule (its script fails on them). Here
they are excluded from the reference by default (``reference_failures="exclude"``) and counted in
``n_reference_failed``; ``"uncovered"`` keeps them in the COV-R denominator as never covered.

Distances are computed in float64 with ``torch.cdist`` in its exact (no matrix-product) mode, in
chunks of generated rows, keeping running minima, so 10,000 × 9,046 takes seconds and little memory.

``CoverageMetric`` (the suite adapter) reports the scripts' rule as the headline ``cov_recall`` /
``cov_precision`` (every fingerprinted sample enters, valid or not) and the valid-only variant
beside it as ``cov_recall_valid_only`` / ``cov_precision_valid_only``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.features import FeaturizerLike, cached_features
from crystalforge.evaluation.metrics.base import MetricResult, parsed, scatter, table_columns
from crystalforge.evaluation.metrics.validity import valid_mask

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "COVERAGE_CUTOFFS",
    "FEATURE_CHUNK",
    "CoverageMetric",
    "CoverageResult",
    "coverage",
    "coverage_cutoffs",
    "nearest_distances",
]

COVERAGE_CUTOFFS: dict[str, tuple[float, float]] = {
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
    "mp_20": (0.4, 10.0),
}
"""(structure cutoff, composition cutoff) per benchmark, from CDVAE's ``COV_Cutoffs``; reduced protocols share them."""

ReferenceFailures = Literal["exclude", "uncovered"]

DEFAULT_CHUNK_ELEMENTS = 8_000_000
"""Distance-matrix entries held at once (64 MB of float64)."""

FEATURE_CHUNK = 100
"""Crystals fingerprinted per resumable chunk (see ``cached_features``)."""


def coverage_cutoffs(benchmark: str) -> tuple[float, float]:
    """(struct_cutoff, comp_cutoff) of a benchmark or its reduced protocol (``"mp_20_reduced"`` → mp_20's).

    Raises:
        KeyError: for a benchmark without published cutoffs (e.g. mpts_52), listing the known ones.

    """
    name = benchmark.removesuffix("_reduced")
    if name in COVERAGE_CUTOFFS:
        return COVERAGE_CUTOFFS[name]
    raise KeyError(f"no coverage cutoffs for {benchmark!r}; known: {', '.join(sorted(COVERAGE_CUTOFFS))}")


@dataclass(frozen=True, eq=False)
class CoverageResult:
    """COV-R / COV-P (percent, 0-100), CDVAE's average minimum distances, and per-crystal details.

    Per generated crystal (``[G]``): whether it entered, why not, its nearest reference distances in
    each space (NaN when it did not enter, inf when the reference is empty) and whether it counts
    towards COV-P. Per reference crystal (``[R]``): nearest entering generated distances (NaN for a
    reference without fingerprint, inf when nothing entered) and whether it is covered.
    Percentages are NaN when their denominator is zero.
    """

    cov_recall: float
    cov_precision: float
    amsd_recall: float  # mean nearest structure distance over used reference crystals
    amsd_precision: float  # mean nearest structure distance over entering generated crystals
    amcd_recall: float  # the same in composition space
    amcd_precision: float
    gen_entered: np.ndarray  # [G] bool
    gen_reason: tuple[str, ...]  # [G] "entered", "invalid", "no fingerprint"
    gen_struct_dist: np.ndarray  # [G] float64
    gen_comp_dist: np.ndarray  # [G] float64
    gen_precise: np.ndarray  # [G] bool, both distances within the cutoffs (COV-P numerator)
    ref_has_fingerprint: np.ndarray  # [R] bool
    ref_struct_dist: np.ndarray  # [R] float64
    ref_comp_dist: np.ndarray  # [R] float64
    ref_covered: np.ndarray  # [R] bool (COV-R numerator)
    n_generated: int
    n_entered: int
    n_reference: int
    n_reference_failed: int
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar results and the protocol (JSON-ready)."""
        return {
            "cov_recall": self.cov_recall,
            "cov_precision": self.cov_precision,
            "amsd_recall": self.amsd_recall,
            "amsd_precision": self.amsd_precision,
            "amcd_recall": self.amcd_recall,
            "amcd_precision": self.amcd_precision,
            "n_generated": self.n_generated,
            "n_entered": self.n_entered,
            "n_reference": self.n_reference,
            "n_reference_failed": self.n_reference_failed,
            "protocol": dict(self.protocol),
        }

    def per_generated(self) -> list[dict[str, Any]]:
        """One row per generated crystal, for a per-structure table."""
        return [
            {
                "cov_entered": bool(self.gen_entered[i]),
                "cov_reason": self.gen_reason[i],
                "cov_struct_dist": float(self.gen_struct_dist[i]),
                "cov_comp_dist": float(self.gen_comp_dist[i]),
                "cov_precise": bool(self.gen_precise[i]),
            }
            for i in range(self.n_generated)
        ]


def nearest_distances(
    a: np.ndarray, b: np.ndarray, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest-neighbour distances between the rows of ``a [n, D]`` and ``b [m, D]`` (float64).

    Returns:
        ``(a_to_b [n], b_to_a [m])``: for each row of ``a`` its distance to the nearest row of
        ``b``, and vice versa; ``inf`` where the other set is empty.

    """
    ta = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))
    tb = torch.as_tensor(np.ascontiguousarray(b, dtype=np.float64))
    n, m = ta.shape[0], tb.shape[0]
    a_to_b = torch.full((n,), math.inf, dtype=torch.float64)
    b_to_a = torch.full((m,), math.inf, dtype=torch.float64)
    if n == 0 or m == 0:
        return a_to_b.numpy(), b_to_a.numpy()
    step = max(1, chunk_elements // m)
    for start in range(0, n, step):
        # the exact mode computes sqrt(sum((x - y)^2)) like scipy's cdist; the matrix-product
        # shortcut loses digits, which would move crystals across a cutoff
        d = torch.cdist(ta[start : start + step], tb, compute_mode="donot_use_mm_for_euclid_dist")  # [step, m]
        a_to_b[start : start + step] = d.min(dim=1).values
        torch.minimum(b_to_a, d.min(dim=0).values, out=b_to_a)
    return a_to_b.numpy(), b_to_a.numpy()


def _as_matrix(name: str, x: np.ndarray) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] array, got shape {array.shape}")
    return array


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def coverage(
    gen_struct: np.ndarray,
    gen_comp: np.ndarray,
    ref_struct: np.ndarray,
    ref_comp: np.ndarray,
    *,
    struct_cutoff: float,
    comp_cutoff: float,
    gen_valid: np.ndarray | None = None,
    reference_failures: ReferenceFailures = "exclude",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> CoverageResult:
    """COV-R and COV-P of generated fingerprints against reference fingerprints (CDVAE's rule).

    Args:
        gen_struct: Structure fingerprints of the generated crystals ``[G, Ds]``; NaN rows for failures.
        gen_comp: Composition fingerprints (already normalised) of the generated crystals ``[G, Dc]``.
        ref_struct: Structure fingerprints of the reference crystals ``[R, Ds]``.
        ref_comp: Composition fingerprints of the reference crystals ``[R, Dc]``.
        struct_cutoff: Largest structure distance that counts as covered (inclusive).
        comp_cutoff: Largest composition distance that counts as covered (inclusive).
        gen_valid: Optional ``[G]`` bool; when given, only valid crystals enter (invalid ones still
            count in the COV-P denominator). None lets every fingerprinted crystal enter, as
            CDVAE's and DiffCSP's scripts do.
        reference_failures: What to do with reference rows that are not finite: ``"exclude"``
            them from the reference, or keep them as ``"uncovered"`` in the COV-R denominator.
        chunk_elements: Distance-matrix entries computed at once (memory bound).

    Returns:
        The result with per-crystal details and the protocol block.

    Raises:
        ValueError: for inconsistent shapes, bad cutoffs or an unknown ``reference_failures``.

    """
    gs, gc = _as_matrix("gen_struct", gen_struct), _as_matrix("gen_comp", gen_comp)
    rs, rc = _as_matrix("ref_struct", ref_struct), _as_matrix("ref_comp", ref_comp)
    if gs.shape[0] != gc.shape[0]:
        raise ValueError(f"gen_struct has {gs.shape[0]} rows but gen_comp has {gc.shape[0]}")
    if rs.shape[0] != rc.shape[0]:
        raise ValueError(f"ref_struct has {rs.shape[0]} rows but ref_comp has {rc.shape[0]}")
    if gs.shape[1] != rs.shape[1] or gc.shape[1] != rc.shape[1]:
        raise ValueError(
            f"fingerprint widths differ: structure {gs.shape[1]} vs {rs.shape[1]}, "
            f"composition {gc.shape[1]} vs {rc.shape[1]}"
        )
    for name, cutoff in (("struct_cutoff", struct_cutoff), ("comp_cutoff", comp_cutoff)):
        if not (math.isfinite(cutoff) and cutoff >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {cutoff}")
    if reference_failures not in ("exclude", "uncovered"):
        raise ValueError(f"reference_failures must be 'exclude' or 'uncovered', got {reference_failures!r}")
    n_gen, n_ref = gs.shape[0], rs.shape[0]
    valid = np.ones(n_gen, dtype=bool) if gen_valid is None else np.asarray(gen_valid, dtype=bool).reshape(-1)
    if valid.shape != (n_gen,):
        raise ValueError(f"gen_valid has {valid.shape[0]} entries for {n_gen} generated crystals")

    gen_ok = np.isfinite(gs).all(axis=1) & np.isfinite(gc).all(axis=1)
    entered = gen_ok & valid
    reasons = tuple(
        "entered" if e else ("no fingerprint" if not ok else "invalid") for e, ok in zip(entered, gen_ok, strict=True)
    )
    ref_ok = np.isfinite(rs).all(axis=1) & np.isfinite(rc).all(axis=1)

    g_s, r_s = nearest_distances(gs[entered], rs[ref_ok], chunk_elements=chunk_elements)
    g_c, r_c = nearest_distances(gc[entered], rc[ref_ok], chunk_elements=chunk_elements)

    gen_struct_dist = np.full(n_gen, np.nan)
    gen_comp_dist = np.full(n_gen, np.nan)
    gen_struct_dist[entered], gen_comp_dist[entered] = g_s, g_c
    gen_precise = np.zeros(n_gen, dtype=bool)
    gen_precise[entered] = (g_s <= struct_cutoff) & (g_c <= comp_cutoff)

    ref_struct_dist = np.full(n_ref, np.nan)
    ref_comp_dist = np.full(n_ref, np.nan)
    ref_struct_dist[ref_ok], ref_comp_dist[ref_ok] = r_s, r_c
    ref_covered = np.zeros(n_ref, dtype=bool)
    ref_covered[ref_ok] = (r_s <= struct_cutoff) & (r_c <= comp_cutoff)

    recall_denominator = int(ref_ok.sum()) if reference_failures == "exclude" else n_ref
    cov_recall = 100.0 * int(ref_covered.sum()) / recall_denominator if recall_denominator else math.nan
    cov_precision = 100.0 * int(gen_precise.sum()) / n_gen if n_gen else math.nan

    protocol = {
        "metric": "coverage",
        "struct_cutoff": float(struct_cutoff),
        "comp_cutoff": float(comp_cutoff),
        "distance": "euclidean, nearest neighbour per space separately",
        "comparison": "<=",
        "valid_only": gen_valid is not None,
        "precision_denominator": "all generated crystals",
        "reference_failures": reference_failures,
    }
    return CoverageResult(
        cov_recall=cov_recall,
        cov_precision=cov_precision,
        amsd_recall=_mean(r_s),
        amsd_precision=_mean(g_s),
        amcd_recall=_mean(r_c),
        amcd_precision=_mean(g_c),
        gen_entered=entered,
        gen_reason=reasons,
        gen_struct_dist=gen_struct_dist,
        gen_comp_dist=gen_comp_dist,
        gen_precise=gen_precise,
        ref_has_fingerprint=ref_ok,
        ref_struct_dist=ref_struct_dist,
        ref_comp_dist=ref_comp_dist,
        ref_covered=ref_covered,
        n_generated=n_gen,
        n_entered=int(entered.sum()),
        n_reference=n_ref,
        n_reference_failed=int((~ref_ok).sum()),
        protocol=protocol,
    )


# ---- suite adapter ------------------------------------------------------------------------------------
class CoverageMetric:
    """COV-R / COV-P against the reference (CrystalNN + Magpie fingerprints); headline and valid-only."""

    name = "coverage"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference, both featurizers and the cutoffs."""
        if ctx.reference is None:
            return "no reference set"
        if ctx.struct_featurizer is None or ctx.comp_featurizer is None:
            return "not requested (or no fingerprint featurizers given)"
        if ctx.coverage_cutoffs is None:
            return f"no published cutoffs for reference {ctx.reference_name!r}"
        return None

    @staticmethod
    def _features(
        ctx: EvaluationContext,
        crystals: Sequence[Crystal],
        label: str,
        cache: Path | None,
        aborted: dict[int, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both fingerprints; with ``aborted`` given, each crystal under the context's time limit."""
        out = []
        featurizers: tuple[FeaturizerLike | None, ...] = (ctx.struct_featurizer, ctx.comp_featurizer)
        limit = None if aborted is None else ctx.time_limit_s
        features = partial(
            cached_features, cache_dir=cache, chunk_size=FEATURE_CHUNK, time_limit_s=limit, aborted=aborted
        )
        for featurizer in featurizers:
            assert featurizer is not None
            bar = ctx.progress(None, f"{featurizer.name} fingerprints ({label})")
            try:
                out.append(features(featurizer, crystals))
            finally:
                bar.close()
        return out[0], out[1]

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Featurize the parsed samples and the (cached) reference, then count coverage both ways."""
        assert ctx.reference is not None
        assert ctx.coverage_cutoffs is not None
        assert ctx.struct_featurizer is not None
        assert ctx.comp_featurizer is not None
        idx, crystals = parsed(ctx)
        with ctx.timed("coverage.fingerprints_reference"):
            ref_struct, ref_comp = self._features(ctx, ctx.reference, str(ctx.reference_name), ctx.cache_dir)
        stopped: dict[int, str] = {}  # samples over the time limit (the reference set is trusted)
        with ctx.timed("coverage.fingerprints_samples"):
            gen_struct, gen_comp = self._features(ctx, crystals, "samples", ctx.sample_cache_dir, stopped)
        ctx.note_aborted({idx[i]: why for i, why in stopped.items()})
        valid = valid_mask(ctx)[idx]
        struct_cut, comp_cut = ctx.coverage_cutoffs
        fps = (gen_struct, gen_comp, ref_struct, ref_comp)
        # The published scripts let every fingerprinted sample in, valid or not: that is the headline.
        headline = coverage(*fps, struct_cutoff=struct_cut, comp_cutoff=comp_cut)
        valid_only = coverage(*fps, struct_cutoff=struct_cut, comp_cutoff=comp_cut, gen_valid=valid)
        # COV-P divides by all generated crystals: unreadable records count in the denominator.
        scale = len(idx) / ctx.n if ctx.n else 0.0
        summary = {
            "cov_recall": headline.cov_recall,
            "cov_precision": headline.cov_precision * scale,
            "cov_recall_valid_only": valid_only.cov_recall,
            "cov_precision_valid_only": valid_only.cov_precision * scale,
        }
        skip = ("cov_recall", "cov_precision", "protocol")
        details: dict[str, Any] = {key: value for key, value in headline.summary().items() if key not in skip}
        details["valid_only"] = {key: value for key, value in valid_only.summary().items() if key not in skip}
        details["n_unreadable"] = ctx.n - len(idx)
        rows = headline.per_generated()
        columns = table_columns(ctx, idx, rows)
        if rows:
            columns["cov_precise_valid_only"] = scatter(ctx, idx, valid_only.gen_precise.tolist())
        protocol = dict(headline.protocol)
        protocol.update(
            {
                "reference": ctx.reference_name,
                "struct_fingerprint": ctx.struct_featurizer.name,
                "comp_fingerprint": ctx.comp_featurizer.name,
                "samples_entering": "cov_recall, cov_precision: every sample with finite fingerprints, valid or "
                "not (the published CDVAE/DiffCSP scripts); cov_*_valid_only: valid samples only",
                "precision_denominator": "all input records (unreadable ones included)",
            }
        )
        return MetricResult(summary=summary, columns=columns, details=details, protocol=protocol)
