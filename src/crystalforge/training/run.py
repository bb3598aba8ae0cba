"""``train(config)``: dataset → model → Lightning Trainer → a small plain-data checkpoint.

The run folder holds ``config.yaml`` (the resolved config), Lightning's resume checkpoint
``last.ckpt`` (rerunning the same command resumes from it), CSV (or TensorBoard) logs and the
exported ``model.pt`` (EMA weights, config, dataset statistics, final metrics) that
``crystalforge generate`` loads.

Scaling is configuration: ``trainer.devices`` (per node), ``trainer.num_nodes`` and
``trainer.strategy`` (``auto`` is DDP for more than one process). The batch size is per process,
the LR schedule counts optimiser steps of the global batch (``optimizer_steps_per_epoch``), the
data are sharded with one order for any number of processes (``training.distributed``), and only
global rank 0 writes files (``training.run_files``). Resuming restores weights, optimiser,
schedule, EMA and the epoch; the data order and every step's random draws are functions of the
seed, the epoch and the step (``training.lightning``), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import signal
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import cast

import numpy as np
from torch import nn

from crystalforge.config import dump_config, to_dict
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.extras import require
from crystalforge.core.threads import torch_threads
from crystalforge.data.dataset import CrystalDataset
from crystalforge.generative.interfaces import GenerativeModel
from crystalforge.registry import build_model, resolve_config
from crystalforge.training.config import DataConfig, TrainConfig

logger = logging.getLogger(__name__)


def _datasets(config: DataConfig) -> tuple[CrystalDataset, CrystalDataset | None]:
    """The training split (first ``limit`` structures when set) and the validation split, as flat arrays."""
    from crystalforge.data.resolve import is_benchmark, load_dataset

    if not is_benchmark(config.dataset):
        return _user_datasets(config)
    if config.properties is not None:
        raise ValueError("data.properties names a property table for your own structures; benchmarks carry theirs")
    train = load_dataset(config.dataset, config.train_split, root=config.root)
    if config.limit is not None:
        train = train.subset(range(min(config.limit, len(train))))
    val = load_dataset(config.dataset, config.val_split, root=config.root) if config.val_split else None
    return train, val


def _user_datasets(config: DataConfig) -> tuple[CrystalDataset, CrystalDataset | None]:
    """A folder of structures (+ property table) split into train and a seeded validation share."""
    from crystalforge.data.resolve import load_dataset

    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {config.val_fraction}")
    full = load_dataset(config.dataset, root=config.root, properties=config.properties)
    order = np.random.default_rng(0).permutation(len(full))
    n_val = round(config.val_fraction * len(full)) if config.val_split else 0
    train = full.subset(order[n_val:], split="train")
    if config.limit is not None:
        train = train.subset(range(min(config.limit, len(train))))
    return train, (full.subset(order[:n_val], split="val") if n_val else None)


def train(config: TrainConfig, out_dir: str | Path) -> Path:
    """Train (or resume) and export ``<out_dir>/model.pt``; returns its path.

    Raises ``MissingDependencyError`` (naming the ``train`` extra) before any work when Lightning
    is not installed. Lightning's loggers are routed to the process's logging (their own handlers
    removed), so the CLI prints each of their lines once, with ``-v``.
    """
    require("lightning", "training (crystalforge train)")
    with torch_threads(config.trainer.threads), warnings.catch_warnings():
        # Lightning's own noise, for this call only: the run folder holds our files by design; a
        # deprecation inside Lightning
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
        return _train(config, Path(out_dir))


def prepare(
    config: TrainConfig,
) -> tuple[CrystalDataset, CrystalDataset | None, DatasetStats, TrainConfig, GenerativeModel]:
    """``(train_set, val_set, dataset_stats, resolved_config, model)`` of a run, before any training.

    The resolved config holds the family's data-derived settings (e.g. the elements of the type
    vocabulary), so it rebuilds the same model without the data.
    """
    from crystalforge.data.stats import compute_dataset_stats

    train_set, val_set = _datasets(config.data)
    if len(train_set) == 0:
        raise ValueError(f"{config.data.dataset}/{config.data.train_split}: no training structures")
    stats = compute_dataset_stats(train_set.arrays)
    model = config.model
    if config.init_from:  # build in the base model's frame (vocabulary, lattice standardisation)
        from crystalforge.training.adapters import inherit_base

        stats, model = inherit_base(config.init_from, stats, model)
    model_config = resolve_config(model, stats, family=config.family)
    net = build_model(model_config, stats, family=config.family)
    return train_set, val_set, stats, replace(config, model=model_config), net


def optimizer_steps_per_epoch(num_structures: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch when ``world_size`` processes each take ``batch_size`` per step.

    Under DDP every process sees ``1/world_size`` of the data (Lightning's distributed sampler), so
    one step consumes ``batch_size × world_size`` structures; incomplete last batches are dropped
    when there is more than one batch (as the loader does). The LR schedule counts these steps.
    """
    if math.ceil(num_structures / max(1, world_size)) <= batch_size:
        return 1
    return max(1, math.ceil(num_structures / max(1, world_size)) // batch_size)


def _train(config: TrainConfig, out: Path) -> Path:
    import lightning as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from crystalforge.data.augment import BatchAugment
    from crystalforge.training.adapters import apply_freeze, init_weights, pretrained_names
    from crystalforge.training.distributed import CrystalDataModule
    from crystalforge.training.lightning import LitGenerative
    from crystalforge.training.run_files import RunFiles, SafeCheckpointIO

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # its lines once, through our logging (-v)
        lightning_log = logging.getLogger(name)
        lightning_log.handlers.clear()
        lightning_log.propagate, lightning_log.level = True, logging.NOTSET
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.trainer.seed, workers=True, verbose=False)  # the same initial weights on every rank
    train_set, val_set, stats, resolved, model = prepare(config)
    resume = out / "last.ckpt"
    new: tuple[str, ...] = ()
    module = cast(nn.Module, model)  # every trainable family is an nn.Module
    if config.init_from:
        new = init_weights(module, config.init_from, load=not resume.exists())
    frozen = apply_freeze(module, config.freeze, pretrained_names(module, new) if config.init_from else ())
    steps_per_epoch = optimizer_steps_per_epoch(len(train_set), config.data.batch_size, config.world_size)
    lit = LitGenerative(
        model,
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_steps,
        total_steps=steps_per_epoch * (config.trainer.schedule_epochs or config.trainer.max_epochs),
        ema_decay=config.optim.ema_decay,
        seed=config.trainer.seed,
        augment=BatchAugment() if config.data.augment else None,
    )
    data = CrystalDataModule(
        train_set,
        val_set,
        batch_size=config.data.batch_size,
        seed=config.trainer.seed,
        world_size=config.world_size,
        workers=config.data.workers,
    )
    files = RunFiles(
        out,
        family=config.family,
        config=to_dict(resolved),
        config_text=dump_config(resolved),
        stats=stats.to_dict(),
        facts={
            "train_structures": len(train_set),
            "parameters": sum(p.numel() for p in model.parameters()),
            "frozen_parameters": frozen,
            "new_weights_over_init": len(new),
        },
    )
    log = (
        CSVLogger(str(out), name="logs") if config.trainer.logger == "csv" else TensorBoardLogger(str(out), name="logs")
    )
    max_time = None
    if config.trainer.max_time_minutes is not None:
        max_time = timedelta(minutes=config.trainer.max_time_minutes)  # what Lightning builds from a dict
    trainer = pl.Trainer(
        max_epochs=config.trainer.max_epochs,
        max_time=max_time,
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        strategy=_strategy(config),
        # a plain string in the config; Lightning validates it against its own Literal
        precision=config.trainer.precision,  # type: ignore[arg-type]
        gradient_clip_val=config.optim.grad_clip,
        logger=log,
        callbacks=[
            ModelCheckpoint(
                dirpath=str(out),
                filename="last",
                save_top_k=1,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            ),
            files,
        ],
        plugins=[SafeCheckpointIO()],
        use_distributed_sampler=False,  # CrystalDataModule shards (the same order for any number of processes)
        check_val_every_n_epoch=config.trainer.check_val_every_n_epoch,
        limit_val_batches=None if data.val_set is not None else 0,
        enable_model_summary=False,
        default_root_dir=str(out),  # anything Lightning writes of its own goes to the run folder, not the cwd
        log_every_n_steps=config.trainer.log_every_n_steps or max(1, min(50, steps_per_epoch)),
        deterministic=False,
    )
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    except SIGTERMException:  # Lightning stops after the current step and exits with status 0: say it failed
        raise SystemExit(128 + signal.SIGTERM) from None
    return out / "model.pt"


def _strategy(config: TrainConfig) -> str:
    """The Lightning strategy: the config's, else DDP when several processes share the work."""
    if config.trainer.strategy != "auto":
        return config.trainer.strategy
    return "ddp" if config.world_size > 1 else "auto"
