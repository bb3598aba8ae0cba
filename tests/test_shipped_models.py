"""The shipped checkpoints: listed, loadable offline, and they generate valid-looking crystals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crystalforge import api, read_structures
from crystalforge.cli.main import main
from crystalforge.evaluation.metrics.validity import structure_validity

SHIPPED = {
    "perov_5-csp",
    "perov_5-dng",
    "mp_20-csp",
    "mp_20-dng",
    "carbon_24-dng",
    "perov_5-csp-diffusion",
    "perov_5-dng-diffusion",
    "mp_20-csp-diffusion",
    "mp_20-dng-diffusion",
    "mp_20-cdvae",
    "perov_5-cdvae",
    "mp_20-gpt",
    "mp_20-matgan",
    "mp_20-substitution",
    "mp_20-random-symmetric",
    "perov_5-gpt",
    "perov_5-matgan",
    "perov_5-con-cdvae",
    "mp_20-con-cdvae",
    "perov_5-substitution",
    "perov_5-random-symmetric",
}
PREDICTORS = {"mp_20-properties", "perov_5-properties"}


def test_models_are_listed(capsys):
    from importlib import resources

    cards = api.list_models()
    assert set(cards) == SHIPPED | PREDICTORS
    assert all(resources.files("crystalforge.pretrained").joinpath(c["file"]).is_file() for c in cards.values())
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SHIPPED | PREDICTORS)


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_shipped_predictor_loads_matches_its_card_and_predicts(name):
    from crystalforge.predictors.shipped import load_predictor, shipped_predictors
    from crystalforge.testing import tiny_crystals

    assert set(shipped_predictors()) == PREDICTORS
    card = api.list_models()[name]
    ensemble = load_predictor(name)
    assert list(ensemble.properties) == card["properties"]
    assert sum(p.numel() for p in ensemble.members[0].parameters()) == card["training"]["parameters_per_member"]
    rows = api.predict_properties(tiny_crystals(), predictor=name)
    last = card["properties"][-1]
    assert all(np.isfinite(r[last]) and r[f"{last}_std"] > 0 for r in rows)
    with pytest.raises(ValueError, match="predictor"):
        api.load_model(name)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_model_loads_and_matches_its_card(name):
    model, config, stats, _ = api.load_model(name)
    card = api.list_models()[name]
    assert "+".join(model.tasks) == card["task"]
    assert card.get("family", "joint") == config.family
    assert getattr(config.model, "kind", config.family) == card["kind"]
    assert sum(p.numel() for p in model.parameters()) == card["training"]["parameters"]
    assert stats is not None


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_generation_with_shipped_models(tmp_path):
    dng = api.generate("perov_5-dng", n=3, out=tmp_path / "dng", steps=5, seed=0)
    assert len(dng) == 3
    assert all(c.num_atoms == 5 for c in dng)  # perov_5 cells always hold 5 atoms
    assert all(structure_validity(c).valid for c in dng)  # no overlapping atoms, a sane cell
    csp = api.csp("perov_5-csp", formulas=["SrTiO3"], k=2, out=tmp_path / "csp", steps=5)
    assert [c.material_id for c in csp] == ["SrTiO3_0", "SrTiO3_1"]
    assert all(sorted(c.atomic_numbers.tolist()) == [8, 8, 8, 22, 38] for c in csp)
    a = min(c.lengths.min() for c in csp)
    assert 2.5 < a < 6.0  # a perovskite-sized cell, not a collapsed or exploded one


@pytest.mark.usefixtures("one_thread")
def test_generate_and_csp_commands(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--model", "perov_5-dng", "-n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert f"wrote 2 structures to {out}" in capsys.readouterr().out
    assert len(read_structures(out / "samples.extxyz")) == 2
    out = tmp_path / "csp"
    assert main(["csp", "--model", "perov_5-csp", "--formula", "SrTiO3", "--steps", "2", "--out", str(out)]) == 0
    assert [c.material_id for c in read_structures(out / "samples.extxyz")] == ["SrTiO3"]
    assert main(["csp", "--model", "perov_5-dng", "--formula", "SrTiO3", "--out", str(tmp_path / "x")]) == 2
    assert "CSP needs a CSP model" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_anti_annealing_option(tmp_path, capsys):
    # two steps: the scale 1 + s·t is 1 at t = 0, so only the named field's second step differs
    args = ["csp", "--model", "perov_5-csp", "--formula", "SrTiO3", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a"), "--anti-annealing", "frac_coords=5"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    scaled, plain = (read_structures(tmp_path / d / "samples.extxyz")[0] for d in "ab")
    assert not np.allclose(scaled.frac_coords, plain.frac_coords)
    assert np.allclose(scaled.lattice, plain.lattice)
    assert main([*args, "--out", str(tmp_path / "c"), "--anti-annealing", "coords=5"]) == 2
    assert "unknown field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "d"), "--anti-annealing", "frac_coords=x"])


@pytest.mark.usefixtures("one_thread")
def test_card_default_anti_annealing(tmp_path, monkeypatch):
    cards = api.list_models()
    cards["perov_5-csp"]["default_anti_annealing"] = {"frac_coords": 5.0}
    from crystalforge.training import loading

    monkeypatch.setattr(loading, "list_models", lambda: cards)  # where shipped cards are read for loading

    def coords(**kwargs):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        return api.csp("perov_5-csp", formulas=["SrTiO3"], out=out, steps=2, **kwargs)[0].frac_coords

    card_default = coords()
    assert np.array_equal(card_default, coords(anti_annealing={"frac_coords": 5.0}))
    assert not np.allclose(card_default, coords(anti_annealing=0.0))  # an explicit 0 turns it off


@pytest.mark.usefixtures("one_thread")
def test_carbon_and_mp_20_models(tmp_path):
    carbon = api.generate("carbon_24-dng", n=3, out=tmp_path / "c", steps=3)
    assert all(set(c.atomic_numbers.tolist()) == {6} and 6 <= c.num_atoms <= 24 for c in carbon)
    (nacl,) = api.csp("mp_20-csp", formulas=["Na2Cl2"], out=tmp_path / "m", steps=3)
    assert sorted(nacl.atomic_numbers.tolist()) == [11, 11, 17, 17]
    assert 5.0 < nacl.volume / nacl.num_atoms < 80.0  # a solid's volume per atom, not a collapsed cell
    assert json.loads((tmp_path / "m" / "run.json").read_text())["sampler"]["anti_annealing"] == 5.0  # the card's
    mp = api.generate("mp_20-dng", n=2, out=tmp_path / "d", steps=5, seed=0)
    assert all(structure_validity(c).valid and 1 <= c.num_atoms <= 20 for c in mp)
