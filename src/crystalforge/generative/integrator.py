"""The time-stepping loop of process-based models (flows and diffusions, CSP and DNG).

Time runs 0 → 1 on a uniform grid of ``steps`` intervals (``start_time`` → 1 for a refinement,
which starts from the template's own structure put on the path at ``start_time``: SDEdit,
FlowLLM). Each step calls the model's ``predict`` (wrapped by any guidance) and ``step`` (Euler for
flows, the reverse-diffusion predictor for diffusions); when a process has a corrector,
``corrector_steps`` Langevin moves come first at each level (DiffCSP's predictor–corrector).
``heun=True`` uses Heun's second-order rule for the fields whose process ``predicts_velocity`` (two
backbone calls per step). Constraints rewrite the state after every step. The state is one
``CrystalBatch`` throughout; the loop yields ``SampleStep``s so callers decide about trajectories
and progress bars. At the last step, a cell flatter than ``min_volume_fraction`` (V/(a·b·c)) is
opened up to it (``core.lattice.raise_flat_cells``) before the constraints run, so a process
model never hands out a flat cell unless a constraint imposes one (a user's ``FixedLattice``).

Each step runs under ``torch.no_grad`` (and only the step: grad mode is restored before every
``yield``); a guidance with ``requires_grad`` is called with autograd enabled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.lattice import raise_flat_cells
from crystalforge.core.segment import segment_sum
from crystalforge.generative.interfaces import (
    FieldOutputs,
    Guidance,
    PredictFn,
    SamplePlan,
    SampleStep,
    StepContext,
)


class ProcessModel(Protocol):
    """What the loop needs of a process-based model (``generative.joint.JointModel`` is one)."""

    @property
    def processes(self) -> Mapping[str, object]:
        """The field processes, by field name."""

    @property
    def has_corrector(self) -> bool:
        """Whether any process has a corrector move."""

    @property
    def velocity_fields(self) -> tuple[str, ...]:
        """Fields whose step is an Euler move along a predicted velocity."""

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> CrystalBatch:
        """The template with every field drawn from its prior."""

    def noise(self, clean: CrystalBatch, t: Tensor, generator: torch.Generator | None = None) -> CrystalBatch:
        """``clean`` put on each field's path at time ``t``."""

    def predict(self, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The backbone's outputs."""

    def step(
        self,
        state: CrystalBatch,
        outputs: FieldOutputs,
        t: Tensor,
        dt: Tensor,
        *,
        anti_annealing: float | Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> CrystalBatch:
        """Every field one step from ``t`` to ``t + dt``."""

    def correct(
        self, state: CrystalBatch, outputs: FieldOutputs, t: Tensor, *, generator: torch.Generator | None = None
    ) -> CrystalBatch:
        """Corrector moves at fixed ``t``."""

    def latent(self, state: CrystalBatch, field: str) -> Tensor:
        """The working value of ``field``."""

    def with_latents(self, state: CrystalBatch, x: Mapping[str, Tensor]) -> CrystalBatch:
        """``state`` with fields set from working values."""


def integrate(
    model: ProcessModel, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
) -> Iterator[SampleStep]:
    """Yield the state after each of ``plan.sampler.steps`` steps, from the prior.

    With ``start_time > 0``: from the template's structure noised to that time (a refinement).
    """
    config = plan.sampler
    if config.anti_annealing is not None:
        check_anti_annealing(config.anti_annealing, model.velocity_fields)
    predict: PredictFn = model.predict
    for g in plan.guidance:
        predict = _guided(g, predict)
    context = StepContext(template=template, noise=partial(model.noise, generator=generator), generator=generator)
    b = template.num_crystals
    grid = torch.linspace(
        config.start_time, 1.0, config.steps + 1, dtype=template.frac_coords.dtype, device=template.device
    )
    with torch.no_grad():
        if config.start_time > 0.0:
            check_start(template)
            state = model.noise(template, grid[0].expand(b), generator)
        else:
            state = model.sample_prior(template, generator)
        for c in plan.constraints:
            state = c.apply(state, grid[0].expand(b), context)
    for i in range(config.steps):
        t = grid[i].expand(b)
        dt = (grid[i + 1] - grid[i]).expand(b)
        with torch.no_grad():
            if model.has_corrector and config.corrector_steps:
                for _ in range(config.corrector_steps):
                    state = model.correct(state, predict(state, t), t, generator=generator)
            outputs = predict(state, t)
            if config.heun and i < config.steps - 1:
                state = _heun(model, predict, state, outputs, t, dt, generator, config.anti_annealing)
            else:
                state = model.step(state, outputs, t, dt, anti_annealing=config.anti_annealing, generator=generator)
            if i == config.steps - 1 and config.min_volume_fraction > 0:  # before the constraints: theirs is final
                opened = raise_flat_cells(state.lattice, config.min_volume_fraction)
                if opened is not state.lattice:  # a cell was flat (replacing drops the stale lattice latent)
                    state = state.replace(lattice=opened)
            for c in plan.constraints:
                state = c.apply(state, grid[i + 1].expand(b), context)
        yield SampleStep(index=i, t=float(grid[i + 1]), state=state)


def check_start(template: CrystalBatch) -> None:
    """A refinement starts from the template's structure: refuse a crystal without a usable cell or coordinates."""
    finite_atoms = torch.isfinite(template.frac_coords).all(dim=1).to(template.frac_coords.dtype)
    finite = segment_sum(finite_atoms, template.crystal_idx, template.num_crystals) == template.num_atoms
    volume = template.volume.abs()
    bad = ~finite | ~torch.isfinite(volume) | (volume < 1e-6)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"start_time > 0 refines the template's own structures, but crystal {first} (and "
            f"{int(bad.sum()) - 1} more) has no usable cell or coordinates; give proposals, or start_time = 0"
        )


def _guided(guidance: Guidance, inner: PredictFn) -> PredictFn:
    """``inner`` wrapped by one guidance (with autograd on when the guidance asks for it)."""

    def predict(state: CrystalBatch, t: Tensor) -> FieldOutputs:
        if getattr(guidance, "requires_grad", False):
            with torch.enable_grad():
                return guidance(inner, state, t)
        return guidance(inner, state, t)

    return predict


def check_anti_annealing(scale: float | Mapping[str, float], velocity_fields: Sequence[str]) -> None:
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
    model: ProcessModel,
    predict: PredictFn,
    state: CrystalBatch,
    outputs: FieldOutputs,
    t: Tensor,
    dt: Tensor,
    generator: torch.Generator | None,
    anti_annealing: float | Mapping[str, float] | None,
) -> CrystalBatch:
    """Heun for velocity fields: average the velocity at both ends; other fields keep the first step."""
    euler = model.step(state, outputs, t, dt, anti_annealing=anti_annealing, generator=generator)
    outputs2 = predict(euler, t + dt)
    velocity = model.velocity_fields
    mixed = replace(outputs, **{f: 0.5 * (getattr(outputs, f) + getattr(outputs2, f)) for f in velocity})
    heun = model.step(state, mixed, t, dt, anti_annealing=anti_annealing, generator=generator)
    keep = {f: model.latent(heun if f in velocity else euler, f) for f in model.processes}
    return model.with_latents(state, keep)
