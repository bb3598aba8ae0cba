"""train-predictor, predict and evaluate --judge through the CLI, on a user's own folder of structures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from crystalforge import write_structures
from crystalforge.cli.main import main
from crystalforge.testing import tiny_crystals


@pytest.fixture
def labelled_folder(tmp_path):
    """24 CIFs with a property table (volume per atom / 10) and one broken file."""
    folder = tmp_path / "cifs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        base = tiny_crystals()[i % 5]
        crystal = base.replace(lattice=base.lattice * rng.uniform(0.95, 1.15), properties={}, material_id=f"s{i}")
        write_structures([crystal], folder / f"s{i}.cif")
        rows.append({"material_id": f"s{i}", "vpa": crystal.volume / crystal.num_atoms / 10.0})
    table = tmp_path / "props.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["material_id", "vpa"])
        writer.writeheader()
        writer.writerows(rows)
    return folder, table


def test_train_predictor_then_predict_keeps_bad_records(tmp_path, labelled_folder, capsys):
    folder, table = labelled_folder
    out = tmp_path / "pred"
    args = ["train-predictor", str(folder), "--properties", str(table), "--property", "vpa", "--out", str(out),
            "--members", "1", "--epochs", "2", "--hidden", "8", "--layers", "1", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    assert (out / "predictor.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["vpa"]["n"] >= 2
    targets = tmp_path / "targets"
    targets.mkdir()
    write_structures(tiny_crystals()[:2], targets / "ok.extxyz")
    (targets / "broken.cif").write_text("data_x\n_cell_length_a nonsense\n")
    table_out = tmp_path / "p.csv"
    assert main(["predict", str(targets), "--predictor", str(out), "--out", str(table_out)]) == 0
    with table_out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert sum(1 for r in rows if r["error"]) == 1 and all(r["vpa"] for r in rows if not r["error"])
    assert all(float(r["vpa_std"]) > 0 for r in rows if not r["error"])
    capsys.readouterr()
    assert main(["predict", str(targets), "--predictor", str(tmp_path / "nope")]) == 2
    assert "unknown predictor" in capsys.readouterr().err


def test_baseline_judge_scores_targets(tmp_path, labelled_folder, capsys):
    folder, table = labelled_folder
    judge = tmp_path / "judge"
    args = ["train-predictor", str(folder), "--properties", str(table), "--property", "vpa", "--baseline",
            "--out", str(judge)]  # fmt: skip
    assert main(args) == 0
    assert (judge / "vpa.gbm").is_file()
    report_dir = tmp_path / "eval"
    assert main(["evaluate", str(folder), "--reference", "none", "--train", "none", "--target", "vpa=0..100",
                 "--judge", str(judge), "--out", str(report_dir)]) in (0, 1)  # fmt: skip

    def rate(report: dict) -> float:
        found = [v for k, v in _flatten(report) if k == "target_success_rate"]
        assert len(found) == 1
        return float(found[0])

    inside = rate(json.loads((report_dir / "summary.json").read_text()))
    assert inside > 50  # every structure's judged value (about 1.5–3) is in the window
    main(["evaluate", str(folder), "--reference", "none", "--train", "none", "--target", "vpa=50..100",
          "--judge", str(judge), "--out", str(report_dir)])  # fmt: skip
    assert rate(json.loads((report_dir / "summary.json").read_text())) == 0.0
    assert main(["evaluate", str(folder), "--reference", "none", "--train", "none", "--target", "zz=0..1",
                 "--judge", str(judge)]) == 2  # fmt: skip
    assert "cannot score 'zz'" in capsys.readouterr().err


def test_predictor_names_are_not_generators(capsys):
    assert main(["generate", "--model", "nonexistent-model", "-n", "1", "--out", "/tmp/never"]) == 2
    assert "unknown model" in capsys.readouterr().err


def _flatten(value, key=None):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v, key)
    else:
        yield key, value
