"""The run folder's files: resume checkpoints written in one rename, outputs from global rank 0 only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

from crystalforge.training.lightning import LitGenerative
from crystalforge.training.run_files import RunFiles, SafeCheckpointIO


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(RuntimeError, match="cannot be saved"):  # the writer fails half-way
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(2)}, "x": Unpicklable()}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_resume_checkpoint_that_is_no_mapping_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"last\.ckpt: not a crystalforge resume checkpoint \(not a mapping\)"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")


def _trainer(rank: int) -> SimpleNamespace:
    return SimpleNamespace(
        is_global_zero=rank == 0,
        world_size=2,
        current_epoch=3,
        global_step=12,
        callback_metrics={"train/loss": torch.tensor(0.5)},
    )


@pytest.mark.parametrize("rank", [0, 1])
def test_only_global_rank_0_writes_the_run_files(tmp_path, rank):
    files = RunFiles(
        tmp_path, family="toy", config={"name": "toy"}, config_text="name: toy\n", stats={}, facts={"parameters": 3}
    )
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"left by a killed writer")
    lit = LitGenerative(nn.Linear(2, 1))
    files.setup(_trainer(rank), lit, "fit")  # type: ignore[arg-type]
    files.on_train_end(_trainer(rank), lit)  # type: ignore[arg-type]
    written = sorted(p.name for p in tmp_path.iterdir())
    if rank:
        assert written == [".last.ckpt.abc123.tmp"]  # another rank writes and removes nothing
        return
    assert written == ["config.yaml", "metrics.json", "model.pt"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_steps"] == 12 and metrics["train/loss"] == 0.5
    assert metrics["parameters"] == 3 and metrics["rank_weight_difference"] == 0.0
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(saved["weights"]["weight"], lit.export_weights()["weight"])
