"""A thin Lightning adapter: any ``nn.Module`` with ``loss(batch) -> {"loss": scalar, ...}`` trains.

Lightning gives DDP/multi-GPU, mixed precision, checkpoint + resume, gradient clipping, CSV or
TensorBoard logs and progress bars; the model code never imports Lightning. The adapter adds an
exponential moving average of the weights (validated and exported) and AdamW with linear warm-up
then cosine decay, stepped once per optimiser step (the scheduler's count is the global step and
is restored on resume).

Randomness: every training step draws its noise (and its augmentation) from the global RNG
re-seeded from ``(seed, global step, rank)`` inside ``torch.random.fork_rng``, and every validation
batch from ``(seed, batch index, rank)``. So a resumed run draws exactly what an uninterrupted one
would (no RNG state needs saving), processes under DDP draw independent noise (seeding every rank
alike would give all of them the same draws), and validation never shifts the training draws.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lightning as pl
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.training.ema import EMA, Weighted


class Trainable(Weighted, Protocol):
    """An ``nn.Module`` with ``loss(batch)`` (every ``GenerativeModel`` is one)."""

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """``{"loss": scalar to minimise, <part>: scalar, ...}`` for one data batch."""


class LitGenerative(pl.LightningModule):
    """Wraps a model exposing ``loss(batch)``; logs every returned component.

    Args:
        model: the module to train.
        lr: peak learning rate (AdamW).
        betas: AdamW's moment decays.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up length in optimiser steps.
        total_steps: steps of the cosine decay (to 5 % of ``lr``); None keeps ``lr`` constant.
        ema_decay: decay of the weight average (0 disables it).
        seed: the run's seed; each step's draws are seeded from it (module docstring).
        augment: a random transform applied to every training batch (drawing from the step's seed).

    """

    def __init__(
        self,
        model: Trainable,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        ema_decay: float = 0.999,
        seed: int = 0,
        augment: Callable[[CrystalBatch], CrystalBatch] | None = None,
    ) -> None:
        super().__init__()
        self.model = model  # registered as a submodule: at run time it is an ``nn.Module``
        self.lr = lr
        self.betas = betas
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.ema = EMA(model, decay=ema_decay) if ema_decay > 0 else None
        self.seed = seed
        self.augment = augment

    # ---- steps ----------------------------------------------------------------------------
    def _log_losses(self, out: dict[str, torch.Tensor], stage: str, batch: CrystalBatch) -> None:
        for key, value in out.items():
            self.log(
                f"{stage}/{key}",
                value.detach(),
                prog_bar=key == "loss",
                batch_size=batch.num_crystals,
                on_step=stage == "train",
                on_epoch=True,
                sync_dist=True,  # under DDP the logged value is the mean over all processes' batches
            )

    @contextlib.contextmanager
    def _seeded(self, *parts: object) -> Iterator[None]:
        """The global RNG (CPU and this device) seeded from ``(seed, *parts)``, restored afterwards."""
        device = self.device
        devices = [device.index or 0] if device.type not in ("cpu", "meta") else []
        kind = device.type if devices else "cuda"
        with torch.random.fork_rng(devices=devices, device_type=kind):
            torch.manual_seed(step_seed(self.seed, *parts))
            yield

    def training_step(self, batch: CrystalBatch, batch_idx: int) -> torch.Tensor:
        """One loss evaluation; Lightning does backward, clipping and the optimiser step."""
        with self._seeded("train", self.global_step, self.global_rank):
            if self.augment is not None:
                batch = self.augment(batch)
            out = self.model.loss(batch)
        self._log_losses(out, "train", batch)
        return out["loss"]

    def validation_step(self, batch: CrystalBatch, batch_idx: int) -> None:
        """Validation loss of the averaged weights (the ones that are exported)."""
        with torch.no_grad(), self._seeded("val", batch_idx, self.global_rank):
            out = self.exported_module().loss(batch)
        self._log_losses(out, "val", batch)

    def on_fit_start(self) -> None:
        """The weight average follows the model onto its device, in memory of this process's own.

        (It is not a registered submodule, so neither Lightning's device move nor its copy out of
        ``ddp_spawn``'s shared memory reach it.)
        """
        if self.ema is not None:
            self.ema.own_memory()
            self.ema.to(self.device)

    def on_train_batch_end(self, outputs: Any, batch: CrystalBatch, batch_idx: int) -> None:
        """Update the weight average after each optimiser step."""
        if self.ema is not None:
            self.ema.update(self.model)

    # ---- optimiser ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW with warm-up then cosine decay (per step)."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # frozen ones left out (freeze:)
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.total_steps is None:
                return 1.0
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoint state -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the weight average in Lightning's resume checkpoint."""
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the weight average on resume."""
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    def exported_module(self) -> Trainable:
        """The weights to ship: the average when there is one, else the trained model."""
        return self.ema.shadow if self.ema is not None else self.model

    def export_weights(self) -> dict[str, torch.Tensor]:
        """The exported module's weights, on the CPU."""
        return {k: v.detach().cpu() for k, v in self.exported_module().state_dict().items()}


def step_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and ``parts`` (a hash: nearby steps and ranks get unrelated streams)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
