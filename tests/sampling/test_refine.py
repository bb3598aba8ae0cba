"""Refinement (SDEdit / FlowLLM): the sampler starts from the template's structure at ``start_time``."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from crystalforge import api
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.periodic import wrap_frac
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, last_state
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.io.files import write_structures
from crystalforge.registry import build_model
from crystalforge.sampling.refine import refine_jobs
from crystalforge.sampling.runner import jobs_template
from crystalforge.testing import tiny_crystals
from crystalforge.training.checkpoint import save_checkpoint

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)
CONFIG = ModelConfig(task="csp", backbone=TINY)


@pytest.fixture
def model_and_stats():
    stats = compute_dataset_stats(tiny_crystals())
    torch.manual_seed(0)
    return build_model(CONFIG, stats), stats


def _frac_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = wrap_frac(a - b + 0.5) - 0.5
    return d.norm(dim=-1)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_start_time_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="start_time"):
        SamplerConfig(start_time=bad)


def test_a_late_start_stays_near_the_proposal_and_a_prior_start_does_not(model_and_stats):
    model, _ = model_and_stats
    template = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    model = model.double()
    late = SamplePlan(SamplerConfig(steps=2, start_time=0.98))
    out = last_state(model.sample(template, late, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(out.atomic_numbers, template.atomic_numbers)  # CSP keeps the composition
    near = _frac_distance(out.frac_coords, template.frac_coords)
    prior = SamplePlan(SamplerConfig(steps=2))
    cold = last_state(model.sample(template, prior, generator=torch.Generator().manual_seed(1)))
    far = _frac_distance(cold.frac_coords, template.frac_coords)
    assert float(near.max()) < 0.1
    assert float(far.mean()) > 3 * float(near.mean())
    ratio = torch.linalg.det(out.lattice).abs() / torch.linalg.det(template.lattice).abs()
    assert torch.all((ratio > 0.7) & (ratio < 1.4))


def test_the_late_start_integrates_over_the_remaining_time_only(model_and_stats):
    model, _ = model_and_stats
    template = CrystalBatch.collate(tiny_crystals(), dtype=torch.float32)
    steps = list(model.sample(template, SamplePlan(SamplerConfig(steps=4, start_time=0.6))))
    assert len(steps) == 4
    np.testing.assert_allclose([s.t for s in steps], [0.7, 0.8, 0.9, 1.0], atol=1e-6)


def test_a_template_without_structures_cannot_be_refined(model_and_stats):
    model, _ = model_and_stats
    template = CrystalBatch.collate(tiny_crystals(), dtype=torch.float32)
    lattice = template.lattice.clone()
    lattice[1] = 0.0
    with pytest.raises(ValueError, match="crystal 1"):
        list(model.sample(template.replace(lattice=lattice), SamplePlan(SamplerConfig(steps=2, start_time=0.5))))


def test_refine_jobs_name_by_proposal_and_carry_the_start(model_and_stats):
    model, _ = model_and_stats
    crystals = tiny_crystals()
    jobs = refine_jobs(model, crystals, k=2)
    assert [j.name for j in jobs[:2]] == [f"{crystals[0].material_id}_0", f"{crystals[0].material_id}_1"]
    assert all(j.start is not None and j.composition == tuple(j.start.atomic_numbers.tolist()) for j in jobs)
    template = jobs_template(jobs[:2], torch.float32)
    np.testing.assert_allclose(template.lattice[0].numpy(), crystals[0].lattice, rtol=1e-6)
    with pytest.raises(ValueError, match="both named"):
        refine_jobs(model, [crystals[0], crystals[0]])


def test_api_refine_writes_a_resumable_run_named_by_proposal(model_and_stats, tmp_path):
    model, stats = model_and_stats
    path = save_checkpoint(
        tmp_path / "model.pt", family="joint", config={"model": asdict(CONFIG)}, weights=model.state_dict(),
        dataset_stats=stats.to_dict(), metrics={},
    )  # fmt: skip
    proposals = tmp_path / "proposals.extxyz"
    write_structures(tiny_crystals(), proposals)
    out = api.refine(path, proposals, out=tmp_path / "refined", start_time=0.9, steps=2)
    assert [c.material_id for c in out] == [c.material_id for c in tiny_crystals()]
    assert all(sorted(c.atomic_numbers) == sorted(p.atomic_numbers) for c, p in zip(out, tiny_crystals(), strict=True))
    again = api.refine(path, proposals, out=tmp_path / "refined", start_time=0.9, steps=2)
    assert all(a.allclose(b) for a, b in zip(out, again, strict=True))
    with pytest.raises(ValueError, match="start_time"):
        api.refine(path, proposals, out=tmp_path / "other", start_time=0.0)
