"""Sampling any ``GenerativeModel``: run its ``sample`` iterator from a template to the final state.

The integration itself belongs to each family (``generative.integrator`` for flows and diffusions);
this module is what callers use whatever the family: ``iterate`` yields ``SampleStep``s (for
trajectories and progress bars), ``sample`` returns the generated ``CrystalBatch``. Plans are
``SamplePlan`` (settings, guidance, constraints); a bare ``SamplerConfig`` is a plan without
guidance or constraints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.generative.interfaces import (
    GenerativeModel,
    SamplePlan,
    SamplerConfig,
    SampleStep,
    last_state,
)

__all__ = [
    "SamplePlan", "SampleStep", "SamplerConfig", "as_plan", "iterate", "parse_anti_annealing", "sample",
    "with_overrides",
]  # fmt: skip


def as_plan(plan: SamplePlan | SamplerConfig | None, model: GenerativeModel) -> SamplePlan:
    """``plan`` as a ``SamplePlan`` (None: the model's default sampler, no guidance or constraints)."""
    if plan is None:
        return SamplePlan(model.default_sampler())
    return plan if isinstance(plan, SamplePlan) else SamplePlan(plan)


def with_overrides(
    default: SamplerConfig,
    *,
    steps: int | None = None,
    anti_annealing: float | Mapping[str, float] | None = None,
    plan: SamplePlan | None = None,
) -> SamplePlan:
    """A model's default sampler with the user's ``steps``/``anti_annealing`` (None keeps the default), in ``plan``."""
    sampler = replace(
        default,
        steps=default.steps if steps is None else steps,
        anti_annealing=default.anti_annealing if anti_annealing is None else anti_annealing,
    )
    return SamplePlan(sampler) if plan is None else replace(plan, sampler=sampler)


def iterate(
    model: GenerativeModel,
    template: CrystalBatch,
    plan: SamplePlan | SamplerConfig | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Yield the state after each step of the model's sampler."""
    return model.sample(template, as_plan(plan, model), generator=generator)


def sample(
    model: GenerativeModel,
    template: CrystalBatch,
    plan: SamplePlan | SamplerConfig | None = None,
    *,
    generator: torch.Generator | None = None,
) -> CrystalBatch:
    """Run the model's sampler to the end and return the generated batch."""
    return last_state(iterate(model, template, plan, generator=generator))


def parse_anti_annealing(text: str) -> float | dict[str, float]:
    """``"5"`` → 5.0 for every flow field; ``"frac_coords=5,lattice=0"`` → per field."""
    try:
        if "=" not in text:
            return float(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {key.strip(): float(value) for key, value in pairs}
    except ValueError:
        raise ValueError(f"anti-annealing: expected S or FIELD=S[,FIELD=S], got {text!r}") from None
