"""EMA maths and plain-data checkpoints (weights_only loading, clear errors)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from crystalforge.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from crystalforge.training.ema import EMA


def test_ema_tracks_the_average_with_warmup():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        before = ema.shadow.weight.clone()
    ema.update(model)  # warm-up decay min(0.5, 2/11) = 2/11
    expected = before * (2 / 11) + 1.0 * (9 / 11)
    assert torch.allclose(ema.shadow.weight, expected)
    restored = EMA(nn.Linear(2, 1), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow.weight, ema.shadow.weight)
    assert restored.num_updates == 1
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_checkpoint_round_trip_is_plain_data(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint(
        tmp_path / "m.pt",
        family="joint",
        config={"backbone": {"hidden": 8}},
        weights=model.state_dict(),
        dataset_stats={"num_structures": 3},
        metrics={"val_loss": 0.5},
    )
    data = load_checkpoint(path)
    assert data["format_version"] == FORMAT_VERSION
    assert data["config"] == {"backbone": {"hidden": 8}}
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(data["weights"])
    assert torch.equal(fresh.weight, model.weight)


def test_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a crystalforge checkpoint"):
        load_checkpoint(junk)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Evil()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ValueError, match="not a crystalforge checkpoint"):
        load_checkpoint(evil)


def test_the_average_follows_the_model_to_its_device():
    from crystalforge.training.lightning import LitGenerative

    lit = LitGenerative(nn.Linear(2, 1))
    lit._device = torch.device("meta")  # where Lightning put the model (any device but the CPU it was built on)
    lit.on_fit_start()
    assert lit.ema is not None and lit.ema.shadow.weight.device.type == "meta"
