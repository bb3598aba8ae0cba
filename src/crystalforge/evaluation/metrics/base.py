"""What a metric of the suite is: ``Metric`` (name, ``missing``, call) and the ``MetricResult`` it returns.

Each metric module defines its suite adapter (``ValidityMetric``, ``CoverageMetric``, ...) next
to the metric itself; ``crystalforge.evaluation.suite`` only assembles and runs them. Adapters
read their inputs from an ``EvaluationContext`` and spread per-sample values back over all
input records with ``scatter``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from crystalforge.core.crystal import Crystal

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = ["Metric", "MetricResult", "parsed", "pct", "scatter", "table_columns"]

_V = TypeVar("_V")
_F = TypeVar("_F")


@dataclass(frozen=True)
class MetricResult:
    """What one metric adds to the report."""

    summary: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # name → one value per sample
    details: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)


class Metric(Protocol):
    """A metric of the suite."""

    name: str

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Why the context cannot feed this metric, or None when it can."""

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Compute the metric."""


@overload
def scatter(ctx: EvaluationContext, indices: Sequence[int], values: Sequence[_V]) -> list[_V | None]: ...


@overload
def scatter(ctx: EvaluationContext, indices: Sequence[int], values: Sequence[_V], fill: _F) -> list[_V | _F]: ...


def scatter(
    ctx: EvaluationContext, indices: Sequence[int], values: Sequence[_V], fill: _F | None = None
) -> Sequence[_V | _F | None]:  # a list; Sequence (covariant) so both overloads are compatible with it
    """Spread values computed on a subset of samples back to one value per sample (``fill`` elsewhere)."""
    out: list[_V | _F | None] = [fill] * ctx.n
    for i, v in zip(indices, values, strict=True):
        out[i] = v
    return out


def parsed(ctx: EvaluationContext) -> tuple[list[int], list[Crystal]]:
    """Indices of the samples that hold a crystal, and those crystals."""
    idx = ctx.parsed_indices()
    crystals = [ctx.samples[i].crystal for i in idx]
    return idx, [c for c in crystals if c is not None]


def table_columns(ctx: EvaluationContext, indices: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-sample columns from one row per entry of ``indices`` (empty when there are no rows)."""
    return {key: scatter(ctx, indices, [r[key] for r in rows]) for key in rows[0]} if rows else {}


def pct(flags: Sequence[bool]) -> float:
    """Percentage of True flags (NaN for none)."""
    return 100.0 * sum(flags) / len(flags) if flags else math.nan
