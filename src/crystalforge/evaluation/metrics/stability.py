"""Thermodynamic stability of relaxed crystals against a reference convex hull, S.U.N. rates, and the suite adapter.

Definitions (``docs/metrics.md``, section "Stability"):

- energy above hull ``E_hull`` (eV/atom): the sample's energy per atom minus the energy of the
  reference convex hull at its composition (``crystalforge.evaluation.hull.ReferenceHull``).
  Negative values (samples below the reference hull) are kept, not clipped to 0.
- stable: ``E_hull <= stable_threshold`` (default 0.0 eV/atom); metastable:
  ``E_hull <= metastable_threshold`` (default 0.1 eV/atom). A numerical slack of 1e-8 eV/atom
  is allowed so that a sample identical to a hull entry counts as stable.
- S.U.N.: stable and unique and novel; M.S.U.N.: metastable and unique and novel.
- Every rate is a percentage of *all* inputs: failed relaxations and samples whose elements are
  missing from the hull count as neither stable nor metastable (MatterGen also divides by all
  submitted structures).

Note on names: MatterGen's code calls a structure "stable" when ``E_hull <= 0.1`` eV/atom
(``DEFAULT_STABILITY_THRESHOLD = 0.1``), so its published "S.U.N." corresponds to our
``msun_rate``; our ``sun_rate`` uses the strict 0.0 eV/atom threshold. Energies must come from
the same MLIP as the hull (a mismatch of names warns).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.base import MetricResult
from crystalforge.evaluation.metrics.novelty import novelty_result
from crystalforge.evaluation.metrics.uniqueness import uniqueness_result
from crystalforge.relax.interfaces import Relaxer, RelaxResult

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "METASTABLE_THRESHOLD",
    "NUMERICAL_SLACK",
    "STABLE_THRESHOLD",
    "StabilityMetric",
    "StabilityResult",
    "StructureStability",
    "stability",
]

STABLE_THRESHOLD = 0.0
"""eV/atom above the hull at or below which a structure is stable."""
METASTABLE_THRESHOLD = 0.1
"""eV/atom above the hull at or below which a structure is metastable."""
NUMERICAL_SLACK = 1e-8
"""eV/atom added to both thresholds to absorb floating-point noise in the hull energy."""


@dataclass(frozen=True)
class StructureStability:
    """Stability verdict of one input structure."""

    e_above_hull: float  # eV/atom; NaN when not computed
    stable: bool
    metastable: bool
    sun: bool | None  # None when uniqueness/novelty flags were not given
    msun: bool | None
    converged: bool
    reason: str  # "ok", "ok (not converged)", or why e_above_hull is NaN


@dataclass(frozen=True)
class StabilityResult:
    """Per-structure verdicts, the rates (percent of all inputs) and the protocol.

    Rates are NaN for an empty input; ``sun_rate`` and ``msun_rate`` are NaN unless both
    ``unique`` and ``novel`` flags were given.
    """

    structures: tuple[StructureStability, ...]
    stable_rate: float
    metastable_rate: float
    sun_rate: float
    msun_rate: float
    mean_rmsd_relax: float  # Å, over successful relaxations
    mean_e_above_hull: float  # eV/atom, over structures with a finite E_hull
    num_failed: int  # relaxation failures
    num_unconverged: int  # relaxed but not converged within max_steps
    num_no_reference: int  # E_hull not computable (missing elements, ...)
    protocol: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_structures(self) -> int:
        """Number of inputs (the denominator of every rate)."""
        return len(self.structures)

    @property
    def e_above_hull(self) -> np.ndarray:
        """``[B]`` energies above hull (eV/atom), NaN where not computed."""
        return np.array([s.e_above_hull for s in self.structures], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN becomes None)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "num_structures": self.num_structures,
            "stable_rate": num(self.stable_rate),
            "metastable_rate": num(self.metastable_rate),
            "sun_rate": num(self.sun_rate),
            "msun_rate": num(self.msun_rate),
            "mean_rmsd_relax": num(self.mean_rmsd_relax),
            "mean_e_above_hull": num(self.mean_e_above_hull),
            "num_failed": self.num_failed,
            "num_unconverged": self.num_unconverged,
            "num_no_reference": self.num_no_reference,
            "protocol": dict(self.protocol),
            "structures": [
                {
                    "e_above_hull": num(s.e_above_hull),
                    "stable": s.stable,
                    "metastable": s.metastable,
                    "sun": s.sun,
                    "msun": s.msun,
                    "converged": s.converged,
                    "reason": s.reason,
                }
                for s in self.structures
            ],
        }


def _flags(values: Sequence[bool] | np.ndarray | None, n: int, name: str) -> list[bool] | None:
    if values is None:
        return None
    flags = [bool(v) for v in np.asarray(values).reshape(-1).tolist()]
    if len(flags) != n:
        raise ValueError(f"{name} has {len(flags)} flags for {n} structures")
    return flags


def stability(
    relax_results: Sequence[RelaxResult],
    hull: ReferenceHull,
    *,
    unique: Sequence[bool] | np.ndarray | None = None,
    novel: Sequence[bool] | np.ndarray | None = None,
    stable_threshold: float = STABLE_THRESHOLD,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    count_unconverged: bool = True,
    relaxer: Relaxer | None = None,
) -> StabilityResult:
    """Stability, metastability, S.U.N. and M.S.U.N. rates of relaxed structures (percent).

    Args:
        relax_results: one relaxation result per generated structure (failures included: they
            count in every denominator).
        hull: the reference hull; its MLIP must be the one that produced the energies.
        unique: per-structure uniqueness flags (same order), or None.
        novel: per-structure novelty flags (same order), or None.
        stable_threshold: eV/atom above hull for "stable" (default 0.0).
        metastable_threshold: eV/atom above hull for "metastable" (default 0.1).
        count_unconverged: use structures that hit ``max_steps`` without converging (their
            final energy); False treats them like failures.
        relaxer: the relaxer that produced the results, recorded in the protocol (and checked
            against the hull's MLIP name; a mismatch warns).

    Returns:
        The result with per-structure verdicts and a protocol block.

    Raises:
        ValueError: for flags of the wrong length or thresholds that are not finite or not ordered.

    """
    if not (math.isfinite(stable_threshold) and math.isfinite(metastable_threshold)):
        raise ValueError("thresholds must be finite")
    if metastable_threshold < stable_threshold:
        raise ValueError(f"metastable_threshold {metastable_threshold} < stable_threshold {stable_threshold}")
    results = list(relax_results)
    n = len(results)
    unique_flags = _flags(unique, n, "unique")
    novel_flags = _flags(novel, n, "novel")
    have_sun = unique_flags is not None and novel_flags is not None
    if relaxer is not None and hull.mlip is not None and relaxer.name != hull.mlip:
        warnings.warn(
            f"relaxer {relaxer.name!r} differs from the hull's MLIP {hull.mlip!r}: energies from different "
            "potential-energy surfaces are not comparable",
            stacklevel=2,
        )

    verdicts: list[StructureStability] = []
    num_failed = num_unconverged = num_no_reference = 0
    for k, result in enumerate(results):
        e_hull = math.nan
        if not result.ok:
            num_failed += 1
            reason = f"relaxation failed: {result.failure or 'no structure or energy'}"
        elif not result.converged and not count_unconverged:
            num_unconverged += 1
            reason = "not converged (excluded)"
        else:
            if not result.converged:
                num_unconverged += 1
            assert result.crystal is not None
            e_hull, why = hull.e_above_hull_with_reason(result.crystal.composition, result.energy_per_atom)
            if math.isfinite(e_hull):
                reason = "ok" if result.converged else "ok (not converged)"
            else:
                num_no_reference += 1
                reason = why
        stable = bool(e_hull <= stable_threshold + NUMERICAL_SLACK)  # NaN compares False
        metastable = bool(e_hull <= metastable_threshold + NUMERICAL_SLACK)
        sun = msun = None
        if unique_flags is not None and novel_flags is not None:
            un = unique_flags[k] and novel_flags[k]
            sun, msun = stable and un, metastable and un
        verdicts.append(StructureStability(e_hull, stable, metastable, sun, msun, bool(result.converged), reason))

    def percent(flags: list[bool]) -> float:
        return 100.0 * sum(flags) / n if n else math.nan

    e_hull_values = np.array([v.e_above_hull for v in verdicts], dtype=np.float64)
    rmsd_values = np.array([r.rmsd for r in results if r.ok], dtype=np.float64)
    finite_rmsd = rmsd_values[np.isfinite(rmsd_values)]
    finite_e = e_hull_values[np.isfinite(e_hull_values)]
    protocol: dict[str, Any] = {
        "metric": "stability",
        "stable_threshold": stable_threshold,
        "metastable_threshold": metastable_threshold,
        "numerical_slack": NUMERICAL_SLACK,
        "count_unconverged": count_unconverged,
        "denominator": "all inputs (failed relaxations and missing references count as not stable)",
        "hull": hull.describe(),
        "relaxer": None if relaxer is None else relaxer.name,
        "relaxer_settings": None if relaxer is None else dict(relaxer.settings),
        "sun_definition": "stable and unique and novel (msun: metastable and unique and novel)",
    }
    return StabilityResult(
        structures=tuple(verdicts),
        stable_rate=percent([v.stable for v in verdicts]),
        metastable_rate=percent([v.metastable for v in verdicts]),
        sun_rate=percent([bool(v.sun) for v in verdicts]) if have_sun else math.nan,
        msun_rate=percent([bool(v.msun) for v in verdicts]) if have_sun else math.nan,
        mean_rmsd_relax=float(finite_rmsd.mean()) if finite_rmsd.size else math.nan,
        mean_e_above_hull=float(finite_e.mean()) if finite_e.size else math.nan,
        num_failed=num_failed,
        num_unconverged=num_unconverged,
        num_no_reference=num_no_reference,
        protocol=protocol,
    )


# ---- suite adapter ------------------------------------------------------------------------------------
class StabilityMetric:
    """Relax every sample with the MLIP, then E_hull against the reference hull; S.U.N. and M.S.U.N."""

    name = "stability"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a relaxer and a hull."""
        if ctx.relaxer is None:
            return "no relaxer requested (--relax)"
        if ctx.hull is None:
            return "no reference hull"
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """S.U.N. needs uniqueness and novelty; without a training set only the stability rates are given."""
        assert ctx.hull is not None
        with ctx.timed("stability.relax"):
            results = ctx.relax_results()
        # uniqueness only serves S.U.N., which needs novelty too: without a training set it is not computed
        novel = None if ctx.train is None else novelty_result(ctx).novel
        unique = None if novel is None else uniqueness_result(ctx).unique
        out = stability(results, ctx.hull, unique=unique, novel=novel, relaxer=ctx.relaxer)
        summary = {
            "stable_rate": out.stable_rate,
            "metastable_rate": out.metastable_rate,
            "mean_rmsd_relax": out.mean_rmsd_relax,
        }
        if novel is not None:
            summary.update({"sun_rate": out.sun_rate, "msun_rate": out.msun_rate})
        rows = out.structures
        columns: dict[str, list[Any]] = {
            "e_above_hull": [r.e_above_hull for r in rows],
            "stable": [r.stable for r in rows],
            "metastable": [r.metastable for r in rows],
            "sun": [r.sun for r in rows],
            "msun": [r.msun for r in rows],
            "stability_reason": [r.reason for r in rows],
            "relaxed_energy_per_atom": [r.energy_per_atom for r in results],
            "initial_energy_per_atom": [r.initial_energy_per_atom for r in results],
            "relax_rmsd": [r.rmsd for r in results],
            "relax_steps": [r.steps for r in results],
            "relax_converged": [r.converged for r in results],
            "relax_failure": [r.failure for r in results],
        }
        details: dict[str, Any] = {
            "mean_e_above_hull": out.mean_e_above_hull,
            "num_relax_failed": out.num_failed,
            "num_unconverged": out.num_unconverged,
            "num_no_reference": out.num_no_reference,
        }
        if novel is None:
            details["sun"] = f"not computed: no training set ({ctx.train_name})"
        return MetricResult(summary=summary, columns=columns, details=details, protocol=out.protocol)
