"""JointModel: losses for every (kind, task), sampling contracts, determinism, checkpoints."""

from __future__ import annotations

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.samplers import SamplerConfig, sample
from crystalforge.sampling.templates import parse_formula, template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=2, fourier_frequencies=3, time_dim=8)


def _model(kind: str, task: str):
    crystals = tiny_crystals()
    return build_model(ModelConfig(kind=kind, task=task, backbone=TINY), compute_dataset_stats(crystals)), crystals


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("task", ["csp", "dng"])
def test_loss_backward_and_sampling_contract(kind, task):
    model, crystals = _model(kind, task)
    batch = CrystalBatch.collate(crystals, dtype=torch.float32)
    out = model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "frac_coords", "lattice", "atomic_numbers"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    # every generated field's loss reaches its own head
    heads = {"frac_coords": model.backbone.coord_edge_out, "lattice": model.backbone.lattice_head}
    if task == "dng":
        heads["atomic_numbers"] = model.backbone.type_head
    for field, head in heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, field
    if task == "csp":
        assert float(out["atomic_numbers"]) == 0.0
        template = template_from_compositions([c.atomic_numbers.tolist() for c in crystals])
    else:
        template = template_from_num_atoms([c.num_atoms for c in crystals])
    config = SamplerConfig(steps=4, corrector_steps=1)
    result = sample(model, template, config, generator=torch.Generator().manual_seed(1))
    result.validate()
    assert (result.atomic_numbers != MASK_Z).all()
    assert ((result.frac_coords >= 0) & (result.frac_coords < 1)).all()
    assert torch.linalg.det(result.lattice).gt(0).all()
    if task == "csp":
        assert torch.equal(result.atomic_numbers, template.atomic_numbers)
    else:
        allowed = set(compute_dataset_stats(crystals).elements)
        assert set(result.atomic_numbers.tolist()) <= allowed
    again = sample(model, template, config, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.frac_coords, result.frac_coords)


def test_heun_and_anti_annealing_change_the_flow_fields():
    model, crystals = _model("flow", "csp")
    assert model.velocity_fields == ("frac_coords", "lattice")
    template = template_from_compositions([c.atomic_numbers.tolist() for c in crystals])

    def run(config: SamplerConfig) -> CrystalBatch:
        out = sample(model, template, config, generator=torch.Generator().manual_seed(0))
        out.validate()
        return out

    plain = run(SamplerConfig(steps=3))
    for changed in (run(SamplerConfig(steps=3, heun=True)), run(SamplerConfig(steps=3, anti_annealing=5.0))):
        assert not torch.equal(changed.frac_coords, plain.frac_coords)
        assert not torch.equal(changed.lattice, plain.lattice)
    # s = 0 is plain Euler, the processes' default
    assert torch.equal(run(SamplerConfig(steps=3, anti_annealing=0.0)).frac_coords, plain.frac_coords)


def test_anti_annealing_per_field_touches_only_that_field():
    model, crystals = _model("flow", "csp")
    template = template_from_compositions([c.atomic_numbers.tolist() for c in crystals])

    def run(scale) -> CrystalBatch:
        return sample(
            model, template, SamplerConfig(steps=2, anti_annealing=scale), generator=torch.Generator().manual_seed(0)
        )

    # two steps: the scale 1 + s·t is 1 on the first (t = 0), so only the second step of the scaled
    # field differs, and the other field's second step sees the same state as plain Euler
    plain = run(None)
    coords = run({"frac_coords": 5.0})
    assert not torch.equal(coords.frac_coords, plain.frac_coords)
    assert torch.equal(coords.lattice, plain.lattice)
    lattice = run({"lattice": 5.0})
    assert torch.equal(lattice.frac_coords, plain.frac_coords)
    assert not torch.equal(lattice.lattice, plain.lattice)
    # a scale that would change nothing is refused: a misspelt field, the (discrete) types, diffusion
    for scale in ({"frac_coord": 5.0}, {"atomic_numbers": 5.0}):
        with pytest.raises(ValueError, match="unknown field"):
            run(scale)
    diffusion, _ = _model("diffusion", "csp")
    with pytest.raises(ValueError, match="no flow"):
        sample(diffusion, template, SamplerConfig(steps=2, anti_annealing=5.0))


