"""``csp --system`` and ``generate --composition`` with a DNG model, from the command line."""

from __future__ import annotations

import pytest

from crystalforge import read_structures
from crystalforge.cli.main import build_parser, main


def test_csp_system_options_parse():
    args = build_parser().parse_args(["csp", "--model", "mp_20-csp", "--system", "Li-P-S", "--out", "x"])
    assert (args.system, args.max_atoms, args.max_formulas, args.charge_balanced) == ("Li-P-S", 20, None, True)
    words = ["csp", "--system", "Li,P,S", "--max-atoms", "12", "--max-formulas", "3", "--k", "2", "--no-charge-balance"]
    args = build_parser().parse_args([*words, "--out", "x"])
    assert (args.system, args.max_atoms, args.max_formulas, args.k, args.charge_balanced) == ("Li,P,S", 12, 3, 2, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["csp", "--system", "Li-S", "--max-atoms", "many", "--out", "x"])


def test_csp_system_writes_one_prediction_per_composition(tmp_path, one_thread):
    out = tmp_path / "lis"
    words = ["csp", "--model", "mp_20-csp", "--system", "Li-S", "--max-atoms", "3", "--no-charge-balance"]
    assert main([*words, "--k", "2", "--steps", "10", "--out", str(out)]) == 0
    names = [c.material_id for c in read_structures(out / "samples.extxyz")]
    assert names == ["LiS_0", "Li2S_0", "LiS2_0", "LiS_1", "Li2S_1", "LiS2_1"]
    assert (out / "cif" / "Li2S_1.cif").exists()


def test_csp_system_outside_the_vocabulary_is_a_clean_error(tmp_path, capsys, one_thread):
    assert main(["csp", "--model", "mp_20-csp", "--system", "Li-P-Ar", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Ar" in err and "mp_20-csp" in err and "Traceback" not in err
    assert main(["csp", "--model", "mp_20-csp", "--system", "Li-Q", "--out", str(tmp_path / "y")]) == 2
    assert "unknown element(s) 'Q'" in capsys.readouterr().err


def test_generate_dng_with_composition(tmp_path, capsys, one_thread):
    out = tmp_path / "li3ps4"
    words = ["generate", "--model", "mp_20-dng", "--composition", "Li3PS4", "-n", "2", "--steps", "2"]
    assert main([*words, "--out", str(out)]) == 0
    crystals = read_structures(out / "samples.extxyz")
    assert [sorted(c.atomic_numbers.tolist()) for c in crystals] == [[3, 3, 3, 15, 16, 16, 16, 16]] * 2
    assert main([*words, "--elements", "Li,S", "--out", str(tmp_path / "x")]) == 2
    assert "has element(s) P outside the allowed set Li,S" in capsys.readouterr().err
