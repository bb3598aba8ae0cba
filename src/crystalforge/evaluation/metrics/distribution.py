"""Property statistics: Wasserstein-1 distance between generated and reference property distributions.

CDVAE's ``GenEval`` (``scripts/compute_metrics.py``, used unchanged by DiffCSP) draws 1,000 valid
generated crystals at random without replacement and compares their density (g/cm³) and number of
distinct elements with those of *all* reference crystals, with ``scipy.stats.wasserstein_distance``.
It raises when fewer than 1,000 crystals are valid. Here nothing is raised: with fewer candidates
all are used and ``n_used`` says how many. The draw is seeded (``seed``), so two properties
computed with the same candidates, ``n_samples`` and ``seed`` use the same crystals, as CDVAE's
single ``valid_samples`` list does.

A generated value is a candidate when it is finite and (if ``gen_valid`` is given) its crystal is
valid; non-finite reference values are dropped and counted. ``property_wasserstein`` works on any
per-crystal scalar (formation energy predicted by a model, band gap, ...).
``PropertyDistributionMetric`` is the suite adapter (density and number of elements).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.metrics.base import MetricResult, parsed, scatter
from crystalforge.evaluation.metrics.validity import valid_mask

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "DEFAULT_N_SAMPLES",
    "PropertyDistributionMetric",
    "WassersteinResult",
    "density_values",
    "num_elements_values",
    "property_wasserstein",
    "sample_indices",
    "wasserstein_density",
    "wasserstein_num_elements",
]

DEFAULT_N_SAMPLES = 1000
"""Generated crystals drawn for the comparison (CDVAE's ``n_samples``)."""


@dataclass(frozen=True, eq=False)
class WassersteinResult:
    """Wasserstein-1 distance (NaN when either side is empty) and which generated crystals were used.

    ``sampled`` is ``[G]`` bool, True for the generated crystals in the compared sample.
    """

    distance: float
    n_used: int  # generated values compared
    n_reference: int  # finite reference values compared
    n_candidates: int  # finite (and valid) generated values available for the draw
    n_generated: int  # generated values passed in
    n_reference_dropped: int  # non-finite reference values left out
    sampled: np.ndarray  # [G] bool
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar results and the protocol (JSON-ready)."""
        return {
            "distance": self.distance,
            "n_used": self.n_used,
            "n_reference": self.n_reference,
            "n_candidates": self.n_candidates,
            "n_generated": self.n_generated,
            "n_reference_dropped": self.n_reference_dropped,
            "protocol": dict(self.protocol),
        }


def density_values(crystals: Sequence[Crystal]) -> np.ndarray:
    """Mass densities ``[B]`` in g/cm³ (``Crystal.density``; equals pymatgen's ``Structure.density`` to ~1e-9)."""
    out = np.empty(len(crystals), dtype=np.float64)
    with np.errstate(all="ignore"):
        for i, crystal in enumerate(crystals):
            out[i] = crystal.density
    return out


def num_elements_values(crystals: Sequence[Crystal]) -> np.ndarray:
    """Number of distinct elements per crystal ``[B]`` (float64, for the distance)."""
    return np.array([len(np.unique(c.atomic_numbers)) for c in crystals], dtype=np.float64)


def sample_indices(candidates: np.ndarray, *, n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded draw without replacement of ``n_samples`` True entries of ``candidates [G]``.

    All candidates are returned when there are at most ``n_samples`` of them (or ``n_samples`` is None).
    """
    if n_samples is not None and n_samples < 0:
        raise ValueError(f"n_samples must be >= 0 or None, got {n_samples}")
    pool = np.flatnonzero(np.asarray(candidates, dtype=bool))
    if n_samples is None or pool.size <= n_samples:
        return pool
    chosen = np.random.default_rng(seed).choice(pool.size, size=n_samples, replace=False)
    return np.sort(pool[chosen])


def property_wasserstein(
    gen_values: np.ndarray | Sequence[float],
    ref_values: np.ndarray | Sequence[float],
    *,
    n_samples: int | None = DEFAULT_N_SAMPLES,
    seed: int = 0,
    gen_valid: np.ndarray | Sequence[bool] | None = None,
    name: str = "property",
) -> WassersteinResult:
    """Wasserstein-1 distance between a random sample of generated values and all reference values.

    Args:
        gen_values: One value per generated crystal ``[G]``; NaN where unknown.
        ref_values: One value per reference crystal ``[R]``.
        n_samples: Generated values drawn at random (without replacement); None uses all.
        seed: Seed of the draw.
        gen_valid: Optional ``[G]`` bool; only valid crystals are drawn (CDVAE draws valid ones).
        name: Label of the property, recorded in the protocol.

    Returns:
        The distance, the sample sizes, the ``[G]`` mask of sampled crystals and the protocol.

    """
    from scipy.stats import wasserstein_distance

    gen = np.asarray(gen_values, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref_values, dtype=np.float64).reshape(-1)
    candidates = np.isfinite(gen)
    if gen_valid is not None:
        valid = np.asarray(gen_valid, dtype=bool).reshape(-1)
        if valid.shape != gen.shape:
            raise ValueError(f"gen_valid has {valid.shape[0]} entries for {gen.shape[0]} generated values")
        candidates &= valid
    chosen = sample_indices(candidates, n_samples=n_samples, seed=seed)
    sampled = np.zeros(gen.shape[0], dtype=bool)
    sampled[chosen] = True
    ref_finite = ref[np.isfinite(ref)]
    both = chosen.size > 0 and ref_finite.size > 0
    distance = float(wasserstein_distance(gen[chosen], ref_finite)) if both else math.nan
    protocol = {
        "metric": f"wasserstein_{name}",
        "property": name,
        "n_samples": n_samples,
        "seed": seed,
        "sampling": "uniform without replacement (numpy default_rng), all when fewer candidates",
        "valid_only": gen_valid is not None,
        "reference": "all finite reference values",
    }
    return WassersteinResult(
        distance=distance,
        n_used=int(chosen.size),
        n_reference=int(ref_finite.size),
        n_candidates=int(candidates.sum()),
        n_generated=int(gen.shape[0]),
        n_reference_dropped=int(ref.shape[0] - ref_finite.size),
        sampled=sampled,
        protocol=protocol,
    )


def wasserstein_density(
    generated: Sequence[Crystal],
    reference: Sequence[Crystal],
    *,
    gen_valid: np.ndarray | Sequence[bool] | None = None,
    n_samples: int | None = DEFAULT_N_SAMPLES,
    seed: int = 0,
) -> WassersteinResult:
    """Wasserstein-1 distance of density (g/cm³) between sampled generated and all reference crystals."""
    return property_wasserstein(
        density_values(generated),
        density_values(reference),
        n_samples=n_samples,
        seed=seed,
        gen_valid=gen_valid,
        name="density",
    )


def wasserstein_num_elements(
    generated: Sequence[Crystal],
    reference: Sequence[Crystal],
    *,
    gen_valid: np.ndarray | Sequence[bool] | None = None,
    n_samples: int | None = DEFAULT_N_SAMPLES,
    seed: int = 0,
) -> WassersteinResult:
    """Wasserstein-1 distance of the number of distinct elements between sampled generated and reference crystals."""
    return property_wasserstein(
        num_elements_values(generated),
        num_elements_values(reference),
        n_samples=n_samples,
        seed=seed,
        gen_valid=gen_valid,
        name="num_elements",
    )


# ---- suite adapter ------------------------------------------------------------------------------------
class PropertyDistributionMetric:
    """Wasserstein distances of density and number of elements (random 1,000 valid samples)."""

    name = "property_distribution"

    def __init__(self, n_samples: int = DEFAULT_N_SAMPLES) -> None:
        self.n_samples = n_samples

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference."""
        return None if ctx.reference is not None else "no reference set"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """The two distances; the sampled samples are marked per structure."""
        assert ctx.reference is not None
        idx, crystals = parsed(ctx)
        valid = valid_mask(ctx)[idx]
        density, num_elements = density_values(crystals), num_elements_values(crystals)
        out: dict[str, Any] = {}
        details: dict[str, Any] = {}
        result: WassersteinResult | None = None
        for key, gen, values in (
            ("wdist_density", density, density_values),
            ("wdist_num_elements", num_elements, num_elements_values),
        ):
            result = property_wasserstein(
                gen, values(ctx.reference), n_samples=self.n_samples, seed=ctx.seed, gen_valid=valid, name=key
            )
            out[key] = result.distance
            details[key] = {k: v for k, v in result.summary().items() if k not in ("distance", "protocol")}
        assert result is not None
        # the sampled flags and protocol are the last draw's (#elements; the density draw differs only at NaN density)
        columns = {
            "density": scatter(ctx, idx, density.tolist()),
            "num_elements": scatter(ctx, idx, [int(v) for v in num_elements]),
            "wdist_sampled": scatter(ctx, idx, result.sampled.tolist(), False),
        }
        return MetricResult(summary=out, columns=columns, details=details, protocol=dict(result.protocol))
