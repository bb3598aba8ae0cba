"""The run folder's files, written so that a crash or a second process never spoils them.

- ``last.ckpt`` (Lightning's resume checkpoint) goes through ``SafeCheckpointIO``: written to a
  temporary file beside it, synced, then renamed over the old one (Lightning's own writer stages
  the file in the system temp folder and moves it, a copy when that is another file system), and
  read back as plain data (``weights_only=True``), a damaged file named in a one-line error.
- ``config.yaml``, ``model.pt`` and ``metrics.json`` are written by ``RunFiles``, a callback that
  runs in the training processes themselves (so it works for every launcher: one process, DDP
  subprocesses, ``ddp_spawn``, SLURM) and writes on global rank 0 only. Before exporting it
  checks that every process holds the same exported weights (``rank_weight_difference``).
- A run stopped by Ctrl-C (SIGINT) or SIGTERM says where it can resume from; Lightning then exits
  (status 1; ``training.run`` turns its SIGTERM exit, status 0, into 143).
- Stale temporary files of a writer killed mid-write are removed when the next run starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from crystalforge.io.atomic import atomic_write, remove_temporaries
from crystalforge.io.torch_files import read_torch_file
from crystalforge.training.checkpoint import save_checkpoint
from crystalforge.training.distributed import max_rank_difference
from crystalforge.training.lightning import LitGenerative

logger = logging.getLogger(__name__)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written atomically in their own folder and read with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: object | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` in one rename (a killed writer leaves the old file whole)."""
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO takes no storage_options")
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(
        self, path: str | Path, map_location: object | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` as plain data (on the CPU; Lightning moves what it restores)."""
        data = read_torch_file(path, what="resume checkpoint")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a crystalforge resume checkpoint (not a mapping)")
        return data


class RunFiles(pl.Callback):
    """Writes ``config.yaml`` when fitting starts and ``model.pt`` + ``metrics.json`` when it ends (rank 0).

    Args:
        out: the run folder.
        family: the model family recorded in ``model.pt``.
        config: the resolved run config as plain data (recorded in ``model.pt``).
        config_text: the same config as YAML (``config.yaml``).
        stats: the training set's statistics as plain data.
        facts: numbers about the run to add to the metrics (structures, parameters, ...).

    """

    def __init__(
        self,
        out: Path,
        *,
        family: str,
        config: Mapping[str, object],
        config_text: str,
        stats: Mapping[str, object],
        facts: Mapping[str, int],
    ) -> None:
        self.out = out
        self.family = family
        self.config = dict(config)
        self.config_text = config_text
        self.stats = dict(stats)
        self.facts = dict(facts)
        self.started = time.perf_counter()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start the clock; rank 0 clears stale temporary files and records the resolved config."""
        self.started = time.perf_counter()
        if trainer.is_global_zero:
            remove_temporaries(self.out)  # atomic_write's, left by a writer killed mid-write
            with atomic_write(self.out / "config.yaml") as handle:
                handle.write(self.config_text)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check that all processes agree, then export the weights and the metrics (rank 0)."""
        if not isinstance(pl_module, LitGenerative):
            raise TypeError(f"RunFiles exports a LitGenerative, got {type(pl_module).__name__}")
        gap = max_rank_difference(pl_module.exported_module().state_dict().values())  # every rank takes part
        if gap > 0.0:
            logger.warning("the processes' exported weights differ by up to %.3g; rank 0's are exported", gap)
        if not trainer.is_global_zero:
            return
        metrics: dict[str, float | int] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
        }
        metrics.update(
            {
                "epochs": int(trainer.current_epoch),
                "global_steps": int(trainer.global_step),
                "world_size": int(trainer.world_size),
                "rank_weight_difference": gap,
                "wall_s_this_run": round(time.perf_counter() - self.started, 1),
                **self.facts,
            }
        )
        path = save_checkpoint(
            self.out / "model.pt",
            family=self.family,
            config=self.config,
            weights=pl_module.export_weights(),
            dataset_stats=self.stats,
            metrics=metrics,
        )
        with atomic_write(self.out / "metrics.json") as handle:
            handle.write(json.dumps(metrics, indent=2) + "\n")
        logger.info("wrote %s (%s)", path, metrics)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A run stopped by Ctrl-C (SIGINT) or SIGTERM says what the folder holds and how to go on."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or not trainer.is_global_zero:
            return
        resume = self.out / "last.ckpt"
        where = (
            f"rerun the same command to resume from {resume} (the last finished epoch)"
            if resume.is_file()
            else "no epoch had finished, so a rerun starts over"
        )
        cause = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C (SIGINT)"
        logger.warning("training stopped by %s after step %d: %s", cause, trainer.global_step, where)
