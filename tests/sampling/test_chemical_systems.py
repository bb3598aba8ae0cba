"""Chemical-system and fixed-composition jobs: system → CSP jobs, vocabulary refusals, DNG + composition."""

from __future__ import annotations

import json

import pytest
import torch

from crystalforge import api
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling import jobs as jobs_module
from crystalforge.sampling.composition import FixedComposition, enumerate_compositions, formula_string
from crystalforge.sampling.jobs import (
    composition_plan,
    generation_jobs,
    model_vocabulary,
    prediction_jobs,
    system_formulas,
)
from crystalforge.sampling.runner import jobs_template
from crystalforge.sampling.samplers import sample
from crystalforge.sampling.templates import parse_formula
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)
CONFIG = SamplerConfig(steps=4, corrector_steps=1)
_MODELS: dict[str, object] = {}


def _tiny(task: str):
    """A tiny untrained flow model over the elements of ``tiny_crystals`` (Po, Si, Na, Cl, O, Ti, Ba, C)."""
    if task not in _MODELS:
        torch.manual_seed(0)
        config = ModelConfig(kind="flow", task=task, backbone=TINY)
        _MODELS[task] = build_model(config, compute_dataset_stats(tiny_crystals())).eval()
    return _MODELS[task]


# ---- CSP within a chemical system --------------------------------------------------------------------
def test_system_enumeration_becomes_csp_jobs():
    model = _tiny("csp")
    formulas = system_formulas(model, "Cl-Na", max_atoms=4, charge_balanced=False)
    assert formulas == ["NaCl", "Na2Cl2", "Na2Cl", "NaCl2", "Na3Cl", "NaCl3"]  # by size, multiples follow
    jobs = prediction_jobs(model, [], system="Na,Cl", max_atoms=4, charge_balanced=False, k=2, name="tiny")
    assert [j.name for j in jobs[:7]] == [f"{f}_0" for f in formulas] + ["NaCl_1"]  # round by round
    assert len(jobs) == 2 * len(formulas)
    for job in jobs:
        assert sorted(job.composition) == sorted(parse_formula(job.name.rsplit("_", 1)[0]))
    firsts = system_formulas(model, "Na-Cl", max_atoms=4, max_formulas=2, charge_balanced=False)
    assert firsts == ["NaCl", "Na2Cl2", "Na2Cl"]  # two reduced formulas, with their multiples
    with_formula = prediction_jobs(
        model, [], formulas=["BaTiO3"], system="Na-Cl", max_atoms=4, max_formulas=1, charge_balanced=False
    )
    assert [j.name for j in with_formula] == ["BaTiO3", "NaCl", "Na2Cl2"]


def test_system_charge_balance_follows_enumeration():
    pytest.importorskip("smact")
    model = _tiny("csp")
    balanced = system_formulas(model, "Na-Cl", max_atoms=4)
    assert balanced == [formula_string(c) for c in enumerate_compositions("Na-Cl", max_atoms=4)]
    assert "NaCl" in balanced and "Na3Cl" not in balanced


def test_system_refusals_name_the_problem(monkeypatch):
    model = _tiny("csp")
    with pytest.raises(ValueError, match=r"chemical system Na-Li-K: element\(s\) Li, K are not in the vocabulary "
                       r"of model tiny-csp"):  # fmt: skip
        system_formulas(model, "Na-Li-K", charge_balanced=False, name="tiny-csp")
    with pytest.raises(ValueError, match=r"unknown element\(s\) 'Xx'"):
        system_formulas(model, "Na-Xx")
    with pytest.raises(ValueError, match="max_formulas must be >= 1"):
        system_formulas(model, "Na-Cl", max_formulas=0, charge_balanced=False)
    with pytest.raises(ValueError, match="cannot hold 2 different elements"):
        system_formulas(model, "Na-Cl", max_atoms=1, charge_balanced=False)
    monkeypatch.setattr(jobs_module, "enumerate_compositions", lambda *a, **k: [])
    with pytest.raises(ValueError, match=r"no charge-balanced composition with at most 3 atoms .*charge balance"):
        system_formulas(model, "Na-Cl", max_atoms=3)
    with pytest.raises(ValueError, match="nothing to predict: give formulas, a reference or a chemical system"):
        prediction_jobs(model, [])
    with pytest.raises(ValueError, match=r"LiCl: element\(s\) Li are not in the vocabulary of model tiny"):
        prediction_jobs(model, [], formulas=["NaCl", "LiCl"], name="tiny")
    with pytest.raises(ValueError, match="CSP needs a CSP model"):
        prediction_jobs(_tiny("dng"), [], system="Na-Cl", charge_balanced=False)