def test_formula_parsing_and_template_errors():
    assert parse_formula("SrTiO3") == [38, 22, 8, 8, 8]
    with pytest.raises(ValueError, match="non-integer"):
        parse_formula("Fe0.5O")
    with pytest.raises(ValueError, match="cannot read formula"):
        parse_formula("Xx2")
    with pytest.raises(ValueError, match="num_atoms"):
        template_from_num_atoms([0, 2])


def test_model_needs_every_field():
    from crystalforge.generative.flow import TorusFlow
    from crystalforge.generative.joint import JointModel

    with pytest.raises(ValueError, match="no process for field"):
        JointModel(torch.nn.Identity(), {"frac_coords": TorusFlow()})


def test_time_power_draws_training_times_towards_the_data():
    crystals = tiny_crystals()
    stats = compute_dataset_stats(crystals)
    batch = CrystalBatch.collate(crystals * 400, dtype=torch.float64)
    means = {}
    for power in (1.0, 3.0):
        model = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY, time_power=power), stats).double()
        seen = []
        real = model.predict

        def spy(state, t, real=real, seen=seen):
            seen.append(t)
            return real(state, t)

        model.predict = spy
        model.loss(batch, generator=torch.Generator().manual_seed(0))
        means[power] = float(seen[0].mean())
    # t = u^(1/a) has mean a / (a + 1): 1/2 for the uniform draw, 3/4 for a = 3 (n = 2,000)
    assert means[1.0] == pytest.approx(0.5, abs=0.02) and means[3.0] == pytest.approx(0.75, abs=0.02)
    with pytest.raises(ValueError, match="time_power"):
        build_model(ModelConfig(time_power=0.0, backbone=TINY), stats)


def test_the_last_step_opens_up_flat_cells_and_nothing_else():
    from crystalforge.core.lattice import volume_fraction

    model, crystals = _model("flow", "dng")
    template = template_from_num_atoms([c.num_atoms for c in crystals] * 4)

    def run(floor: float) -> CrystalBatch:
        return sample(
            model,
            template,
            SamplerConfig(steps=3, min_volume_fraction=floor),
            generator=torch.Generator().manual_seed(2),
        )

    raw, floored = run(0.0), run(0.95)
    before = volume_fraction(raw.lattice)
    assert bool((before < 0.95).any()) and bool((before >= 0.95).any())  # an untrained model: both kinds
    assert bool((volume_fraction(floored.lattice) >= 0.95 - 1e-6).all())
    kept = before >= 0.95
    assert torch.equal(floored.lattice[kept], raw.lattice[kept])
    assert torch.equal(floored.frac_coords, raw.frac_coords) and torch.equal(floored.atomic_numbers, raw.atomic_numbers)
    with pytest.raises(ValueError, match="min_volume_fraction"):
        SamplerConfig(min_volume_fraction=1.0)


def test_a_fixed_flat_lattice_is_kept_as_the_user_gave_it():
    from crystalforge.core.lattice import volume_fraction
    from crystalforge.generative.interfaces import SamplePlan
    from crystalforge.sampling.constraints import FixedLattice

    model, _ = _model("flow", "dng")
    fixed = FixedLattice.from_params([4.0, 5.0, 6.0], [90.0, 160.0, 90.0])  # monoclinic, V/abc = sin 160° = 0.34
    template = template_from_num_atoms([2, 3])
    plan = SamplePlan(SamplerConfig(steps=3), constraints=(fixed,))
    out = sample(model, template, plan, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(volume_fraction(out.lattice), torch.tensor(0.342, dtype=out.lattice.dtype), atol=1e-3)
