"""``crystalforge evaluate`` on small inputs: files written, bad records counted, CSP linking, errors."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from crystalforge import write_structures
from crystalforge.api import evaluate, read_samples
from crystalforge.cli.main import main
from crystalforge.core.crystal import Crystal
from crystalforge.io.files import crystal_to_cif
from crystalforge.testing import tiny_crystals


def _reference_csv(path, crystals):
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "formation_energy_per_atom", "cif"])
        for i, c in enumerate(crystals):
            writer.writerow([c.material_id, -0.1 * i, crystal_to_cif(c)])
    return path


def test_evaluate_folder_with_a_bad_file(tmp_path, capsys):
    crystals = tiny_crystals()
    folder = tmp_path / "samples"
    write_structures(crystals, folder / "all.extxyz")
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n")
    ref = _reference_csv(tmp_path / "ref.csv.gz", crystals)
    out = tmp_path / "eval"
    code = main(
        ["evaluate", str(folder), "--reference", str(ref), "--train", "none", "--no-coverage", "--out", str(out)]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == len(crystals) + 1
    assert summary["wdist_density"] >= 0.0
    assert "novelty" in summary["protocol"]["skipped"]
    rows = list(csv.DictReader((out / "per_structure.csv").open()))
    assert len(rows) == summary["n"]
    broken = [r for r in rows if r["source"].endswith("broken.cif")]
    assert broken
    assert broken[0]["failure"].startswith("unreadable")
    assert "Evaluation summary" in capsys.readouterr().out


def test_csv_samples_keep_file_order_and_bad_rows(tmp_path):
    crystals = tiny_crystals()[:3]
    path = tmp_path / "gen.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif"])
        writer.writerow([crystals[0].material_id, crystal_to_cif(crystals[0])])
        writer.writerow(["broken", "not a cif"])
        writer.writerow([crystals[2].material_id, crystal_to_cif(crystals[2])])
    samples = read_samples(path)
    assert [s.crystal is not None for s in samples] == [True, False, True]
    assert "row 1" in samples[1].source
    assert samples[1].error


def test_csp_files_named_by_reference_id(tmp_path):
    ref = tiny_crystals()[1:3]
    folder = tmp_path / "pred"
    rng = np.random.default_rng(1)
    for c in ref:
        for j in range(2):
            frac = c.frac_coords + (0 if j == 1 else rng.normal(0, 0.1, c.frac_coords.shape))
            write_structures([Crystal(c.atomic_numbers, frac, c.lattice)], folder / f"{c.material_id}_{j}.cif")
    report = evaluate(folder, reference=ref, task="csp", train=False)
    assert report["match_rate_k"] == 100.0
    assert report.details["csp_match"]["k"] == 2
    assert {r["reference_id"] for r in report.per_structure} == {c.material_id for c in ref}


def test_unknown_reference_is_a_clear_error(tmp_path, capsys):
    write_structures(tiny_crystals()[:1], tmp_path / "a.cif")
    assert main(["evaluate", str(tmp_path / "a.cif"), "--reference", "no_such_set"]) == 2
    assert "unknown reference 'no_such_set'" in capsys.readouterr().err


def test_csp_k_follows_prediction_numbers_and_unlinked_runs_fail(tmp_path):
    ref = tiny_crystals()[2:3]  # NaCl
    folder = tmp_path / "pred"
    rng = np.random.default_rng(0)
    c = ref[0]
    for j in range(11):  # only prediction 1 is exact; name order would put _10 second
        frac = c.frac_coords + (0 if j == 1 else rng.normal(0, 0.15, c.frac_coords.shape))
        write_structures([Crystal(c.atomic_numbers, frac, c.lattice)], folder / f"{c.material_id}_{j}.cif")
    report = evaluate(folder, reference=ref, task="csp", k=2)
    assert report["match_rate_k"] == 100.0
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in report.per_structure}
    assert rows[f"{c.material_id}_10.cif"]["csp_reason"] == "beyond k=2"
    write_structures(tiny_crystals()[:1], tmp_path / "other" / "x.cif")
    with pytest.raises(ValueError, match="no sample is linked"):
        evaluate(tmp_path / "other", reference=ref, task="csp")
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate(folder, reference=ref, task="csp", k=0)


def test_train_without_reference_and_target_columns(tmp_path, capsys):
    crystals = tiny_crystals()
    report = evaluate(crystals, reference=None, train=crystals[:1], target=("band_gap", 0.0, 1.0))
    assert report["novel_rate"] == pytest.approx(100.0 * (len(crystals) - 1) / len(crystals))
    assert report["target_success_rate"] == 0.0  # no sample carries the property
    assert "target_band_gap" in report.per_structure[0]
    write_structures(crystals[:1], tmp_path / "one.cif")
    assert main(["evaluate", str(tmp_path / "one.cif"), "--reference", "none", "--cov-cutoffs", "a,b"]) == 2
    assert "--cov-cutoffs must be STRUCT,COMP" in capsys.readouterr().err


def test_csp_generation_folder_counts_failed_predictions(tmp_path):
    from crystalforge.io.run_folder import FAILURES_FILE, RUN_FILE, SAMPLES_FILE

    ref = tiny_crystals()[1:3]
    out = tmp_path / "pred"
    write_structures([ref[0]], out / SAMPLES_FILE)
    (out / RUN_FILE).write_text("{}")
    (out / FAILURES_FILE).write_text(f"name,reason\n{ref[1].material_id},lattice is degenerate\n")
    report = evaluate(out, reference=ref, task="csp", train=False)
    d = report.details["csp_match"]
    # the failed prediction links to its reference: predicted, not matched (it would vanish if
    # only samples.extxyz were read, and the rate over predicted references would read 100 %)
    assert d["n_references_with_predictions"] == 2
    assert d["match_rate_over_predicted"] == 50.0
    assert report["match_rate"] == 50.0
