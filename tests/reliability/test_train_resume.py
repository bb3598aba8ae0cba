"""``crystalforge train`` stopped by kill -9, Ctrl-C or SIGTERM: the rerun resumes and ends where an
uninterrupted run ends, to the bit (CPU, one thread).

kill -9 hits a ``crystalforge train`` subprocess once its first checkpoint exists; Ctrl-C and
SIGTERM are sent to this process from inside a training step (what the terminal or SLURM would do).

The run is a real flow model with random times, noise and augmentation, so equality needs every
piece of state back: weights, optimiser, LR schedule, EMA, the data order and the random draws.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crystalforge.cli.main import main
from crystalforge.config import load_config
from crystalforge.io.files import write_structures
from crystalforge.io.torch_files import read_torch_file
from crystalforge.testing import tiny_crystals
from crystalforge.training import lightning
from crystalforge.training.config import TrainConfig
from crystalforge.training.run import train

pytest.importorskip("lightning")

EPOCHS = 40  # 2 steps each; long enough that the signals land mid-run


def _config(tmp_path: Path) -> Path:
    data = tmp_path / "tiny.extxyz"
    write_structures(tiny_crystals()[1:], data)
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {kind: flow, task: dng, backbone: {hidden: 16, layers: 1, fourier_frequencies: 2, time_dim: 8}}\n"
        f"data: {{dataset: {data}, val_split: null, batch_size: 2, augment: true}}\n"
        "optim: {warmup_steps: 2, ema_decay: 0.9}\n"
        f"trainer: {{max_epochs: {EPOCHS}, accelerator: cpu, threads: 1}}\n"
    )
    return config


def _start(config: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "crystalforge.cli.main", "train", str(config), "--out", str(out)]
    with open(log, "wb") as err:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def _wait_until(ready: Callable[[], bool], run: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while not ready():
        if run.poll() is not None:
            pytest.fail(f"training ended (status {run.returncode}) before the signal:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            run.kill()
            pytest.fail("no checkpoint within 90 s")
        time.sleep(0.01)


def _checkpoint_step(path: Path) -> int:
    data = read_torch_file(path, what="resume checkpoint")  # whole, never half-written
    assert isinstance(data, dict)
    return int(data["global_step"])


def _first_logged_step(out: Path) -> int:
    newest = max((out / "logs").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    with open(newest / "metrics.csv") as handle:
        return min(int(row["step"]) for row in csv.DictReader(handle))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["weights"]


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different


def test_kill_9_mid_run_then_the_same_command_ends_like_an_uninterrupted_run(tmp_path):
    config = _config(tmp_path)
    reference = tmp_path / "reference"
    assert main(["train", str(config), "--out", str(reference)]) == 0

    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    checkpoint = out / "last.ckpt"
    run = _start(config, out, log)
    _wait_until(checkpoint.exists, run, log)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    killed_at = _checkpoint_step(checkpoint)
    assert 2 <= killed_at < 2 * EPOCHS and not (out / "model.pt").exists()

    assert main(["train", str(config), "--out", str(out)]) == 0
    assert _first_logged_step(out) >= killed_at  # continued from the checkpoint, not from scratch
    _assert_same_weights(reference / "model.pt", out / "model.pt")
    print(f"kill -9 once last.ckpt existed; it held step {killed_at} of {2 * EPOCHS}; resumed run equals the")
    print("uninterrupted one exactly (torch.equal on every exported tensor)")
    assert not list(out.glob(".*.tmp"))  # no temporary file of a killed writer is left behind


@pytest.fixture
def restore_sigint():
    """Lightning ignores Ctrl-C while it shuts down and leaves it so: give pytest its handler back.

    The test starts from Python's own handler, since an earlier test's training may have left
    Ctrl-C ignored (then the signal would never reach the run under test).
    """
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    ("sent", "status", "cause"),
    [
        (signal.SIGINT, 1, "Ctrl-C (SIGINT)"),  # Lightning's own exit status
        (signal.SIGTERM, 128 + signal.SIGTERM, "SIGTERM"),  # what SLURM sends; Lightning alone would exit 0
    ],
)
def test_a_signal_stops_cleanly_with_a_failure_status_and_the_rerun_resumes(
    tmp_path, monkeypatch, caplog, restore_sigint, sent, status, cause
):
    config = load_config(TrainConfig, _config(tmp_path), ["trainer.max_epochs=4"])
    reference = train(config, tmp_path / "reference")

    step = lightning.LitGenerative.training_step

    def signalled_at_step_5(self, batch, batch_idx):
        if self.global_step == 5:
            os.kill(os.getpid(), sent)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(lightning.LitGenerative, "training_step", signalled_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train(config, out)
    assert stop.value.code == status
    assert f"training stopped by {cause} after step" in caplog.text
    assert f"rerun the same command to resume from {out / 'last.ckpt'}" in caplog.text
    # Ctrl-C stops inside step 6, SIGTERM after it; epoch 3 ends with step 6 and may be saved or not
    assert _checkpoint_step(out / "last.ckpt") in (4, 6) and not (out / "model.pt").exists()

    stopped_at = _checkpoint_step(out / "last.ckpt")
    monkeypatch.setattr(lightning.LitGenerative, "training_step", step)
    _assert_same_weights(reference, train(config, out))
    print(f"{cause}: exit status {stop.value.code}, last.ckpt at step {stopped_at} of 8; resumed run equals the")
    print("uninterrupted one exactly")
