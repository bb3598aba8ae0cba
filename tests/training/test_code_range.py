"""The lattice code's range: ``scripts/add_code_range.py``, fine-tuning's union, the standardiser's checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalforge.api import write_structures
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.lattice import lattice_to_code
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.process_base import LatticeStandardizer
from crystalforge.testing import tiny_crystals
from crystalforge.training.adapters import inherit_base

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
    with pytest.raises(ValueError, match="fine-tuned model"):
        _script().with_code_range({**payload, "config": {**config, "init_from": "mp_20-dng"}})
    with pytest.raises(ValueError, match="no lattice_code_mean"):
        _script().with_code_range({**payload, "dataset_stats": {**stats, "lattice_code_mean": None}})


def _base_file(path: Path, stats: DatasetStats) -> Path:
    torch.save({"format_version": 1, "config": {}, "weights": {}, "dataset_stats": stats.to_dict()}, path)
    return path


def test_fine_tuning_takes_the_union_of_the_ranges_or_none_for_a_base_without_one(tmp_path):
    crystals = tiny_crystals()
    base = compute_dataset_stats(crystals[:3])
    new = compute_dataset_stats(crystals[2:])
    tuned, _ = inherit_base(str(_base_file(tmp_path / "base.pt", base)), new, None)
    assert tuned.lattice_code_mean == base.lattice_code_mean  # the base's frame
    assert tuned.lattice_code_min == tuple(map(min, base.lattice_code_min, new.lattice_code_min))
    assert tuned.lattice_code_max == tuple(map(max, base.lattice_code_max, new.lattice_code_max))
    assert tuned.lattice_code_min != new.lattice_code_min or tuned.lattice_code_max != new.lattice_code_max
    legacy = DatasetStats.from_dict({**base.to_dict(), "lattice_code_min": None, "lattice_code_max": None})
    tuned, _ = inherit_base(str(_base_file(tmp_path / "legacy.pt", legacy)), new, None)
    assert tuned.lattice_code_min is None and tuned.lattice_code_max is None


def test_the_standardiser_refuses_a_range_that_does_not_fit():
    with pytest.raises(ValueError, match="together"):
        LatticeStandardizer(low=[0.0] * 6)
    with pytest.raises(ValueError, match="6 entries"):
        LatticeStandardizer(low=[0.0] * 6, high=[1.0] * 5)
    with pytest.raises(ValueError, match="exceeds"):
        LatticeStandardizer(low=[0.0] * 6, high=[1.0] * 5 + [-1.0])


def test_no_sampled_cell_is_smaller_than_the_bound_the_script_prints():
    from crystalforge.core.lattice import MIN_VOLUME_FRACTION, raise_flat_cells, volume
    from crystalforge.generative.diffusion import LatticeDDPM
    from tests.generative.conftest import make_batch

    stats = compute_dataset_stats(tiny_crystals())
    plain, clipped = _script().smallest_volumes(stats)
    assert plain < clipped
    ddpm, n = LatticeDDPM(stats), [1, 2, 3, 4] * 50
    batch = make_batch(n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(n), 6, generator=g, dtype=torch.float64)
    eps = 40.0 * torch.randn(len(n), 6, generator=g, dtype=torch.float64)  # wild predictions, shrinking cells too
    out = ddpm.step(x, eps, torch.full((len(n),), 0.98, dtype=torch.float64), 0.02, batch)  # the last step
    cells = raise_flat_cells(ddpm.decode(out, batch), MIN_VOLUME_FRACTION)
    per_atom = volume(cells).abs() / torch.tensor(n, dtype=torch.float64)
    assert float(per_atom.min()) >= clipped * (1 - 1e-6)
