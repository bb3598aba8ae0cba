"""Steered runs end to end: importance resampling, gradient route, element sets, motifs, records."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.io.files import read_structures
from crystalforge.predictors import PredictorEnsemble, PropertyGNN, PropertyGNNConfig
from crystalforge.registry import build_model
from crystalforge.sampling.importance import gumbel_top_k, importance_select
from crystalforge.sampling.jobs import dng_jobs
from crystalforge.sampling.steering import Steering, run_steered
from crystalforge.sampling.targets import PropertyTarget
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)


def test_gumbel_top_k_draws_without_replacement_in_proportion():
    logw = np.array([np.log(0.7), np.log(0.2), np.log(0.1), -np.inf])
    first = [gumbel_top_k(logw, 1, seed=s)[0] for s in range(4000)]
    freq = np.bincount(first, minlength=4) / len(first)
    np.testing.assert_allclose(freq[:3], [0.7, 0.2, 0.1], atol=0.03)
    assert freq[3] == 0
    both = gumbel_top_k(logw, 3, seed=1)
    assert sorted(both.tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="only 3 of 4"):
        gumbel_top_k(logw, 4)


def test_importance_select_prefers_high_objective_and_skips_nan():
    j = np.array([0.0, -50.0, np.nan, -1.0, -60.0])
    chosen = importance_select(j, 2, seed=0)
    assert sorted(chosen.tolist()) == [0, 3]
    with pytest.raises(ValueError, match="temperature"):
        importance_select(j, 1, temperature=0.0)


@pytest.fixture(scope="module")
def predictor_path(tmp_path_factory):
    torch.manual_seed(0)
    net = PropertyGNN(PropertyGNNConfig(properties=("p",), hidden=8, layers=1, radial=4, cutoff=4.0))
    path = tmp_path_factory.mktemp("pred") / "predictor.pt"
    PredictorEnsemble([net]).save(path)
    return path


def _setup(task: str = "dng"):
    torch.manual_seed(0)
    stats = compute_dataset_stats(tiny_crystals())
    model = build_model(ModelConfig(kind="flow", task=task, backbone=TINY), stats).eval()
    return model, stats


def _run(tmp_path, steering: Steering, n: int = 6, name: str = "out", num_atoms: int | None = None):
    model, stats = _setup()

    def make_jobs(count: int):
        return dng_jobs(count, num_atoms=num_atoms, stats=stats, seed=0)

    plan = SamplePlan(SamplerConfig(steps=4))
    return run_steered(model, make_jobs, n, tmp_path / name, steering, plan, seed=0, batch_size=8,
                       model_name="tiny")  # fmt: skip


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_importance_route_keeps_the_best_of_a_pool(tmp_path, predictor_path):
    targets = (PropertyTarget("p", 100.0, None),)  # far above every prediction: J orders the pool
    steering = Steering(targets=targets, predictor=str(predictor_path), route="importance", oversample=3,
                        temperature=0.05)  # fmt: skip
    kept = _run(tmp_path, steering)
    assert len(kept) == 6 and len({c.material_id for c in kept}) == 6
    pool = _rows(tmp_path / "out" / "pool_predictions.csv")
    assert len(pool) == 18 and sum(int(r["selected"]) for r in pool) == 6
    chosen = sorted(float(r["objective"]) for r in pool if r["selected"] == "1")
    others = sorted(float(r["objective"]) for r in pool if r["selected"] == "0")
    assert np.mean(chosen) > np.mean(others)  # low temperature: the kept ones are the better ones
    assert [c.material_id for c in read_structures(tmp_path / "out" / "samples.extxyz")] == [
        c.material_id for c in kept
    ]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["steering"]["targets"] == ["p>=100"] and run["pool"]["kept"] == 6
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == 6
    again = _run(tmp_path, steering)  # resumes: the same kept set
    assert [c.material_id for c in again] == [c.material_id for c in kept]


def test_gradient_route_writes_predictions_and_records_the_guidance(tmp_path, predictor_path):
    steering = Steering(targets=(PropertyTarget("p", 0.0, 1.0),), predictor=str(predictor_path), route="gradient",
                        guidance_scale=0.5)  # fmt: skip
    kept = _run(tmp_path, steering, n=4)
    assert len(kept) == 4
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["steering"][0]["type"] == "PredictorGradient"
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == 4


def test_elements_and_unknown_properties(tmp_path, predictor_path):
    kept = _run(tmp_path, Steering(elements="Na,Cl"), n=6)
    assert {int(z) for c in kept for z in c.atomic_numbers} <= {11, 17}
    with pytest.raises(KeyError, match="band_gap"):
        _run(tmp_path, Steering(targets=(PropertyTarget("band_gap", 1.0, None),), predictor=str(predictor_path)),
             name="bad")  # fmt: skip


def test_motif_too_small_templates_are_refused_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="num-atoms"):
        _run(tmp_path, Steering(motif="kagome:Na"), n=4, num_atoms=2)
    assert not (tmp_path / "out" / "chunks").exists()


def test_bad_steering_settings():
    with pytest.raises(ValueError, match="route"):
        Steering(route="magic")
    with pytest.raises(ValueError, match="oversample"):
        Steering(oversample=0)


def test_smc_route_resamples_during_sampling_and_writes_predictions(tmp_path, predictor_path):
    steering = Steering(targets=(PropertyTarget("p", 0.0, 1.0),), predictor=str(predictor_path), route="smc",
                        ess_threshold=1.0, guidance_start=0.0)  # fmt: skip
    kept = _run(tmp_path, steering, n=6, num_atoms=2)  # one group of six 2-atom crystals
    assert len(kept) == 6
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [r["type"] for r in run["steering"]] == ["SMCResampler"]
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == 6


def _conditioned_setup():
    torch.manual_seed(0)
    crystals = [c.replace(properties={"p": float(i)}) for i, c in enumerate(tiny_crystals())]
    stats = compute_dataset_stats(crystals)
    config = ModelConfig(kind="flow", task="dng", backbone=TINY, properties=("p",), categories=("space_group",))
    return build_model(config, stats).eval(), stats


def test_condition_route_conditions_on_the_window_centre_with_guidance(tmp_path, predictor_path):
    model, stats = _conditioned_setup()
    seen = []

    def make_jobs(count: int):
        return dng_jobs(count, stats=stats, seed=0, properties={"space_group": 225.0})

    steering = Steering(targets=(PropertyTarget("p", 1.0, 3.0),), predictor=str(predictor_path), route="condition",
                        guidance_scale=2.0)  # fmt: skip
    original = model.predict

    def spy(state, t):
        seen.append({k: (v.clone(), state.condition_mask[k].clone()) for k, v in state.properties.items()})
        return original(state, t)

    model.predict = spy
    plan = SamplePlan(SamplerConfig(steps=2))
    kept = run_steered(model, make_jobs, 3, tmp_path / "c", steering, plan, seed=0, batch_size=8, model_name="tiny")
    assert len(kept) == 3
    # two calls per step: the conditions visible (p = 2, the window centre; space group 225), then hidden
    visible, hidden = seen[0], seen[1]
    assert torch.all(visible["p"][0] == 2.0) and bool(visible["p"][1].all())
    assert torch.all(visible["space_group"][0] == 225.0) and bool(visible["space_group"][1].all())
    assert not bool(hidden["p"][1].any()) and not bool(hidden["space_group"][1].any())
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    assert run["steering"][0] == {"type": "ClassifierFreeGuidance",
                                  "settings": {"scale": 2.0, "conditions": ["p", "space_group"],
                                               "requires_grad": False}}  # fmt: skip


def test_condition_route_refusals(tmp_path, predictor_path):
    with pytest.raises(ValueError, match="needs a conditioned model"):
        _run(tmp_path, Steering(targets=(PropertyTarget("p", 0.0, 1.0),), predictor=str(predictor_path),
                                route="condition"))  # fmt: skip
    model, stats = _conditioned_setup()
    plan = SamplePlan(SamplerConfig(steps=2))
    one_sided = Steering(targets=(PropertyTarget("p", None, 1.0),), predictor=str(predictor_path), route="condition")
    with pytest.raises(ValueError, match="one-sided"):
        run_steered(model, lambda k: dng_jobs(k, stats=stats, seed=0), 2, tmp_path / "o", one_sided, plan)
    with pytest.raises(ValueError, match="unknown route"):
        Steering(route="condition+condition")
    with pytest.raises(ValueError, match="unknown route"):
        Steering(route="magic")
    for route in ("smc", "gradient", "gradient+importance"):
        with pytest.raises(ValueError, match="give at least one"):
            Steering(route=route)


def test_motif_runs_draw_sizes_at_least_the_motif_from_the_training_distribution(tmp_path):
    # tiny_crystals hold 1, 2, 8, 5 and 2 atoms: kagome's 3 sites leave 8 and 5
    kept = _run(tmp_path, Steering(motif="kagome:Na"), n=6)
    assert len(kept) == 6 and all(c.num_atoms >= 3 for c in kept)
    assert sorted(c.material_id for c in kept) == [f"gen_{i:05d}" for i in range(6)]
    assert {int(z) for c in kept for z in c.atomic_numbers[:3]} == {11}
