"""Composition targeting: allowed elements (guidance), fixed composition (constraint), CSP enumeration."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, symbol_to_z
from crystalforge.core.extras import MissingDependencyError
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import FieldOutputs, SamplePlan, SamplerConfig
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.composition import (
    AllowedElements,
    FixedComposition,
    chemical_system_mask,
    composition_template,
    enumerate_compositions,
    formula_string,
    in_chemical_system,
    parse_elements,
    type_vocabulary,
)
from crystalforge.sampling.samplers import iterate, sample
from crystalforge.sampling.templates import template_from_num_atoms
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)
NA, CL = symbol_to_z("Na"), symbol_to_z("Cl")
CONFIG = SamplerConfig(steps=5, corrector_steps=1)


_MODELS: dict[tuple[str, str], object] = {}


def _model(kind: str = "flow", task: str = "dng"):
    key = (kind, task)
    if key not in _MODELS:
        torch.manual_seed(0)
        config = ModelConfig(kind=kind, task=task, backbone=TINY)
        _MODELS[key] = build_model(config, compute_dataset_stats(tiny_crystals())).eval()
    return _MODELS[key]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- element sets --------------------------------------------------------------------------------
def test_parse_elements_forms_and_errors():
    li_p_s = (3, 15, 16)
    for text in ("Li,P,S", "Li-P-S", "Li P S", " li, p ,s ", "Li-P-S-Li"):
        assert parse_elements(text) == li_p_s
    assert parse_elements(["Li", 15, "S"]) == li_p_s
    with pytest.raises(ValueError, match=r"unknown element\(s\) 'Xx', 'Q2'"):
        parse_elements("Li,Xx,Q2")
    with pytest.raises(ValueError, match="unknown element"):
        parse_elements([3, 200])
    with pytest.raises(ValueError, match="no elements"):
        parse_elements(" , ")


def test_chemical_system_filters():
    assert in_chemical_system([3, 3, 16], "Li-P-S") and not in_chemical_system([3, 3, 16], "Li-P-S", require_all=True)
    assert in_chemical_system(torch.tensor([3, 15, 16, 16]), "Li,P,S", require_all=True)
    assert not in_chemical_system(tiny_crystals()[2], "Na")  # NaCl
    batch = CrystalBatch.collate(tiny_crystals()[1:4], dtype=torch.float32)  # Si2, Na4Cl4, BaTiO3
    assert chemical_system_mask(batch, "Na,Cl,Si").tolist() == [True, True, False]
    assert chemical_system_mask(batch, "Na,Cl,Si", require_all=True).tolist() == [False, False, False]
    assert chemical_system_mask(batch, "Cl,Na", require_all=True).tolist() == [False, True, False]


# ---- DNG: allowed elements -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_allowed_elements_restricts_generated_types(kind):
    model = _model(kind)
    template = template_from_num_atoms([6] * 6)
    plain = sample(model, template, CONFIG, generator=_gen(0))
    assert set(plain.atomic_numbers.tolist()) - {NA, CL}  # the untrained model uses other elements too
    plan = SamplePlan(CONFIG, guidance=(AllowedElements.for_model(model, "Na,Cl"),))
    for seed in range(3):
        out = sample(model, template, plan, generator=_gen(seed))
        out.validate()
        assert set(out.atomic_numbers.tolist()) <= {NA, CL}
        assert chemical_system_mask(out, "Na-Cl").all()
        assert all(in_chemical_system(c, "Na-Cl") for c in out.split())


def test_allowed_elements_errors():
    model = _model("flow")
    with pytest.raises(ValueError, match=r"Li, P are not in the model's type vocabulary"):
        AllowedElements.for_model(model, "Li,P,Na")
    with pytest.raises(ValueError, match="unknown element"):
        AllowedElements.for_model(model, "Na,Xx")
    with pytest.raises(ValueError, match="CSP"):
        AllowedElements.for_model(_model("flow", "csp"), "Na,Cl")
    guidance = AllowedElements("Na", type_vocabulary(model))
    state = model.sample_prior(template_from_num_atoms([2]))
    with pytest.raises(ValueError, match=r"expected type logits \[N, 9\]"):
        guidance(lambda s, t: FieldOutputs(atomic_numbers=torch.zeros(2, 4)), state, torch.zeros(1))


# ---- DNG: fixed composition ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("reveal", ["schedule", "immediate"])
def test_fixed_composition_is_exact(kind, reveal):
    model = _model(kind)
    template = composition_template(["NaCl", "Na2Cl2", "BaTiO3", {"Na": 1, "Cl": 3}])
    plan = SamplePlan(CONFIG, constraints=(FixedComposition.for_model(model, reveal=reveal),))
    for seed in range(2):
        steps = list(iterate(model, template, plan, generator=_gen(seed)))
        masked = []
        for step in steps:
            z = step.state.atomic_numbers
            masked.append(int((z == MASK_Z).sum()))
            assert bool(((z == template.atomic_numbers) | (z == MASK_Z)).all())  # revealed atoms: the template's
        final = steps[-1].state
        final.validate()
        assert torch.equal(final.atomic_numbers, template.atomic_numbers)
        assert torch.equal(final.latents["atomic_numbers"], model.processes["atomic_numbers"].encode(final))
        if reveal == "schedule":  # types appear as the process reveals atoms, as in training
            assert masked[0] > 0 and masked[-1] == 0
        else:
            assert masked == [0] * len(steps)


def test_fixed_composition_with_free_atoms_and_allowed_elements():
    model = _model("flow")
    template = composition_template(["Na2Cl2", "Ba2"])
    z = template.atomic_numbers.clone()
    free = torch.tensor([False, False, True, True, False, True])  # Na Na [?] [?] | Ba [?]
    template = template.replace(atomic_numbers=torch.where(free, torch.full_like(z, MASK_Z), z))
    plan = SamplePlan(
        CONFIG,
        guidance=(AllowedElements.for_model(model, "Ti,O"),),
        constraints=(FixedComposition.for_model(model),),
    )
    out = sample(model, template, plan, generator=_gen(1))
    assert torch.equal(out.atomic_numbers[~free], z[~free])
    assert set(out.atomic_numbers[free].tolist()) <= {symbol_to_z("Ti"), symbol_to_z("O")}


def test_fixed_composition_errors():
    model = _model("flow")
    constraint = FixedComposition.for_model(model)
    with pytest.raises(ValueError, match="gives no atom types"):
        sample(model, template_from_num_atoms([3]), SamplePlan(CONFIG, constraints=(constraint,)))
    with pytest.raises(ValueError, match="Li are not in the model's type vocabulary"):
        sample(model, composition_template(["LiCl"]), SamplePlan(CONFIG, constraints=(constraint,)))
    with pytest.raises(ValueError, match="CSP"):
        FixedComposition.for_model(_model("flow", "csp"))
    with pytest.raises(ValueError, match="reveal"):
        FixedComposition(type_vocabulary(model), reveal="later")


def test_composition_template_and_formulas():
    template = composition_template(["Li6P2S8", {"Li": 3, "P": 1, "S": 4}, {3: 2, 16: 1}])
    assert template.num_atoms.tolist() == [16, 8, 3]
    assert template.atomic_numbers[:8].tolist() == [3] * 6 + [15] * 2
    assert formula_string({"Li": 3, "P": 1, "S": 4}) == "Li3PS4"
    with pytest.raises(ValueError, match="unknown element"):
        composition_template([{"Xx": 2}])


# ---- CSP: enumeration ----------------------------------------------------------------------------
def test_enumerate_li_p_s():
    pytest.importorskip("smact")
    found = enumerate_compositions("Li-P-S", max_atoms=20)
    assert found == enumerate_compositions(["S", "P", "Li"], max_atoms=20)  # deterministic, order-free
    assert {"Li": 3, "P": 1, "S": 4} in found and {"Li": 6, "P": 2, "S": 8} in found  # Li3PS4, Z = 1, 2
    assert {"Li": 9, "P": 3, "S": 12} not in found  # 24 atoms
    assert {"Li": 6, "P": 1, "S": 1} not in found  # Li6PS: +6 cannot be balanced by P(≥ −3) + S(≥ −2)
    # SMACT's lists allow P+ with S2−, so LiPS counts as balanced; hand-picked states exclude it
    assert {"Li": 1, "P": 1, "S": 1} in found
    strict = enumerate_compositions("Li-P-S", oxidation_states={"Li": [1], "P": [5, -3], "S": [-2]})
    assert {"Li": 3, "P": 1, "S": 4} in strict and {"Li": 1, "P": 1, "S": 1} not in strict
    assert all(sum(c.values()) <= 20 and set(c) == {"Li", "P", "S"} for c in found)
    assert len({tuple(c.items()) for c in found}) == len(found) and all(list(c) == ["Li", "P", "S"] for c in found)
    reduced = enumerate_compositions("Li-P-S", multiples=False)
    assert all(math.gcd(*c.values()) == 1 for c in reduced) and {"Li": 6, "P": 2, "S": 8} not in reduced
    everything = enumerate_compositions("Li-P-S", charge_balanced=False)
    assert {"Li": 6, "P": 1, "S": 1} in everything and len(everything) > len(found)
    assert all(c in everything for c in found)


def test_enumerate_subsets_truncation_and_errors(caplog):
    pytest.importorskip("smact")
    found = enumerate_compositions("Li,S", min_elements=1, max_atoms=6)
    assert found[:3] == [{"Li": 1}, {"Li": 2}, {"Li": 3}] and {"S": 1} in found
    assert {"Li": 2, "S": 1} in found and {"Li": 4, "S": 2} in found and {"Li": 3, "S": 1} not in found
    with caplog.at_level(logging.WARNING):
        first = enumerate_compositions("Li-P-S", max_formulas=2, multiples=False)
    assert len(first) == 2 and "keeping 2 of" in caplog.text
    for kwargs, match in (
        ({"min_elements": 4}, "min_elements"),
        ({"max_atoms": 2}, "cannot hold 3"),
        ({"oxidation_states": "bogus"}, "unknown oxidation-state list"),
        ({"oxidation_states": {"Li": [1], "S": [-2]}}, "no entry for P"),
    ):
        with pytest.raises(ValueError, match=match):
            enumerate_compositions("Li-P-S", **kwargs)


def test_enumerate_names_the_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "smact", None)  # import smact now fails
    with pytest.raises(MissingDependencyError, match="crystalforge\\[evaluation\\]"):
        enumerate_compositions("Li-P-S")
    by_hand = enumerate_compositions("Na-Cl", oxidation_states={"Na": [1], "Cl": [-1]}, max_atoms=4)
    assert by_hand == [{"Na": 1, "Cl": 1}, {"Na": 2, "Cl": 2}]
