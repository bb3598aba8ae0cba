"""Truthful failures: a missing optional package stops a command before any work, naming the extra."""

from __future__ import annotations

import sys

import pytest

from crystalforge import write_structures
from crystalforge.cli.main import main
from crystalforge.testing import tiny_crystals


def test_evaluate_relax_without_chgnet_is_an_error_not_zero_percent(tmp_path, monkeypatch, capsys):
    path = write_structures(tiny_crystals()[1:3], tmp_path / "s.extxyz")
    out = tmp_path / "eval"
    monkeypatch.setitem(sys.modules, "chgnet", None)  # as if the relax extra were not installed
    code = main(["evaluate", str(path), "--reference", "none", "--relax", "chgnet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "crystalforge[relax]" in err and "chgnet" in err and "S.U.N." not in err
    assert not (out / "summary.json").exists()  # nothing was evaluated, nothing written


def test_train_without_lightning_names_the_extra(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    monkeypatch.setitem(sys.modules, "lightning", None)
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "crystalforge[train]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_generate_condition_reaches_the_model_and_unknown_targets_are_refused(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "--model", "perov_5-dng", "-n", "2", "--steps", "2", "--condition", "band_gap=1.5",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot be conditioned on ['band_gap']" in err and "unconditional" in err
    assert not (out / "run.json").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--condition", "band_gap", "--out", str(out)])


def test_the_cli_offers_every_route_steering_names():
    from crystalforge import api
    from crystalforge.cli.generate import ROUTES as OFFERED
    from crystalforge.sampling.steering import ROUTES, Steering

    assert set(OFFERED) == set(ROUTES)
    window = api.parse_target("band_gap=1..2")
    for route in OFFERED:
        Steering(route=route, targets=(window,))  # every offered route is accepted
