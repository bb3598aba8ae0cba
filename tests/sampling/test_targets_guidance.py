"""Property targets (parsing, the hit-probability objective) and predictor-gradient guidance."""

from __future__ import annotations

import math

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.guidance import PredictorGradient
from crystalforge.sampling.samplers import sample
from crystalforge.sampling.targets import (
    PropertyTarget,
    log_hit_probability,
    objective,
    parse_target,
    parse_targets,
)
from crystalforge.sampling.templates import template_from_compositions
from crystalforge.testing import tiny_crystals
from tests.sampling.fakes import VolumePredictor

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("band_gap=2.0", 1.75, 2.25),
        ("band_gap=2±0.5", 1.5, 2.5),
        ("band_gap=2+-0.5", 1.5, 2.5),
        ("band_gap=1.5..2.5", 1.5, 2.5),
        ("formation_energy_per_atom<-1", None, -1.0),
        ("formation_energy_per_atom <= -1e0", None, -1.0),
        ("e_above_hull>0.1", 0.1, None),
        ("spacegroup.number>=3", 3.0, None),
    ],
)
def test_parse_target(text, low, high):
    t = parse_target(text)
    assert (t.low, t.high) == (low, high)
    assert parse_target(str(t)) == t  # the printed form reads back


@pytest.mark.parametrize("text", ["band_gap", "band_gap=abc", "=2", "band_gap=3..1", "band_gap~2"])
def test_bad_targets_are_refused(text):
    with pytest.raises(ValueError, match=r"cannot read target|empty window"):
        parse_target(text)


def test_one_window_per_property_and_mapping_form():
    with pytest.raises(ValueError, match="more than once"):
        parse_targets(["band_gap>1", "band_gap<3"])
    assert parse_targets({"band_gap": 2.0}, tolerance=0.5) == [PropertyTarget("band_gap", 1.5, 2.5)]
    assert PropertyTarget("x", 0.0, 1.0).contains(1.0) and not PropertyTarget("x", 0.0, 1.0).contains(math.nan)


def test_hit_probability_matches_the_normal_cdf_and_stays_finite():
    def cdf(x: torch.Tensor) -> torch.Tensor:  # accurate in both tails
        return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))

    mean = torch.tensor([-3.0, 0.2, 1.0, 4.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 0.3], dtype=torch.float64)
    window = PropertyTarget("x", 0.0, 1.0)
    expected = torch.log(cdf((1.0 - mean) / std) - cdf((0.0 - mean) / std))
    below_window = torch.tensor([-20.0], dtype=torch.float64)  # Φ(b') − Φ(a') with both near 1
    torch.testing.assert_close(
        log_hit_probability(below_window, torch.ones(1, dtype=torch.float64), window),
        torch.log(cdf(below_window - 0.0) - cdf(below_window - 1.0)),
    )
    torch.testing.assert_close(log_hit_probability(mean, std, window), expected)
    far = log_hit_probability(
        torch.tensor([60.0, -60.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64), window
    )
    assert torch.isfinite(far).all() and (far < -1000).all()
    below = log_hit_probability(mean, std, PropertyTarget("x", None, 1.0))
    torch.testing.assert_close(below, torch.log(cdf((1.0 - mean) / std)))


def test_objective_sums_over_targets_and_names_unknown_properties():
    mean = torch.tensor([[0.5, 2.0]])
    std = torch.ones(1, 2)
    targets = [PropertyTarget("a", 0.0, 1.0), PropertyTarget("b", 1.0, None)]
    j = objective(mean, std, ("a", "b"), targets)
    parts = [log_hit_probability(mean[:, k], std[:, k], t) for k, t in enumerate(targets)]
    torch.testing.assert_close(j, parts[0] + parts[1])
    with pytest.raises(KeyError, match="no 'c'"):
        objective(mean, std, ("a", "b"), [PropertyTarget("c", 0.0, None)])


def _volumes(model, plan: SamplePlan, seed: int) -> torch.Tensor:
    crystals = tiny_crystals()
    template = template_from_compositions([c.atomic_numbers.tolist() for c in crystals] * 4)
    out = sample(model, template, plan, generator=torch.Generator().manual_seed(seed))
    return (torch.linalg.det(out.lattice).abs() / out.num_atoms).to(torch.float64)


def test_gradient_guidance_moves_samples_towards_the_window():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    model.eval()
    target = [PropertyTarget("vpa", 60.0, None)]
    plain = _volumes(model, SamplePlan(SamplerConfig(steps=8)), 0)
    guide = PredictorGradient(model, VolumePredictor(), target, scale=3.0, start=0.0)
    guided = _volumes(model, SamplePlan(SamplerConfig(steps=8), guidance=(guide,)), 0)
    assert guided.mean() > plain.mean() * 1.2
    assert guide.last_objective is not None and guide.settings()["targets"] == ["vpa>=60"]
    off = PredictorGradient(model, VolumePredictor(), target, scale=0.0)
    torch.testing.assert_close(_volumes(model, SamplePlan(SamplerConfig(steps=8), guidance=(off,)), 0), plain)


def test_gradient_guidance_refuses_what_it_cannot_do():
    stats = compute_dataset_stats(tiny_crystals())
    diffusion = build_model(ModelConfig(kind="diffusion", task="csp", backbone=TINY), stats)
    with pytest.raises(ValueError, match="flow"):
        PredictorGradient(diffusion, VolumePredictor(), [PropertyTarget("vpa", 1.0, None)])
    flow = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY), stats)
    with pytest.raises(KeyError, match="band_gap"):
        PredictorGradient(flow, VolumePredictor(), [PropertyTarget("band_gap", 1.0, None)])


