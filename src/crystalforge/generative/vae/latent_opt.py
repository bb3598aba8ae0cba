"""Latent optimisation (the MAGECS route): search a CDVAE latent space for crystals with a target property.

The model's latent property predictor (``CDVAE.predict_properties``, trained with ``model.predict``)
scores a latent ``z``; the search maximises the **fitness**

    F(z) = score(ŷ(z)) − λ · D(z)

- ``score`` comes from a ``LatentObjective`` with an explicit direction: ``"max"`` (``ŷ``), ``"min"``
  (``−ŷ``) or ``"window"`` (``−dist(ŷ, [low, high])²``, 0 inside; either end may be open). It is
  measured in standard deviations of the property over the training data, so one ``λ`` fits any
  property.
- ``D`` is the distance to the data's latent distribution, per latent dimension
  (``CDVAE.latent_distance``): ``"mahalanobis"`` to the running mean and covariance of the training
  posterior (default), or ``"prior"``, ``‖z‖²/d``. Without it a "max" search walks off to where the
  predictor extrapolates and the decoder was never trained; with it the optimum stays where
  ``score`` gains no more than ``λ·D`` costs, a bounded region.

Two searches, each from ``n`` draws of the model's own prior (``CDVAE.sample_latent``):

- ``"gradient"``: Adam on ``z`` ascending ``F`` (``lr``, ``steps``), keeping each point's best iterate;
- ``"swarm"``: gradient-free particle swarm optimisation (Kennedy & Eberhart 1995), ``n``
  independent swarms of ``particles`` particles (velocity ``v ← ωv + c₁r₁(p − x) + c₂r₂(g − x)``,
  clipped to ``max_speed`` per coordinate), each returning its best position.

The optimised latents are then decoded (``CDVAE.decode``: heads, then the decoder's sampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.generative.interfaces import SamplePlan
from crystalforge.generative.vae.model import CDVAE, Penalty

__all__ = [
    "LatentObjective",
    "LatentOptResult",
    "LatentSearch",
    "gradient_ascent",
    "optimise_latents",
    "particle_swarm",
]

Fitness = Callable[[Tensor], Tensor]
"""``F(z [M, d]) -> [M]``, differentiable in ``z`` (the gradient search needs it)."""


@dataclass(frozen=True)
class LatentObjective:
    """What to optimise: a predicted property, with an explicit direction or a target window."""

    property: str
    direction: Literal["max", "min", "window"] = "max"
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min", "window"):
            raise ValueError(f"objective direction must be 'max', 'min' or 'window', got {self.direction!r}")
        bounds = [b for b in (self.low, self.high) if b is not None]
        if self.direction == "window" and not bounds:
            raise ValueError(f"objective {self.property!r}: a window needs low, high or both")
        if self.direction != "window" and bounds:
            raise ValueError(
                f"objective {self.property!r}: low/high belong to direction 'window', not {self.direction!r}"
            )
        if any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"objective {self.property!r}: window bounds must be finite")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"objective {self.property!r}: empty window [{self.low}, {self.high}]")

    def score(self, value: Tensor, mean: float, std: float) -> Tensor:
        """Score ``[M]`` of predicted values ``[M]`` (property units), in training standard deviations."""
        y = (value - mean) / std
        if self.direction == "max":
            return y
        if self.direction == "min":
            return -y
        below = torch.zeros_like(y) if self.low is None else torch.relu((self.low - mean) / std - y)
        above = torch.zeros_like(y) if self.high is None else torch.relu(y - (self.high - mean) / std)
        return -(below.pow(2) + above.pow(2))


@dataclass(frozen=True)
class LatentSearch:
    """How to search (see the module docstring); ``penalty_weight`` is ``λ``."""

    method: Literal["gradient", "swarm"] = "gradient"
    steps: int = 200
    lr: float = 0.05
    particles: int = 32
    inertia: float = 0.7
    cognitive: float = 1.5
    social: float = 1.5
    max_speed: float = 0.5
    penalty: Penalty = "mahalanobis"
    penalty_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("gradient", "swarm"):
            raise ValueError(f"latent search method must be 'gradient' or 'swarm', got {self.method!r}")
        if self.steps < 1 or self.particles < 1:
            raise ValueError(f"steps and particles must be >= 1, got {self.steps}, {self.particles}")
        if self.lr <= 0 or self.max_speed <= 0 or self.penalty_weight < 0:
            raise ValueError("lr and max_speed must be positive and penalty_weight >= 0")
        if self.penalty not in ("mahalanobis", "prior"):
            raise ValueError(f"penalty must be 'mahalanobis' or 'prior', got {self.penalty!r}")


@dataclass(frozen=True)
class LatentOptResult:
    """Optimised latents ``z [n, d]`` (and where they started), their scores and decoded crystals."""

    z: Tensor
    start: Tensor
    predicted: Tensor  # [n] the property at z (its own units)
    start_predicted: Tensor  # [n] at the start points
    fitness: Tensor  # [n] F(z)
    distance: Tensor  # [n] D(z)
    crystals: CrystalBatch | None


def gradient_ascent(fitness: Fitness, start: Tensor, *, steps: int, lr: float) -> Tensor:
    """Adam ascent of ``fitness`` from ``start [M, d]``; each row's best iterate ``[M, d]``."""
    z = start.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    best = start.detach().clone()
    best_f = torch.full((start.shape[0],), -math.inf, dtype=start.dtype, device=start.device)
    with torch.enable_grad():
        for i in range(steps + 1):  # the start and every step's iterate are scored
            f = fitness(z)
            better = f.detach() > best_f
            best = torch.where(better[:, None], z.detach(), best)
            best_f = torch.where(better, f.detach(), best_f)
            if i == steps:
                break
            (grad,) = torch.autograd.grad(f.sum(), z)
            z.grad = -grad  # Adam descends: ascend F
            optimiser.step()
    return best


