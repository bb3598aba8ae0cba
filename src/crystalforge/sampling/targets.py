"""Property targets as windows, and the objective every predictor-based route maximises.

A target is a window ``low <= y <= high`` on one property (either end may be open). The text form
(CLI ``--target``, API ``targets=``):

==========================  =========================================
``band_gap=2.0``            ``[2.0 − tol, 2.0 + tol]`` (``tol`` given by the caller, default 0.25)
``band_gap=2.0±0.5``        ``[1.5, 2.5]`` (also ``2.0+-0.5``)
``band_gap=1.5..2.5``       ``[1.5, 2.5]``
``formation_energy<-1``     ``(−∞, −1]`` (``<=`` is the same; the bound is inclusive)
``band_gap>1``              ``[1, ∞)``
==========================  =========================================

Several targets are a conjunction. Given a predictor's Gaussian predictive ``N(μ, σ²)`` per
property, the objective of a crystal is ``J = Σ_k log P(low_k <= y_k <= high_k)``: the log
probability that every window is hit (properties taken as independent). It is differentiable in
``μ`` and ``σ`` (so in the state, through the predictor) and stays finite far outside the window
(``log_ndtr``). Ranges and several properties at once are what classifier-free guidance cannot
express; this objective can.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_TOLERANCE", "PropertyTarget", "log_hit_probability", "objective", "parse_target", "parse_targets"]

DEFAULT_TOLERANCE = 0.25
"""Half-width of the window of a point target ``name=value`` when none is given."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERNS = (
    (re.compile(rf"^(?P<name>[\w.]+)\s*=\s*(?P<lo>{_NUMBER})\s*\.\.\s*(?P<hi>{_NUMBER})$"), "range"),
    (re.compile(rf"^(?P<name>[\w.]+)\s*=\s*(?P<v>{_NUMBER})\s*(?:±|\+-|\+/-)\s*(?P<d>{_NUMBER})$"), "pm"),
    (re.compile(rf"^(?P<name>[\w.]+)\s*=\s*(?P<v>{_NUMBER})$"), "point"),
    (re.compile(rf"^(?P<name>[\w.]+)\s*<=?\s*(?P<v>{_NUMBER})$"), "below"),
    (re.compile(rf"^(?P<name>[\w.]+)\s*>=?\s*(?P<v>{_NUMBER})$"), "above"),
)


@dataclass(frozen=True)
class PropertyTarget:
    """``low <= property <= high`` (``None``: open end)."""

    name: str
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise ValueError(f"target {self.name!r}: give a lower bound, an upper bound or both")
        for bound in (self.low, self.high):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"target {self.name!r}: bounds must be finite numbers, got {bound}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"target {self.name!r}: empty window [{self.low}, {self.high}]")

    def contains(self, value: float) -> bool:
        """Whether ``value`` is in the window (inclusive; NaN is not)."""
        if not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.name}<={self.high:g}"
        if self.high is None:
            return f"{self.name}>={self.low:g}"
        return f"{self.name}={self.low:g}..{self.high:g}"


def parse_target(text: str, *, tolerance: float = DEFAULT_TOLERANCE) -> PropertyTarget:
    """One target from its text form (see the module docstring); a malformed one is refused with the forms."""
    cleaned = text.strip()
    for pattern, kind in _PATTERNS:
        match = pattern.match(cleaned)
        if match is None:
            continue
        name = match["name"]
        if kind == "range":
            return PropertyTarget(name, float(match["lo"]), float(match["hi"]))
        if kind in ("pm", "point"):
            value = float(match["v"])
            half = float(match["d"]) if kind == "pm" else tolerance
            if half < 0:
                raise ValueError(f"target {text!r}: the tolerance must be >= 0")
            return PropertyTarget(name, value - half, value + half)
        if kind == "below":
            return PropertyTarget(name, None, float(match["v"]))
        return PropertyTarget(name, float(match["v"]), None)
    raise ValueError(
        f"cannot read target {text!r}: use NAME=VALUE, NAME=VALUE±TOL, NAME=LOW..HIGH, NAME<VALUE or NAME>VALUE"
    )


def parse_targets(
    texts: Sequence[str] | Mapping[str, float], *, tolerance: float = DEFAULT_TOLERANCE
) -> list[PropertyTarget]:
    """Targets from text forms, or from ``{name: value}`` point targets; one window per property."""
    if isinstance(texts, Mapping):
        targets = [PropertyTarget(k, float(v) - tolerance, float(v) + tolerance) for k, v in texts.items()]
    else:
        targets = [parse_target(t, tolerance=tolerance) for t in texts]
    names = [t.name for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"one window per property: {repeated} given more than once (use LOW..HIGH for a range)")
    return targets


def log_hit_probability(mean: Tensor, std: Tensor, target: PropertyTarget) -> Tensor:
    """``log P(low <= y <= high)`` for ``y ~ N(mean, std²)``, elementwise, finite far from the window."""
    std = std.clamp(min=1e-6)
    low, high = target.low, target.high
    if low is None:
        assert high is not None
        out: Tensor = torch.special.log_ndtr((high - mean) / std)
        return out
    if high is None:
        out = torch.special.log_ndtr((mean - low) / std)
        return out
    # log(Φ(b') − Φ(a')) with a' = (low − μ)/σ, b' = (high − μ)/σ. Far above the window both are very
    # negative and this direct form is exact (log_ndtr is accurate there); far below, both are very
    # positive and Φ(b') − Φ(a') = Φ(−a') − Φ(−b') is the form without cancellation.
    log_b, log_a = torch.special.log_ndtr((high - mean) / std), torch.special.log_ndtr((low - mean) / std)
    direct = log_b + torch.log1p(-torch.exp((log_a - log_b).clamp(max=-1e-12)))
    log_na, log_nb = torch.special.log_ndtr((mean - low) / std), torch.special.log_ndtr((mean - high) / std)
    mirrored = log_na + torch.log1p(-torch.exp((log_nb - log_na).clamp(max=-1e-12)))
    out = torch.where(mean > 0.5 * (low + high), direct, mirrored)
    return out


def objective(mean: Tensor, std: Tensor, properties: Sequence[str], targets: Sequence[PropertyTarget]) -> Tensor:
    """``J [B] = Σ_k log P(window_k hit)`` from predictions ``[B, P]`` over ``properties``."""
    if not targets:
        raise ValueError("no targets")
    total = torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
    for target in targets:
        if target.name not in properties:
            raise KeyError(f"the predictor has no {target.name!r} (it predicts: {', '.join(properties)})")
        k = list(properties).index(target.name)
        total = total + log_hit_probability(mean[:, k], std[:, k], target)
    return total
