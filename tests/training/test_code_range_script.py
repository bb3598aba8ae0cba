"""``scripts/add_code_range.py``: the code range of a model's own training data, refused for other data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from crystalforge.api import write_structures
from crystalforge.core.lattice import lattice_to_code
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.testing import tiny_crystals

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("add_code_range", REPO / "scripts" / "add_code_range.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adds_the_range_of_the_training_data_and_refuses_other_data(tmp_path):
    crystals = tiny_crystals()
    data = tmp_path / "train.extxyz"
    write_structures(crystals, data)
    stats = compute_dataset_stats(crystals).to_dict()
    stats.pop("lattice_code_min"), stats.pop("lattice_code_max")  # a file from before the range existed
    config = {"data": {"dataset": str(data), "train_split": "train", "root": None, "limit": None}}
    payload = {"config": config, "dataset_stats": stats, "weights": {"w": [1.0]}}
    out = _script().with_code_range(payload)
    codes = np.stack([lattice_to_code(c.lattice, c.num_atoms) for c in crystals])
    np.testing.assert_allclose(out["dataset_stats"]["lattice_code_min"], codes.min(0), atol=1e-6)
    np.testing.assert_allclose(out["dataset_stats"]["lattice_code_max"], codes.max(0), atol=1e-6)
    assert out["weights"] is payload["weights"] and "lattice_code_min" not in payload["dataset_stats"]
    other = {**payload, "dataset_stats": {**stats, "lattice_code_mean": [m + 0.01 for m in stats["lattice_code_mean"]]}}
    with pytest.raises(ValueError, match="another lattice_code_mean"):
        _script().with_code_range(other)
