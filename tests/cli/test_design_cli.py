"""``crystalforge design``: flags and YAML agree, bad values and missing extras exit 2, a small run end to end."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from crystalforge.cli.design import spec_options
from crystalforge.cli.main import build_parser, main
from crystalforge.design.spec import load_spec
from crystalforge.io.files import read_structures

YAML = """\
model: perov_5-dng
targets: [band_gap=2.5±0.5, "formation_energy_per_atom<-1"]
elements: Li,Mn,O
motif: kagome:Mn
num_atoms: 6
budget: 300
relax_budget: 12
top: 4
train: none
novel_only: false
max_e_above_hull: 0.25
suspect_e_hull: -0.3
objectives:
  - {key: hull_e_above_hull, goal: min}
  - {key: predict_band_gap_std, goal: min, weight: 0.5, scale: 0.2}
ranking: score
workers: 2
out: runs/x
report: false
"""

FLAGS = [
    "design", "--model", "perov_5-dng", "--target", "band_gap=2.5±0.5", "--target", "formation_energy_per_atom<-1",
    "--elements", "Li,Mn,O", "--motif", "kagome:Mn", "--num-atoms", "6", "--budget", "300", "--relax-budget", "12",
    "--top", "4", "--train", "none", "--keep-known", "--max-e-hull", "0.25", "--suspect-e-hull", "-0.3",
    "--objective", "hull_e_above_hull:min",
    "--objective", "predict_band_gap_std:min:0.5:0.2", "--ranking", "score", "--workers", "2", "--out", "runs/x",
    "--no-report",
]  # fmt: skip


def _options(argv: list[str]) -> dict[str, object]:
    return spec_options(build_parser().parse_args(argv))


def test_flags_and_yaml_give_the_same_spec(tmp_path):
    path = tmp_path / "design.yaml"
    path.write_text(YAML)
    from_yaml = load_spec(path)
    assert load_spec(None, _options(FLAGS)) == from_yaml
    assert load_spec(path, _options(["design", "--config", str(path)])) == from_yaml  # the config alone
    overridden = load_spec(path, _options(["design", "--config", str(path), "--budget", "500", "--top", "2"]))
    assert overridden == from_yaml.replace(budget=500, top=2)  # flags win, everything else from the file


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["design", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "crystalforge design --target band_gap=2.5±0.5 --elements Li,Mn,O" in out


def test_bad_values_exit_2_and_name_the_field(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["design", "--budget", "0", "--out", str(out)]) == 2
    assert "budget must be >= 1" in capsys.readouterr().err
    assert main(["design", "--target", "band_gap~2", "--out", str(out)]) == 2
    assert "targets" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("budget: lots\n")
    assert main(["design", "--config", str(config), "--out", str(out)]) == 2
    assert "budget: expected an integer" in capsys.readouterr().err
    assert main(["design", "--target", "band_gap=1..2"]) == 2  # no run folder anywhere
    assert "out is not set" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["design", "--objective", "hull_e_above_hull:lowest", "--out", str(out)])


@pytest.mark.parametrize(("flags", "module", "extra"), [(["--ray", "auto"], "ray", "ray"), ([], "chgnet", "relax")])
def test_a_missing_optional_package_is_exit_2_before_any_work(tmp_path, monkeypatch, capsys, flags, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    out = tmp_path / "run"
    code = main(["design", "--model", "perov_5-dng", "--budget", "4", "--train", "none", "--out", str(out), *flags])
    assert code == 2
    assert f"crystalforge[{extra}]" in capsys.readouterr().err
    assert not (out / "design.json").exists() and not (out / "generate").exists()


def test_a_small_run_end_to_end_and_its_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["design", "--model", "perov_5-dng", "--predictor", "perov_5-properties", "--target", "dir_gap=0..3",
            "--budget", "6", "--batch-size", "6", "--steps", "6", "--relax-budget", "2", "--top", "2",
            "--relaxer", "chgnet-static", "--train", "none", "--no-report", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"design {out}: 6 generated") and "2 relaxed" in summary
    meta = json.loads((out / "design.json").read_text())
    assert meta["spec"]["relaxer"] == "chgnet-static" and meta["funnel"]["relax"] == 2
    with (out / "top.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(meta["top"]) <= 2
    for row in rows:
        assert read_structures(out / row["cif"]) and float(row["predict_dir_gap_std"]) > 0
    assert main(argv) == 0  # a finished run resumes with nothing to do
    assert capsys.readouterr().out.splitlines()[0].split("[")[0] == summary.splitlines()[0].split("[")[0]
    assert main([*argv, "--steps", "7"]) == 2  # another setting: refused, naming it
    assert "steps: 6 before, 7 now" in capsys.readouterr().err
