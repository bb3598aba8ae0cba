"""Ranking candidates on several objectives: Pareto fronts, ties broken by a weighted score.

Each ``Objective`` turns one column (a ``CandidateStore.table()`` key such as
``hull_e_above_hull``) into a cost, lower is better: the value itself (``min``), its negative
(``max``), or its distance to a window ``[low, high]``, 0 inside (``window``: a target property).

- ``pareto_fronts``: non-dominated sorting of the costs; front 0 is the Pareto front, front 1 the
  front once front 0 is removed, and so on. A candidate dominates another when it is no worse in
  every objective and better in one; equal candidates share a front.
- ``weighted_score``: the sum of each objective's weight × its cost, normalised by the objective's
  ``scale`` (fixed units, comparable between runs) or else min–max over the ranked candidates.
- ``rank``: both, and the order best first: by front, then score (``by="pareto"``), or by score
  alone (``by="score"``).

A missing value (None, text, NaN, ±inf) never crashes the ranking: a candidate missing any
objective gets score +inf and the front after the last complete one, so it ranks after every
candidate with all values, in table order. Everything is vectorised NumPy; the dominance test is
done in chunks, so thousands of candidates rank in well under a second without an n × n matrix.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

Goal = Literal["min", "max", "window"]
Table = Sequence[Mapping[str, object]] | Mapping[str, ArrayLike]
"""Rows (``CandidateStore.table()``) or columns (name → one value per candidate)."""

_CHUNK = 1 << 21  # pairs per dominance block (a few MB of booleans)


@dataclass(frozen=True)
class Objective:
    """One objective: a column, which way is better, and its weight in the score.

    Attributes:
        key: the column (``hull_e_above_hull``, ``predict_band_gap_mean``, ...).
        goal: ``min`` (lower is better), ``max`` (higher is better) or ``window`` (distance to
            ``[low, high]``, 0 inside).
        low: the window's lower bound (``window`` only; may be ``-inf``).
        high: the window's upper bound (``window`` only; may be ``inf``).
        weight: weight in the score (>= 0; 0 keeps the objective in the Pareto sort only).
        scale: the cost's unit in the score (eV/atom, eV, ...); None normalises min–max over the
            candidates being ranked.

    """

    key: str
    goal: Goal = "min"
    low: float = -math.inf
    high: float = math.inf
    weight: float = 1.0
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.goal not in ("min", "max", "window"):
            raise ValueError(f"objective {self.key!r}: goal must be min, max or window, got {self.goal!r}")
        if self.goal == "window" and not self.low <= self.high:
            raise ValueError(f"objective {self.key!r}: window [{self.low}, {self.high}] is empty")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"objective {self.key!r}: weight must be finite and >= 0, got {self.weight}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"objective {self.key!r}: scale must be finite and > 0, got {self.scale}")

    @classmethod
    def target(cls, key: str, value: float, tolerance: float, **kwargs: float) -> Objective:
        """Distance to the window ``value ± tolerance`` (``band_gap=2.5±0.5``)."""
        return cls(key, "window", low=value - tolerance, high=value + tolerance, **kwargs)

    def cost(self, values: ArrayLike) -> np.ndarray:
        """The costs of ``values`` (lower is better; NaN where a value is missing or not finite)."""
        x = np.asarray(values, dtype=np.float64)
        x = np.where(np.isfinite(x), x, np.nan)
        if self.goal == "min":
            return x
        if self.goal == "max":
            return -x
        return np.maximum(self.low - x, 0.0) + np.maximum(x - self.high, 0.0)


@dataclass(frozen=True)
class Ranking:
    """The result of ``rank``; every array has one entry per candidate, in table order.

    Attributes:
        front: Pareto front (0 = non-dominated); candidates missing a value share the last front.
        score: weighted, normalised cost (lower is better; +inf when a value is missing).
        order: candidate indices, best first.
        position: each candidate's place in ``order`` (0 = best).
        complete: whether the candidate has every objective's value.

    """

    front: np.ndarray  # [B] int64
    score: np.ndarray  # [B] float64
    order: np.ndarray  # [B] int64
    position: np.ndarray  # [B] int64
    complete: np.ndarray  # [B] bool


def _number(value: object) -> float:
    if isinstance(value, (numbers.Real, np.bool_)):
        return float(value)
    return math.nan


def column(table: Table, key: str) -> np.ndarray:
    """One column of ``table`` as floats (NaN where a value is absent or not a number)."""
    if isinstance(table, Mapping):
        raw = table.get(key)
        if raw is None:
            return np.full(_num_rows(table), np.nan)
        try:
            return np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return np.array([_number(v) for v in np.asarray(raw, dtype=object).reshape(-1)], dtype=np.float64)
    return np.array([_number(row.get(key)) for row in table], dtype=np.float64)


def _num_rows(table: Table) -> int:
    if isinstance(table, Mapping):
        lengths = {len(np.asarray(v, dtype=object).reshape(-1)) for v in table.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
    return len(table)


def costs(table: Table, objectives: Sequence[Objective]) -> np.ndarray:
    """The cost matrix ``[B, K]`` of ``table`` under ``objectives`` (NaN = missing)."""
    out = np.empty((_num_rows(table), len(objectives)), dtype=np.float64)
    for k, objective in enumerate(objectives):
        values = column(table, objective.key)
        if out.shape[0] and np.isnan(values).all():
            logger.warning("objective %r: no candidate has a value for it", objective.key)
        out[:, k] = objective.cost(values)
    return out


def weighted_score(cost: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """Sum of weight × normalised cost per candidate (``[B]``; +inf where a cost is NaN)."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] != len(objectives):
        raise ValueError(f"costs of shape {cost.shape} do not match {len(objectives)} objectives")
    score = np.zeros(cost.shape[0])
    for k, objective in enumerate(objectives):
        c = cost[:, k]
        if objective.scale is not None:
            normalised = c / objective.scale
        else:
            finite = c[np.isfinite(c)]
            low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
            normalised = (c - low) / (high - low) if high > low else np.where(np.isnan(c), np.nan, 0.0)
        score += objective.weight * normalised
    return np.where(np.isnan(score), np.inf, score)


