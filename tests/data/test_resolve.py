"""Name resolution: references and training sets from benchmark names, files, folders and memory."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.errors import CrystalError
from crystalforge.data.dataset import parse_csv, parse_csv_rows
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.resolve import dataset_stats, load_dataset, resolve_reference, resolve_train
from crystalforge.execution import ExecutorConfig
from crystalforge.io.files import crystal_to_cif, write_structures
from crystalforge.testing import tiny_crystals

from .test_datasets import _write_benchmark


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _good_and_bad_rows() -> list[dict]:
    tiny = tiny_crystals()
    return [
        {"material_id": "a", "cif": crystal_to_cif(tiny[0])},
        {"material_id": "bad", "cif": "data_x\nnot a cif"},
        {"material_id": "b", "cif": crystal_to_cif(tiny[1])},
    ]


def test_reference_in_memory_benchmark_csv_and_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = tiny_crystals()
    assert resolve_reference(tiny, "test", None, None) == (tiny, "<in memory>")
    _write_benchmark(tmp_path, split="test")
    crystals, name = resolve_reference("perov_5", "test", tmp_path, 1)
    assert name == "perov_5/test" and len(crystals) == len(tiny)
    path = _csv(tmp_path / "ref.csv", _good_and_bad_rows())
    with caplog.at_level(logging.WARNING):
        crystals, name = resolve_reference(path, "ignored", None, None)
    assert name == "ref.csv" and [c.material_id for c in crystals] == ["a", "b"]
    assert "reference: skipped ref.csv row 1 (bad): malformed CIF" in caplog.text
    folder = tmp_path / "structures"
    write_structures(tiny[:2], folder / "two.extxyz")
    (folder / "broken.cif").write_text("data_broken\n")
    crystals, name = resolve_reference(str(folder), "test", None, None)
    assert name == "structures" and len(crystals) == 2


def test_reference_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown reference 'nope'"):
        resolve_reference("nope", "test", tmp_path, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.cif").write_text("data_broken\n")
    with pytest.raises(CrystalError, match="no readable structure"):
        resolve_reference(empty, "test", None, None)


def test_train_resolution_and_its_reasons(tmp_path: Path) -> None:
    tiny = tiny_crystals()
    assert resolve_train(False, "perov_5", tmp_path, None) == (None, "not requested")
    assert resolve_train(None, None, tmp_path, None) == (None, "no reference (pass train= for novelty)")
    assert resolve_train(True, tiny, tmp_path, None) == (None, "no training set given (pass train=)")
    assert resolve_train(tiny[:2], "perov_5", tmp_path, None) == (tiny[:2], "<in memory>")
    missing = resolve_train(None, "perov_5", tmp_path / "nowhere", None)
    assert missing[0] is None and "perov_5/train is not present here" in missing[1]
    _write_benchmark(tmp_path, split="train")
    crystals, name = resolve_train(None, "perov_5", tmp_path, ExecutorConfig(workers=1))
    assert name == "perov_5/train" and crystals is not None and len(crystals) == len(tiny)


def test_load_dataset_names_and_stats(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown dataset 'mp_21'"):
        load_dataset("mp_21")
    _write_benchmark(tmp_path)
    with pytest.raises(ValueError, match="properties= applies to user datasets"):
        load_dataset("perov_5", "val", root=tmp_path, properties=tmp_path / "p.csv")
    ds = load_dataset("perov_5", "val", root=tmp_path)
    assert dataset_stats(ds).num_structures == dataset_stats(list(ds)).num_structures == len(ds)


def test_csv_rows_are_candidates_in_file_order_with_any_executor(tmp_path: Path) -> None:
    rows = _good_and_bad_rows() * 3
    path = _csv(tmp_path / "rows.csv", rows)
    serial = parse_csv_rows(path, options=PreprocessOptions.raw())
    assert [row for row, _ in serial] == list(range(len(rows)))
    assert all(isinstance(c, Candidate) for _, c in serial)
    assert [c.ok for _, c in serial] == [True, False, True] * 3
    bad = serial[1][1]
    assert bad.source == "rows.csv row 1 (bad)" and bad.material_id == "bad" and bad.error.startswith("malformed CIF")
    done: list[int] = []
    parallel = parse_csv_rows(
        path, options=PreprocessOptions.raw(), workers=ExecutorConfig(workers=2), progress=done.append
    )
    assert sum(done) == len(rows)
    assert [(r, c.source, c.error, c.material_id) for r, c in parallel] == [
        (r, c.source, c.error, c.material_id) for r, c in serial
    ]
    assert all(p.crystal.allclose(s.crystal) for (_, p), (_, s) in zip(parallel, serial, strict=True) if s.ok)
    crystals, failures = parse_csv(path, options=PreprocessOptions.raw())
    assert len(crystals) == 6 and [str(f) for f in failures] == [str(c) for _, c in serial if not c.ok]
