"""Shared fixtures: seeds, an isolated cache, and the benchmark data directory."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Benchmark CSVs: $CRYSTALFORGE_DATA_DIR, else ../shared/data beside the repo."""
    env = os.environ.get("CRYSTALFORGE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    monkeypatch.setenv("CRYSTALFORGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def data_root() -> Path:
    root = shared_data_dir()
    if not (root / "perov_5").is_dir():
        pytest.skip(f"benchmark data not found in {root} (set CRYSTALFORGE_DATA_DIR)")
    return root


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored afterwards: many tiny ops on a shared machine run
    faster without thread hand-offs (directories opt in with an autouse fixture in their conftest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