@torch.no_grad()
def particle_swarm(
    fitness: Fitness,
    start: Tensor,  # [S, P, d] S swarms of P particles
    *,
    steps: int,
    inertia: float = 0.7,
    cognitive: float = 1.5,
    social: float = 1.5,
    max_speed: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Particle swarm maximisation of ``fitness``: each swarm's best position ``[S, d]`` and fitness ``[S]``."""
    s, p, d = start.shape
    x = start.clone()
    v = torch.zeros_like(x)
    own = x.clone()
    own_f = fitness(x.reshape(s * p, d)).reshape(s, p)
    for _ in range(steps):
        lead = own[torch.arange(s), own_f.argmax(1)]  # [S, d]
        r1 = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        r2 = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        v = inertia * v + cognitive * r1 * (own - x) + social * r2 * (lead[:, None] - x)
        v = v.clamp(-max_speed, max_speed)
        x = x + v
        f = fitness(x.reshape(s * p, d)).reshape(s, p)
        better = f > own_f
        own = torch.where(better[..., None], x, own)
        own_f = torch.where(better, f, own_f)
    best = own_f.argmax(1)
    return own[torch.arange(s), best], own_f[torch.arange(s), best]


def optimise_latents(
    model: CDVAE,
    objective: LatentObjective,
    *,
    n: int = 16,
    search: LatentSearch | None = None,
    decode: bool = True,
    plan: SamplePlan | None = None,
    generator: torch.Generator | None = None,
) -> LatentOptResult:
    """Optimise ``n`` latents of ``model`` for ``objective`` and decode them (see the module docstring).

    Raises:
        ValueError: when the model has no latent predictor of ``objective.property``.

    """
    search = search or LatentSearch()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if objective.property not in model.config.predict:
        have = ", ".join(model.config.predict) or "none: train it with model.predict"
        raise ValueError(f"the model's latent predictor has no {objective.property!r} (it predicts: {have})")
    k = model.config.predict.index(objective.property)
    mean, std = model.config.property_moments[objective.property]
    was_training = model.training
    model.eval()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:  # gradients are taken with respect to z only
        p.requires_grad_(False)
    try:

        def fitness(z: Tensor) -> Tensor:
            score = objective.score(model.predict_properties(z)[:, k], mean, std)
            return score - search.penalty_weight * model.latent_distance(z, kind=search.penalty)

        device = model.latent_mean.device
        draws = n * (search.particles if search.method == "swarm" else 1)
        start = model.sample_latent(model.dng_template(draws, device=device), generator=generator)
        if search.method == "gradient":
            z = gradient_ascent(fitness, start, steps=search.steps, lr=search.lr)
        else:
            swarms = start.reshape(n, search.particles, -1)
            z, _ = particle_swarm(
                fitness, swarms, steps=search.steps, inertia=search.inertia, cognitive=search.cognitive,
                social=search.social, max_speed=search.max_speed, generator=generator,
            )  # fmt: skip
            start = swarms[:, 0]
        with torch.no_grad():
            result = LatentOptResult(
                z=z,
                start=start,
                predicted=model.predict_properties(z)[:, k],
                start_predicted=model.predict_properties(start)[:, k],
                fitness=fitness(z),
                distance=model.latent_distance(z, kind=search.penalty),
                crystals=model.decode(z, plan, generator=generator) if decode else None,
            )
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return result
