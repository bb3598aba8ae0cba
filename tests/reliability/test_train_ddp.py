"""DDP by configuration alone: 2 CPU processes (gloo) × batch 8 train like 1 process × batch 16.

The model is a test-only family with a deterministic per-crystal loss (a small MLP fitting the log
volume per atom), so the two runs must agree to float round-off: the same structures in every global
batch (the sharded, epoch-seeded sampler), gradients averaged over the processes, the LR schedule
counted in global steps, the same weight average, one set of files written by rank 0. A family
with random noise in its loss (flow, diffusion) draws different noise per process, so only this
deterministic loss can show equivalence step by step.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from crystalforge.config import load_config
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.io.files import write_structures
from crystalforge.registry import Family, register_family, unregister_family
from crystalforge.testing import tiny_crystals
from crystalforge.training.config import TrainConfig
from crystalforge.training.run import train

pytest.importorskip("lightning")

TOLERANCE = 1e-5
"""Largest difference allowed between the 1- and 2-process runs (losses and weights, float32)."""


@dataclass(frozen=True)
class VolumeConfig:
    hidden: int = 8


class VolumeRegressor(nn.Module):
    """Fits ln(volume per atom) from atom count, mean Z and cell lengths; loss = mean over crystals."""

    tasks = ("dng",)
    conditions = ()

    def __init__(self, config: VolumeConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1))

    def loss(self, batch: CrystalBatch) -> dict[str, Tensor]:
        n = batch.num_atoms.to(batch.lattice.dtype)
        z = torch.zeros_like(n).index_add_(0, batch.crystal_idx, batch.atomic_numbers.to(n.dtype)) / n
        features = torch.cat([n[:, None] / 8, z[:, None] / 50, batch.lattice.norm(dim=-1) / 5], dim=1)
        target = torch.log(torch.linalg.det(batch.lattice).abs() / n)
        per_crystal = (self.net(features).squeeze(-1) - target).pow(2)
        return {"loss": per_crystal.mean()}


FAMILY = Family("volume_regressor", VolumeConfig, lambda config, stats: VolumeRegressor(config))


@pytest.fixture
def volume_family():
    register_family(FAMILY)
    yield FAMILY
    unregister_family(FAMILY.name)


def _crystals(n: int) -> list[Crystal]:
    """``n`` rescaled copies of the tiny crystals (different volumes, so there is something to fit)."""
    rng = np.random.default_rng(0)
    base = tiny_crystals()
    out = []
    for i in range(n):
        c = base[i % len(base)]
        scale = 0.8 + 0.4 * rng.random()
        out.append(Crystal(c.atomic_numbers, c.frac_coords, c.lattice * scale, material_id=f"c{i:02d}"))
    return out


def _run(tmp_path: Path, data: Path, name: str, processes: int, batch: int) -> Path:
    overrides = [
        "family=volume_regressor",
        f"data.dataset={data}",
        "data.val_fraction=0.2",  # 40 structures: 32 train, 8 validation
        f"data.batch_size={batch}",
        "optim={lr: 0.05, warmup_steps: 2, ema_decay: 0.9, grad_clip: 1.0}",
        "trainer={max_epochs: 4, accelerator: cpu, threads: 1, check_val_every_n_epoch: 1, log_every_n_steps: 1}",
        f"trainer.devices={processes}",
    ]
    if processes > 1:
        overrides.append("trainer.strategy=ddp_spawn")  # in-process launch (the test's family is registered here)
    return train(load_config(TrainConfig, None, overrides), tmp_path / name)


def _curves(run: Path) -> dict[str, dict[int, float]]:
    """``{column: {step: value}}`` from the run's CSV log (one version: one writer)."""
    (log,) = sorted((run / "logs").iterdir())
    curves: dict[str, dict[int, float]] = {}
    with open(log / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("epoch", "step") and value:
                    curves.setdefault(key, {})[int(row["step"])] = float(value)
    return curves


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, volume_family):
    data = tmp_path / "data.extxyz"
    write_structures(_crystals(40), data)
    one = _run(tmp_path, data, "one", processes=1, batch=16)
    two = _run(tmp_path, data, "two", processes=2, batch=8)

    first, second = _curves(one.parent), _curves(two.parent)
    assert set(first) == set(second) >= {"train/loss_step", "train/loss_epoch", "val/loss"}
    for key, curve in first.items():
        assert sorted(curve) == sorted(second[key]), key
        gap = max(abs(curve[s] - second[key][s]) for s in curve)
        print(f"{key} by step, 1 process x 16: {[round(curve[s], 6) for s in sorted(curve)]}")
        print(f"{key} by step, 2 processes x 8: {[round(second[key][s], 6) for s in sorted(curve)]}")
        print(f"{key}: largest difference {gap:.3g}")
        assert gap < TOLERANCE, (key, gap, curve, second[key])
    steps = first["train/loss_step"]
    assert len(steps) == 8  # 32 structures / 16 per global step × 4 epochs
    assert steps[max(steps)] < steps[min(steps)]  # it trained

    a = torch.load(one, weights_only=True)
    b = torch.load(two, weights_only=True)
    assert b["metrics"]["world_size"] == 2 and b["metrics"]["global_steps"] == a["metrics"]["global_steps"] == 8
    assert b["metrics"]["rank_weight_difference"] == 0.0  # the processes hold the same averaged weights
    weight_gap = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])
    print(f"exported (EMA) weights: largest difference {weight_gap:.3g}")
    assert weight_gap < TOLERANCE
    assert not math.isclose(float(a["weights"]["net.0.weight"].abs().sum()), 0.0)
    # rank 0 alone wrote: one log version, one model, no stray temporary files
    assert sorted(p.name for p in two.parent.iterdir()) == [
        "config.yaml",
        "last.ckpt",
        "logs",
        "metrics.json",
        "model.pt",
    ]
    assert [p.name for p in (two.parent / "logs").iterdir()] == ["version_0"]