def _dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[m, n]``: whether point ``a[i]`` dominates ``b[j]`` (no worse everywhere, better somewhere)."""
    no_worse = np.ones((len(a), len(b)), dtype=bool)
    better = np.zeros((len(a), len(b)), dtype=bool)
    for k in range(a.shape[1]):  # 2-D comparisons per objective: faster than reducing a short last axis
        left, right = a[:, k, None], b[None, :, k]
        no_worse &= left <= right
        better |= left < right
    return no_worse & better


def _dominated_counts(sources: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each of ``points``: how many of ``sources`` dominate it (computed in bounded blocks)."""
    counts = np.zeros(len(points), dtype=np.int64)
    step = max(1, _CHUNK // max(1, len(points)))
    for start in range(0, len(sources), step):
        counts += _dominates(sources[start : start + step], points).sum(axis=0)
    return counts


def pareto_fronts(cost: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of ``cost`` ``[B, K]`` (lower is better): front index per row, ``[B]`` int64.

    Rows with a NaN get the front after the last complete one.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"costs must be [B, K], got shape {cost.shape}")
    complete = ~np.isnan(cost).any(axis=1)
    points = cost[complete]
    levels = np.zeros(len(points), dtype=np.int64)
    remaining = _dominated_counts(points, points)
    current = np.flatnonzero(remaining == 0)
    level = 0
    while current.size:
        levels[current] = level
        remaining -= _dominated_counts(points[current], points)
        remaining[current] = -1  # assigned; later fronts never dominate earlier ones
        current = np.flatnonzero(remaining == 0)
        level += 1
    fronts = np.full(cost.shape[0], level, dtype=np.int64)
    fronts[complete] = levels
    return fronts


def rank(table: Table, objectives: Sequence[Objective], *, by: Literal["pareto", "score"] = "pareto") -> Ranking:
    """Rank the candidates of ``table`` (best first) on ``objectives``."""
    if by not in ("pareto", "score"):
        raise ValueError(f"by must be 'pareto' or 'score', got {by!r}")
    cost = costs(table, objectives)
    front = pareto_fronts(cost)
    score = weighted_score(cost, objectives)
    index = np.arange(len(front))
    keys = (index, score, front) if by == "pareto" else (index, score)
    order = np.lexsort(keys).astype(np.int64)
    position = np.empty_like(order)
    position[order] = index
    return Ranking(front, score, order, position, ~np.isnan(cost).any(axis=1))
