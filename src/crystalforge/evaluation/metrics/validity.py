"""Validity of generated crystals: structure validity, SMACT composition validity and their report.

The rules are those of the CDVAE / DiffCSP protocol (``docs/metrics.md``, section "Validity"):

- structure: cell volume >= ``min_volume`` Å³ and every distance between two *different* atoms,
  over all periodic images, >= ``min_distance`` Å. An atom's distance to its own images is not
  checked, so a one-atom cell is valid. The neighbour search (``metrics.closest_pairs``) is exact
  for any cell shape.
- composition: CDVAE's SMACT rule (charge neutrality and the Pauling test on the gcd-reduced
  formula), implemented in ``metrics.smact_rule``; ``reproduce_smact_221=True`` (the default)
  restores what smact 2.2.1, the version behind the published numbers, did differently.

``ValidityMetric`` is the suite adapter; ``validity_report``, ``valid_mask`` and
``reference_validity`` are the shared results other metrics read, computed once per
``EvaluationContext``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import z_to_symbol
from crystalforge.core.versions import distribution_version
from crystalforge.evaluation.context import no_structure_reason
from crystalforge.evaluation.metrics.base import MetricResult, pct, scatter
from crystalforge.evaluation.metrics.closest_pairs import closest_pair_blocked, closest_pairs_batched, search_cell
from crystalforge.evaluation.metrics.smact_rule import OxidationStateList, reduced_formula, smact_verdict

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "MIN_DISTANCE",
    "MIN_VOLUME",
    "CrystalValidity",
    "OxidationStateList",
    "ValidityMetric",
    "ValidityReport",
    "ValidityResult",
    "composition_validity",
    "reference_validity",
    "structure_validity",
    "structure_validity_many",
    "valid_mask",
    "validity",
    "validity_report",
]

MIN_DISTANCE = 0.5
"""Shortest allowed distance between two different atoms (Å)."""

MIN_VOLUME = 0.1
"""Smallest allowed cell volume (Å³)."""

DEFAULT_MAX_CANDIDATES = 2_000_000
"""Upper bound on (atom pair, image) candidates examined at once by the distance check."""

MAX_EXACT_CANDIDATES = 200_000_000
"""Cells whose exact distance check needs more candidates than this are reported invalid (degenerate)."""

_CRYSTALS_PER_BATCH = 4096


@dataclass(frozen=True)
class ValidityResult:
    """One verdict and the reason for it (``bool(result)`` is ``result.valid``)."""

    valid: bool
    reason: str

    def __bool__(self) -> bool:
        return self.valid


@dataclass(frozen=True)
class CrystalValidity:
    """Validity of one crystal: structure, composition and both (``valid``)."""

    struct_valid: bool
    comp_valid: bool
    valid: bool
    reason: str  # "valid", or the failing checks' reasons joined by "; "


@dataclass(frozen=True)
class ValidityReport:
    """Per-crystal verdicts, the three percentages (0-100) and the protocol that produced them.

    Percentages are NaN for an empty input.
    """

    crystals: tuple[CrystalValidity, ...]
    validity_struct: float
    validity_comp: float
    validity: float
    protocol: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_crystals(self) -> int:
        """Number of crystals evaluated."""
        return len(self.crystals)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): the percentages, the protocol and the per-crystal verdicts."""
        return {
            "num_crystals": self.num_crystals,
            "validity_struct": self.validity_struct,
            "validity_comp": self.validity_comp,
            "validity": self.validity,
            "protocol": dict(self.protocol),
            "crystals": [
                {"struct_valid": c.struct_valid, "comp_valid": c.comp_valid, "valid": c.valid, "reason": c.reason}
                for c in self.crystals
            ],
        }


# ---- structure validity ---------------------------------------------------------------------
def structure_validity(
    crystal: Crystal, *, min_distance: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME
) -> ValidityResult:
    """Whether one crystal has a sane cell and no two different atoms closer than ``min_distance``.

    Args:
        crystal: the structure.
        min_distance: shortest allowed distance between two different atoms, images included (Å).
        min_volume: smallest allowed cell volume (Å³).

    Returns:
        The verdict; an invalid one names the volume or the closest pair and its distance.

    """
    return structure_validity_many([crystal], min_distance=min_distance, min_volume=min_volume)[0]


