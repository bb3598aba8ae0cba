"""The sampling loop shared by flows and diffusions, CSP and DNG.

Time runs 0 → 1 on a uniform grid of ``steps`` intervals. Each step calls the model's ``predict``
(wrapped by any guidance) and ``step`` (Euler for flows, the reverse-diffusion predictor for
diffusions); when a process has a corrector, ``corrector_steps`` Langevin moves come first at each
level (DiffCSP's predictor–corrector). ``heun=True`` uses Heun's second-order rule for the fields
whose process ``predicts_velocity`` (two backbone calls per step). Constraints rewrite the state after
every step. The loop yields ``SampleStep``s so callers decide about trajectories and progress bars.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from crystalforge.core.crystal import CrystalBatch
from crystalforge.generative.interfaces import FieldOutputs

PredictFn = Callable[[CrystalBatch, Tensor], FieldOutputs]


class Guidance(Protocol):
    """Wraps the prediction function (classifier-free guidance, predictor gradients, ...)."""

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The guided outputs."""


class Constraint(Protocol):
    """Projects the working state after each step (inpainting, fixed composition, ...)."""

    def apply(self, x: dict[str, Tensor], t: Tensor, template: CrystalBatch) -> dict[str, Tensor]:
        """The constrained working state."""


@dataclass(frozen=True)
class SampleStep:
    """The state after one step (``t`` is the time reached)."""

    index: int
    t: float
    x: dict[str, Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    """How to integrate: steps, Heun, corrector moves, flow velocity scaling."""

    steps: int = 50
    heun: bool = False
    corrector_steps: int = 1
    # FlowMM's velocity scale (1 + s·t) for flow fields: one value for all, or {field: s};
    # None keeps the processes' own setting
    anti_annealing: float | Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.anti_annealing, Mapping):
            object.__setattr__(self, "anti_annealing", dict(self.anti_annealing))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.corrector_steps < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {self.corrector_steps}")


def iterate(
    model: Any,
    template: CrystalBatch,
    config: SamplerConfig = SamplerConfig(),
    *,
    generator: torch.Generator | None = None,
    guidance: Sequence[Guidance] = (),
    constraints: Sequence[Constraint] = (),
) -> Iterator[SampleStep]:
    """Yield the state after each of ``config.steps`` steps, starting from the prior."""
    if config.anti_annealing is not None:
        _check_anti_annealing(config.anti_annealing, model.velocity_fields)
    predict: PredictFn = model.predict
    for g in guidance:
        predict = functools.partial(g, predict)
    dtype = template.frac_coords.dtype
    b = template.num_crystals
    grid = torch.linspace(0.0, 1.0, config.steps + 1, dtype=dtype, device=template.device)
    x = model.sample_prior(template, generator)
    for c in constraints:
        x = c.apply(x, grid[0], template)
    with torch.no_grad():
        for i in range(config.steps):
            t = grid[i].expand(b)
            dt = (grid[i + 1] - grid[i]).expand(b)
            if model.has_corrector and config.corrector_steps:
                for _ in range(config.corrector_steps):
                    outputs = predict(model.assemble(template, x), t)
                    x = model.correct(x, outputs, t, template, generator=generator)
            outputs = predict(model.assemble(template, x), t)
            if config.heun and i < config.steps - 1:
                x = _heun(model, predict, x, outputs, t, dt, template, generator, config.anti_annealing)
            else:
                x = model.step(x, outputs, t, dt, template, anti_annealing=config.anti_annealing, generator=generator)
            for c in constraints:
                x = c.apply(x, grid[i + 1], template)
            yield SampleStep(index=i, t=float(grid[i + 1]), x=x)


def parse_anti_annealing(text: str) -> float | dict[str, float]:
    """``"5"`` → 5.0 for every flow field; ``"frac_coords=5,lattice=0"`` → per field."""
    try:
        if "=" not in text:
            return float(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {key.strip(): float(value) for key, value in pairs}
    except ValueError:
        raise ValueError(f"anti-annealing: expected S or FIELD=S[,FIELD=S], got {text!r}") from None


def _check_anti_annealing(scale: float | Mapping[str, float], velocity_fields: Sequence[str]) -> None:
    """Anti-annealing scales flow velocities: refuse a setting that would silently do nothing."""
    if not velocity_fields:
        raise ValueError("anti_annealing: this model has no flow (velocity) fields to scale")
    if isinstance(scale, Mapping):
        unknown = sorted(set(scale) - set(velocity_fields))
        if unknown:
            raise ValueError(
                f"anti_annealing: unknown field(s) {unknown} (this model's flow fields: {', '.join(velocity_fields)})"
            )


def _heun(
    model: Any,
    predict: PredictFn,
    x: dict[str, Tensor],
    outputs: FieldOutputs,
    t: Tensor,
    dt: Tensor,
    template: CrystalBatch,
    generator: torch.Generator | None,
    anti_annealing: float | Mapping[str, float] | None,
) -> dict[str, Tensor]:
    """Heun for velocity fields: average the velocity at both ends; other fields keep the first step."""
    euler = model.step(x, outputs, t, dt, template, anti_annealing=anti_annealing, generator=generator)
    outputs2 = predict(model.assemble(template, euler), t + dt)
    velocity = model.velocity_fields
    mixed = replace(outputs, **{f: 0.5 * (getattr(outputs, f) + getattr(outputs2, f)) for f in velocity})
    out = model.step(x, mixed, t, dt, template, anti_annealing=anti_annealing, generator=generator)
    return {f: out[f] if f in velocity else euler[f] for f in out}


def sample(
    model: Any,
    template: CrystalBatch,
    config: SamplerConfig = SamplerConfig(),
    *,
    generator: torch.Generator | None = None,
    guidance: Sequence[Guidance] = (),
    constraints: Sequence[Constraint] = (),
) -> CrystalBatch:
    """Run the loop to t = 1 and return the generated batch."""
    x = None
    for item in iterate(model, template, config, generator=generator, guidance=guidance, constraints=constraints):
        x = item.x
    assert x is not None
    return model.assemble(template, x)