def test_model_vocabulary_of_both_tasks():
    for task in ("csp", "dng"):
        vocab = model_vocabulary(_tiny(task))
        assert vocab is not None and set(vocab.atomic_numbers) == {84, 14, 11, 17, 8, 22, 56, 6}


# ---- DNG with a fixed composition ---------------------------------------------------------------------
def test_dng_composition_jobs_and_constraint_keep_the_stoichiometry():
    model = _tiny("dng")
    jobs = generation_jobs(model, None, n=3, composition="Na2Cl2", name="tiny")
    assert [j.composition for j in jobs] == [(11, 11, 17, 17)] * 3
    plan = composition_plan(model, SamplePlan(CONFIG), "Na2Cl2")
    assert [type(c) for c in plan.constraints] == [FixedComposition]
    template = jobs_template(jobs, torch.float32)
    for seed in range(2):
        out = sample(model, template, plan, generator=torch.Generator().manual_seed(seed))
        out.validate()
        assert torch.equal(out.atomic_numbers, template.atomic_numbers)
    csp = _tiny("csp")
    assert composition_plan(csp, SamplePlan(CONFIG), "Na2Cl2").constraints == ()  # CSP keeps types by itself
    assert composition_plan(model, SamplePlan(CONFIG), None).constraints == ()
    assert len(composition_plan(model, SamplePlan(CONFIG), "NaCl", elements="Na,Cl,O").constraints) == 1


def test_dng_composition_errors():
    model = _tiny("dng")
    with pytest.raises(ValueError, match="num_atoms=3 contradicts composition NaCl"):
        generation_jobs(model, None, n=1, composition="NaCl", num_atoms=3)
    with pytest.raises(ValueError, match=r"composition LiCl: element\(s\) Li are not in the vocabulary of model x"):
        generation_jobs(model, None, n=1, composition="LiCl", name="x")
    with pytest.raises(ValueError, match=r"composition NaCl has element\(s\) Cl outside the allowed set Na,O"):
        composition_plan(model, SamplePlan(CONFIG), "NaCl", elements="Na,O")
    with pytest.raises(ValueError, match="a CSP model needs --composition"):
        generation_jobs(_tiny("csp"), None, n=1, num_atoms=2)


# ---- through the API with the shipped mp_20 models ------------------------------------------------------
def test_api_csp_in_a_chemical_system(tmp_path):
    pytest.importorskip("smact")
    crystals = api.csp("mp_20-csp", system="Li-S", max_atoms=4, out=tmp_path / "lis", steps=10)
    expected = [formula_string(c) for c in enumerate_compositions("Li-S", max_atoms=4)]
    assert [c.material_id for c in crystals] == expected and expected
    for crystal in crystals:
        assert sorted(crystal.atomic_numbers.tolist()) == sorted(parse_formula(str(crystal.material_id)))
    with pytest.raises(ValueError, match=r"element\(s\) Ar are not in the vocabulary of model mp_20-csp"):
        api.csp("mp_20-csp", system="Li-P-Ar", out=tmp_path / "x")


def test_api_generate_dng_with_composition(tmp_path):
    out = tmp_path / "li3ps4"
    crystals = api.generate("mp_20-dng", composition="Li3PS4", n=3, out=out, steps=2)
    assert len(crystals) == 3
    assert all(sorted(c.atomic_numbers.tolist()) == [3, 3, 3, 15, 16, 16, 16, 16] for c in crystals)
    assert json.loads((out / "run.json").read_text())["steering"] == [{"type": "FixedComposition"}]
    steering = api.Steering(elements="Li,P,S")
    both = api.generate("mp_20-dng", composition="Li3PS4", n=2, out=tmp_path / "b", steps=2, steering=steering)
    assert all(sorted(c.atomic_numbers.tolist()) == [3, 3, 3, 15, 16, 16, 16, 16] for c in both)
    with pytest.raises(ValueError, match="outside the allowed set Li,S"):
        api.generate("mp_20-dng", composition="Li3PS4", n=1, out=tmp_path / "c", steering=api.Steering(elements="Li,S"))
