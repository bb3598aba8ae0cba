"""The seams steering plugs into: guidance with gradients, constraints on batches, targets on jobs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import (
    FieldOutputs,
    PredictFn,
    SamplePlan,
    SamplerConfig,
    StepContext,
)
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.runner import Job, jobs_template
from crystalforge.sampling.samplers import iterate, sample
from crystalforge.sampling.templates import template_from_compositions
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)


def _model(task: str = "csp", kind: str = "flow"):
    crystals = tiny_crystals()
    return build_model(ModelConfig(kind=kind, task=task, backbone=TINY), compute_dataset_stats(crystals))


class PullToCentre:
    """A gradient guidance: adds −∇E to the coordinate velocity, E = Σ |f − ½|² (autograd through the state)."""

    requires_grad = True

    def __init__(self) -> None:
        self.calls = 0
        self.grad_norms: list[float] = []

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: torch.Tensor) -> FieldOutputs:
        assert torch.is_grad_enabled()
        frac = state.frac_coords.detach().requires_grad_(True)
        energy = (frac - 0.5).pow(2).sum()
        (grad,) = torch.autograd.grad(energy, frac)
        self.calls += 1
        self.grad_norms.append(float(grad.norm()))
        out = predict(state.replace(frac_coords=frac.detach()), t)
        return replace(out, frac_coords=out.frac_coords - 5.0 * grad)


def test_gradient_guidance_gets_autograd_and_changes_the_samples():
    model = _model()
    crystals = tiny_crystals()
    template = template_from_compositions([c.atomic_numbers.tolist() for c in crystals])
    config = SamplerConfig(steps=4)
    plain = sample(model, template, config, generator=torch.Generator().manual_seed(0))
    guidance = PullToCentre()
    plan = SamplePlan(config, guidance=(guidance,))
    guided = sample(model, template, plan, generator=torch.Generator().manual_seed(0))
    assert guidance.calls == 4 and min(guidance.grad_norms) > 0
    assert not torch.equal(plain.frac_coords, guided.frac_coords)
    # the lattice prediction was left alone, but it sees other coordinates, so only coordinates are asserted
    assert torch.is_grad_enabled()  # sampling never leaves grad mode switched off for the caller


class KeepFixedAtoms:
    """Inpainting-style constraint: fixed atoms follow the template's coordinates noised to time t."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def apply(self, state: CrystalBatch, t: torch.Tensor, context: StepContext) -> CrystalBatch:
        self.times.append(float(t[0]))
        known = context.noise(context.template, t)
        fixed = context.template.fixed_mask[:, None]
        return state.replace(frac_coords=torch.where(fixed, known.frac_coords, state.frac_coords))


def test_constraint_on_batches_with_the_models_noising():
    model = _model()
    crystals = tiny_crystals()[1:3]
    data = CrystalBatch.collate(crystals, dtype=torch.float32)
    fixed = torch.zeros(data.atomic_numbers.shape[0], dtype=torch.bool)
    fixed[0] = True  # the first atom of the first crystal is given
    template = data.replace(fixed=fixed)
    constraint = KeepFixedAtoms()
    steps = list(iterate(model, template, SamplePlan(SamplerConfig(steps=3), constraints=(constraint,))))
    assert constraint.times == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    final = steps[-1].state
    final.validate()
    # at t = 1 the path is the data itself: the fixed atom sits where the template put it
    assert torch.allclose(final.frac_coords[0], data.frac_coords[0], atol=1e-6)
    assert not torch.allclose(final.frac_coords[1:], data.frac_coords[1:], atol=1e-3)
    # the constrained field's latent was dropped (not stale) and the rest kept
    assert "frac_coords" not in final.latents and "lattice" in final.latents


def test_jobs_carry_target_properties_into_the_template():
    jobs = [
        Job("a", 2, (14, 14), properties={"band_gap": 1.5}),
        Job("b", 1, (6,), properties={"band_gap": 2.0, "e_form": -0.5}),
        Job("c", 1, (6,)),
    ]
    template = jobs_template(jobs, torch.float32)
    template.validate()
    assert template.material_ids == ("a", "b", "c")
    gap, e_form = template.properties["band_gap"], template.properties["e_form"]
    assert gap[:2].tolist() == [1.5, 2.0] and math.isnan(float(gap[2]))
    assert template.condition_mask["band_gap"].tolist() == [True, True, False]
    assert template.condition_mask["e_form"].tolist() == [False, True, False] and float(e_form[1]) == -0.5


def test_batch_field_table_carries_fixed_and_latents():
    from crystalforge.core.symmetry_ops import permute

    batch = CrystalBatch.collate(tiny_crystals()[1:4], dtype=torch.float64)
    fixed = torch.arange(batch.atomic_numbers.shape[0]) % 2 == 0
    codes = torch.randn(len(batch), 6, dtype=torch.float64)
    b = batch.replace(fixed=fixed, latents={"lattice": codes, "atomic_numbers": batch.atomic_numbers.clone()})
    b.validate()
    sub = b.index_select([2, 0])
    sub.validate()
    n2 = int(batch.num_atoms[2])
    assert torch.equal(sub.fixed[:n2], fixed[-n2:]) and torch.equal(sub.latents["lattice"], codes[[2, 0]])
    assert sub.to(dtype=torch.float32).latents["lattice"].dtype == torch.float32
    perm = torch.arange(batch.atomic_numbers.shape[0])
    perm[:2] = torch.tensor([1, 0])
    assert torch.equal(permute(b, perm).fixed, fixed[perm])
    # changing a field drops its latent; changing the atom count drops all of them
    assert set(b.replace(lattice=batch.lattice * 2).latents) == {"atomic_numbers"}
    assert b.replace(num_atoms=batch.num_atoms).latents == {}
    assert set(b.replace(frac_coords=batch.frac_coords).latents) == {"lattice", "atomic_numbers"}


def test_type_classes_reach_the_backbone_without_a_lookup(monkeypatch):
    model = _model(task="dng")
    assert model._share_type_classes  # one vocabulary for the backbone and the type process
    template = CrystalBatch.collate(tiny_crystals()[1:3], dtype=torch.float32)
    state = model.sample_prior(template.replace(atomic_numbers=torch.zeros_like(template.atomic_numbers)))
    t = torch.full((len(state),), 0.3)
    with_classes = model.predict(state, t)
    lookups = []
    real = model.backbone.type_embedding.classes
    monkeypatch.setattr(model.backbone.type_embedding, "classes", lambda z: lookups.append(1) or real(z))
    model.predict(state, t)
    assert lookups == []  # the working classes were used
    without = model.backbone(state.replace(latents={}), t)  # from Z, through the lookup
    assert lookups == [1]
    assert torch.equal(with_classes.atomic_numbers, without.atomic_numbers)
    assert torch.equal(with_classes.frac_coords, without.frac_coords)
