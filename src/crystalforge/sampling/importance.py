"""Importance resampling: keep ``n`` of a pool of generated crystals, drawn in proportion to a weight.

The gradient-free steering route (in the spirit of PODGen's predictor-weighted sampling): the
generator proposes a pool of ``k·n`` crystals, a clean predictor gives each one ``J = log P(every
target window hit)``, and ``n`` are drawn **without replacement** with probability proportional to
``exp(J / temperature)`` (Gumbel-top-k: add Gumbel noise to the log weights and keep the ``n``
largest, which is exactly successive sampling without replacement). As ``k`` grows the kept set
approaches samples of ``p(x) · P(hit | x)^(1/temperature)``; temperature → 0 is greedy ranking.
Drawing without replacement keeps the kept set free of copies, so uniqueness is not bought by
resampling. Works for any family (nothing is differentiated), and expresses ranges and several
properties at once. Crystals without a structure get weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["gumbel_top_k", "importance_select"]


def gumbel_top_k(log_weights: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` items drawn without replacement with probability ∝ ``exp(log_weights)``.

    Items with ``-inf`` log weight are never drawn; asking for more items than have a finite
    weight is an error naming both counts. The order returned is the draw order.
    """
    logw = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(logw)
    if k > int(finite.sum()):
        raise ValueError(f"cannot draw {k} items: only {int(finite.sum())} of {logw.size} have a positive weight")
    gumbel = np.random.default_rng(seed).gumbel(size=logw.shape)
    keys = np.where(finite, logw + gumbel, -np.inf)
    order = np.argsort(-keys, kind="stable")
    return order[:k]


def importance_select(
    objective: Sequence[float] | np.ndarray, n: int, *, temperature: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``n`` pool indices drawn ∝ ``exp(J / temperature)`` without replacement (NaN ``J``: not drawn)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    j = np.asarray(objective, dtype=np.float64)
    logw = np.where(np.isnan(j), -math.inf, j / temperature)
    return gumbel_top_k(logw, n, seed=seed)