def structure_validity_many(
    crystals: Sequence[Crystal],
    *,
    min_distance: float = MIN_DISTANCE,
    min_volume: float = MIN_VOLUME,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> list[ValidityResult]:
    """``structure_validity`` for many crystals, batched through one exact periodic neighbour search.

    Skewed cells are first re-described by an LLL-reduced basis (the same crystal, fewer images
    to search); cells too large for one search chunk are searched pair block by pair block.

    Args:
        crystals: the structures.
        min_distance: shortest allowed distance between two different atoms (Å); 0 skips the check.
        min_volume: smallest allowed cell volume (Å³).
        max_candidates: bound on (pair, image) candidates held in memory at once.

    Returns:
        One verdict per crystal, in order.

    """
    if not (math.isfinite(min_distance) and min_distance >= 0):
        raise ValueError(f"min_distance must be finite and >= 0, got {min_distance}")
    if not math.isfinite(min_volume):
        raise ValueError(f"min_volume must be finite, got {min_volume}")
    results: list[ValidityResult | None] = [None] * len(crystals)
    light: list[tuple[int, Crystal]] = []
    heavy: list[tuple[int, Crystal]] = []
    for k, crystal in enumerate(crystals):
        volume = crystal.volume
        if not volume >= min_volume:
            results[k] = ValidityResult(False, f"cell volume {volume:.4g} Å³ is below {min_volume:g} Å³")
        elif crystal.num_atoms == 1 or min_distance == 0:
            results[k] = ValidityResult(True, "valid")
        else:
            cell, cost = search_cell(crystal, min_distance)
            if not cost <= MAX_EXACT_CANDIDATES:
                results[k] = ValidityResult(
                    False, f"degenerate cell: an exact distance check would need {cost:.3g} (pair, image) candidates"
                )
            elif cost <= max_candidates:
                light.append((k, cell))
            else:
                heavy.append((k, cell))
    for start in range(0, len(light), _CRYSTALS_PER_BATCH):
        group = light[start : start + _CRYSTALS_PER_BATCH]
        hits = closest_pairs_batched([cell for _, cell in group], min_distance, max_candidates)
        for (k, _), hit in zip(group, hits, strict=True):
            results[k] = _distance_verdict(crystals[k], hit, min_distance)
    for k, cell in heavy:
        hit = closest_pair_blocked(cell, min_distance, max_candidates)
        results[k] = _distance_verdict(crystals[k], hit, min_distance)
    return [r if r is not None else ValidityResult(False, "not checked") for r in results]


def _distance_verdict(crystal: Crystal, hit: tuple[float, int, int] | None, min_distance: float) -> ValidityResult:
    if hit is None:
        return ValidityResult(True, "valid")
    dist, i, j = hit
    zi, zj = int(crystal.atomic_numbers[i]), int(crystal.atomic_numbers[j])
    return ValidityResult(
        False,
        f"atoms {i} ({z_to_symbol(zi)}) and {j} ({z_to_symbol(zj)}) are {dist:.3f} Å apart "
        f"(minimum {min_distance:g} Å)",
    )


# ---- composition validity -------------------------------------------------------------------
def composition_validity(
    composition: Mapping[str, int] | Mapping[int, int],
    *,
    oxidation_states: OxidationStateList = "smact14",
    pauling_test: bool = True,
    reproduce_smact_221: bool = True,
) -> ValidityResult:
    """SMACT composition validity of a formula (CDVAE's rule), cached per reduced formula.

    With ``reproduce_smact_221`` the smact 2.2.1 behaviour is restored: Ir's lowest smact14 state
    is -2 (not -3), Zr's Pauling electronegativity is 0.33 (not 1.33), and a missing
    electronegativity decides the Pauling test as 2.2.1 under CDVAE did (see ``docs/metrics.md``).

    Args:
        composition: element symbol (or atomic number) → positive integer count.
        oxidation_states: which smact oxidation-state list to use.
        pauling_test: require the Pauling electronegativity ordering.
        reproduce_smact_221: reproduce smact 2.2.1 (the published numbers) instead of modern smact.

    Returns:
        The verdict; elements unknown to smact or without oxidation states give an invalid
        verdict with the reason, never an exception.

    Raises:
        ValueError: for a symbol that is no element, a non-positive or fractional count, an empty
            composition or an unknown list name.

    """
    if oxidation_states not in ("smact14", "icsd24"):
        raise ValueError(f"oxidation_states must be 'smact14' or 'icsd24', got {oxidation_states!r}")
    valid, reason = smact_verdict(reduced_formula(composition), oxidation_states, pauling_test, reproduce_smact_221)
    return ValidityResult(valid, reason)


# ---- the metric -----------------------------------------------------------------------------
def validity(
    crystals: Iterable[Crystal],
    *,
    min_distance: float = MIN_DISTANCE,
    min_volume: float = MIN_VOLUME,
    oxidation_states: OxidationStateList = "smact14",
    pauling_test: bool = True,
    reproduce_smact_221: bool = True,
) -> ValidityReport:
    """Structure, composition and overall validity of generated crystals (percentages 0-100).

    Args:
        crystals: the generated structures.
        min_distance: shortest allowed distance between two different atoms (Å).
        min_volume: smallest allowed cell volume (Å³).
        oxidation_states: smact oxidation-state list for the composition check.
        pauling_test: require the Pauling electronegativity ordering.
        reproduce_smact_221: reproduce smact 2.2.1 (the published numbers).

    Returns:
        The report, with the protocol block recording every setting and the smact version.

    """
    items = list(crystals)
    structure = structure_validity_many(items, min_distance=min_distance, min_volume=min_volume)
    per_crystal = []
    for crystal, struct in zip(items, structure, strict=True):
        comp = composition_validity(
            crystal.composition,
            oxidation_states=oxidation_states,
            pauling_test=pauling_test,
            reproduce_smact_221=reproduce_smact_221,
        )
        failures = [r.reason for r in (struct, comp) if not r.valid]
        per_crystal.append(
            CrystalValidity(
                struct_valid=struct.valid,
                comp_valid=comp.valid,
                valid=struct.valid and comp.valid,
                reason="; ".join(failures) if failures else "valid",
            )
        )

    protocol = {
        "metric": "validity",
        "min_distance": min_distance,
        "min_volume": min_volume,
        "oxidation_states": oxidation_states,
        "pauling_test": pauling_test,
        "reproduce_smact_221": reproduce_smact_221,
        "smact_version": distribution_version("smact"),
    }
    return ValidityReport(
        crystals=tuple(per_crystal),
        validity_struct=pct([c.struct_valid for c in per_crystal]),
        validity_comp=pct([c.comp_valid for c in per_crystal]),
        validity=pct([c.valid for c in per_crystal]),
        protocol=protocol,
    )


# ---- shared results of an evaluation ------------------------------------------------------------------
def validity_report(ctx: EvaluationContext) -> ValidityReport:
    """Validity of the context's parsed crystals, computed once per context (unparsed ones: ``valid_mask``)."""
    return ctx.memo("validity", lambda: validity([c for c in ctx.crystals if c is not None]))


def valid_mask(ctx: EvaluationContext) -> np.ndarray:
    """``[n]`` bool: the sample parsed and is valid (structure and composition); computed once per context."""

    def compute() -> np.ndarray:
        mask = np.zeros(ctx.n, dtype=bool)
        for i, result in zip(ctx.parsed_indices(), validity_report(ctx).crystals, strict=True):
            mask[i] = result.valid
        return mask

    return ctx.memo("valid_mask", compute)


def reference_validity(ctx: EvaluationContext) -> np.ndarray:
    """``[n_ref]`` bool validity of the context's reference crystals (the DiffCSP CSP rule needs it)."""
    if ctx.reference is None:
        raise ValueError("no reference set given")
    ref = ctx.reference
    return ctx.memo("reference_validity", lambda: np.array([c.valid for c in validity(ref).crystals], dtype=bool))


# ---- suite adapter ------------------------------------------------------------------------------------
class ValidityMetric:
    """Structure, composition and overall validity (unreadable records count as invalid)."""

    name = "validity"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Percentages over all input records."""
        report = validity_report(ctx)
        idx = ctx.parsed_indices()
        struct = scatter(ctx, idx, [c.struct_valid for c in report.crystals], False)
        comp = scatter(ctx, idx, [c.comp_valid for c in report.crystals], False)
        reason = scatter(ctx, idx, [c.reason for c in report.crystals], None)
        for i, s in enumerate(ctx.samples):
            if s.crystal is None:
                reason[i] = no_structure_reason(s.error or "")
        valid = valid_mask(ctx).tolist()
        return MetricResult(
            summary={"validity_struct": pct(struct), "validity_comp": pct(comp), "validity": pct(valid)},
            columns={"struct_valid": struct, "comp_valid": comp, "valid": valid, "validity_reason": reason},
            protocol=dict(report.protocol),
        )