class PartlyBlindPredictor(VolumePredictor):
    """NaN for the first crystal of every batch (as the GNN gives for a cell too thin to search)."""

    def __call__(self, batch: CrystalBatch, t=None, type_weights=None):
        mean, std = super().__call__(batch, t)
        blind = torch.zeros_like(mean)
        blind[0] = float("nan")
        return mean + blind, std


def test_gradient_guidance_ignores_crystals_the_predictor_cannot_score():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    model.eval()
    guide = PredictorGradient(model, PartlyBlindPredictor(), [PropertyTarget("vpa", 60.0, None)], scale=3.0, start=0.0)
    volumes = _volumes(model, SamplePlan(SamplerConfig(steps=6), guidance=(guide,)), 0)
    assert torch.isfinite(volumes).all()
    assert guide.last_objective is not None
    assert torch.isnan(guide.last_objective[0]) and torch.isfinite(guide.last_objective[1:]).all()


class SodiumPredictor:
    """'na' = the fraction of (soft) types that are sodium: differentiable in the type weights."""

    properties = ("na",)
    time_conditioned = False

    def __call__(self, batch: CrystalBatch, t=None, type_weights=None):
        w = type_weights if type_weights is not None else torch.nn.functional.one_hot(batch.atomic_numbers, 119)
        na = torch.zeros(batch.num_crystals, dtype=torch.float64).index_add(0, batch.crystal_idx, w[:, 11].double())
        frac = na / batch.num_atoms.double()
        return frac[:, None], torch.full_like(frac, 0.1)[:, None]


def _sodium(model, plan: SamplePlan, seeds=range(3)) -> float:
    from crystalforge.sampling.templates import template_from_num_atoms

    total = []
    for seed in seeds:
        out = sample(model, template_from_num_atoms([4] * 16), plan, generator=torch.Generator().manual_seed(seed))
        total.append((out.atomic_numbers == 11).double().mean())
    return float(torch.stack(total).mean())


def test_type_guidance_steers_what_a_de_novo_model_reveals():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="flow", task="dng", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    model.eval()
    config = SamplerConfig(steps=6)
    plain = _sodium(model, SamplePlan(config))
    guide = PredictorGradient(model, SodiumPredictor(), [PropertyTarget("na", 0.9, None)], scale=0.0, type_scale=5.0)
    steered = _sodium(model, SamplePlan(config, guidance=(guide,)))
    assert steered > plain + 0.3
    assert guide.settings()["type_scale"] == 5.0
    csp = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    assert PredictorGradient(csp, SodiumPredictor(), [PropertyTarget("na", 0.9, None)]).type_scale == 0.0
