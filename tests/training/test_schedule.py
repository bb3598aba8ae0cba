"""The LR schedule counts global optimiser steps: under DDP an epoch has 1/world_size as many."""

from __future__ import annotations

import pytest

from crystalforge.training.config import TrainConfig, TrainerConfig
from crystalforge.training.run import _strategy, optimizer_steps_per_epoch


@pytest.mark.parametrize(
    ("n", "batch", "world", "steps"),
    [
        (1000, 100, 1, 10),
        (1000, 100, 2, 5),  # each of 2 processes sees 500 structures: 5 steps, not 10
        (1000, 100, 4, 2),  # 250 each, incomplete batches dropped
        (1001, 100, 2, 5),  # the distributed sampler pads to 501 per process
        (50, 100, 1, 1),  # a set smaller than one batch is one step
        (150, 100, 8, 1),  # never zero steps
        (300, 256, 2, 1),  # 150 per process: one incomplete batch each, kept
    ],
)
def test_steps_per_epoch(n, batch, world, steps):
    assert optimizer_steps_per_epoch(n, batch, world) == steps


def test_world_size_and_strategy():
    one = TrainConfig()
    assert one.world_size == 1 and _strategy(one) == "auto"
    ddp = TrainConfig(trainer=TrainerConfig(devices=2, num_nodes=3))
    assert ddp.world_size == 6 and _strategy(ddp) == "ddp"
    assert _strategy(TrainConfig(trainer=TrainerConfig(devices=2, strategy="ddp_spawn"))) == "ddp_spawn"
