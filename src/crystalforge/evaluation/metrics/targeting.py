"""Targeting success: the percentage of generated crystals whose property lies in a target window.

The window ``[low, high]`` is closed (either end may be open, None). Inclusive bounds follow CDVAE's
property-optimisation success rates (``OptEval``: ``best_props <= percentile``). The percentage is
over *all* crystals given: a crystal marked invalid (``valid``) or with a non-finite value counts
as a failure, with its reason. ``TargetingMetric`` is the suite adapter (the property is read from
each sample's ``Crystal.properties``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.evaluation.metrics.base import MetricResult
from crystalforge.evaluation.metrics.validity import valid_mask

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = ["TargetingMetric", "TargetingResult", "target_success"]


@dataclass(frozen=True, eq=False)
class TargetingResult:
    """Success rate (percent, 0-100; NaN for no crystals) and per-crystal flags and reasons."""

    success_rate: float
    n: int
    n_success: int
    success: np.ndarray  # [n] bool
    reasons: tuple[str, ...]  # [n] "in window", "below low", "above high", "not a finite value", "invalid"
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar results and the protocol (JSON-ready)."""
        return {
            "success_rate": self.success_rate,
            "n": self.n,
            "n_success": self.n_success,
            "protocol": dict(self.protocol),
        }

    def per_crystal(self) -> list[dict[str, Any]]:
        """One row per crystal, for a per-structure table."""
        return [
            {"target_success": bool(s), "target_reason": r} for s, r in zip(self.success, self.reasons, strict=True)
        ]


def _bound(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    bound = float(value)
    if math.isnan(bound):
        raise ValueError(f"{name} must be a number or None, got NaN")
    return bound


def target_success(
    values: np.ndarray | Sequence[float],
    *,
    low: float | None = None,
    high: float | None = None,
    valid: np.ndarray | Sequence[bool] | None = None,
    name: str = "property",
) -> TargetingResult:
    """Which crystals have ``low <= value <= high`` (a None end is open), and the percentage that do.

    Args:
        values: One property value per crystal ``[n]``; NaN where unknown.
        low: Smallest value in the window (inclusive), or None.
        high: Largest value in the window (inclusive), or None.
        valid: Optional ``[n]`` bool; invalid crystals fail whatever their value.
        name: Label of the property, recorded in the protocol.

    Returns:
        The result with one flag and reason per crystal and the protocol block.

    Raises:
        ValueError: for ``low > high``, a NaN bound or a ``valid`` of the wrong length.

    """
    lo, hi = _bound("low", low), _bound("high", high)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"empty window: low={lo} > high={hi}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.ones(x.shape[0], dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if ok.shape != x.shape:
        raise ValueError(f"valid has {ok.shape[0]} entries for {x.shape[0]} values")
    reasons: list[str] = []
    for v, is_valid in zip(x.tolist(), ok.tolist(), strict=True):
        if not is_valid:
            reasons.append("invalid")
        elif not math.isfinite(v):
            reasons.append("not a finite value")
        elif lo is not None and v < lo:
            reasons.append("below low")
        elif hi is not None and v > hi:
            reasons.append("above high")
        else:
            reasons.append("in window")
    success = np.array([r == "in window" for r in reasons], dtype=bool)
    n_success = int(success.sum())
    protocol = {
        "metric": "target_success",
        "property": name,
        "low": lo,
        "high": hi,
        "bounds": "inclusive",
        "valid_only": valid is not None,
        "denominator": "all crystals given",
    }
    return TargetingResult(
        success_rate=100.0 * n_success / x.shape[0] if x.shape[0] else math.nan,
        n=int(x.shape[0]),
        n_success=n_success,
        success=success,
        reasons=tuple(reasons),
        protocol=protocol,
    )


# ---- suite adapter ------------------------------------------------------------------------------------
def _number(value: object) -> float:
    """A property value as float; missing or non-numeric → NaN (counted as a failure with its reason)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


class TargetingMetric:
    """Success rate of valid samples whose property lies in the target window."""

    name = "targeting"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a property name and window."""
        return None if ctx.property_name and ctx.target_window else "no property target given"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Samples without the property count as failures."""
        assert ctx.property_name is not None
        assert ctx.target_window is not None
        name = ctx.property_name
        values = np.array([_number(None if s.crystal is None else s.crystal.properties.get(name)) for s in ctx.samples])
        low, high = ctx.target_window
        result = target_success(values, low=low, high=high, valid=valid_mask(ctx), name=name)
        rows = result.per_crystal()
        columns = {key: [r[key] for r in rows] for key in rows[0]} if rows else {}
        columns[f"target_{name}"] = values.tolist()
        return MetricResult(
            summary={"target_success_rate": result.success_rate}, columns=columns, protocol=result.protocol
        )
