"""``train(config)``: dataset → model → Lightning Trainer → a small plain-data checkpoint.

The run folder holds ``config.yaml`` (the resolved config), Lightning's resume checkpoint
``last.ckpt`` (rerunning the same command resumes from it), CSV (or TensorBoard) logs and the
exported ``model.pt`` (EMA weights, config, dataset statistics, final metrics) that
``crystalforge generate`` loads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import cast

import numpy as np
import torch
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
    is not installed.
    """
    require("lightning", "training (crystalforge train)")
    with torch_threads(config.trainer.threads):
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

    from crystalforge.data.augment import BatchAugment
    from crystalforge.data.loader import make_loader
    from crystalforge.training.adapters import apply_freeze, init_weights, pretrained_names
    from crystalforge.training.checkpoint import save_checkpoint
    from crystalforge.training.lightning import LitGenerative

    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.trainer.seed, workers=True, verbose=False)
    train_set, val_set, stats, resolved, model = prepare(config)
    (out / "config.yaml").write_text(dump_config(resolved))
    new: tuple[str, ...] = ()
    module = cast(nn.Module, model)  # every trainable family is an nn.Module
    if config.init_from:
        new = init_weights(module, config.init_from, load=not (out / "last.ckpt").exists())
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
    )
    augment = BatchAugment() if config.data.augment else None
    loader = make_loader(
        train_set,
        batch_size=config.data.batch_size,
        shuffle=True,
        seed=config.trainer.seed,
        # incomplete batches are dropped when each process has more than one batch (its share under DDP)
        drop_last=math.ceil(len(train_set) / config.world_size) > config.data.batch_size,
        num_workers=config.data.workers,
        augment=augment,
    )
    val_loader = None
    if val_set is not None and len(val_set) > 0:
        val_loader = make_loader(val_set, batch_size=config.data.batch_size)
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
            )
        ],
        check_val_every_n_epoch=config.trainer.check_val_every_n_epoch,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        deterministic=False,
    )
    resume = out / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(lit, loader, val_loader, ckpt_path=str(resume) if resume.exists() else None)
    wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics.update(
        {
            "epochs": int(trainer.current_epoch),
            "global_steps": int(trainer.global_step),
            "wall_s_this_run": round(wall, 1),
            "train_structures": len(train_set),
            "parameters": sum(p.numel() for p in model.parameters()),
            "frozen_parameters": frozen,
            "new_weights_over_init": len(new),
        }
    )
    path = save_checkpoint(
        out / "model.pt",
        family=config.family,
        config=to_dict(resolved),
        weights=lit.export_weights(),
        dataset_stats=stats.to_dict(),
        metrics=metrics,
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("wrote %s (%s)", path, metrics)
    return path


def _strategy(config: TrainConfig) -> str:
    """The Lightning strategy: the config's, else DDP when several processes share the work."""
    if config.trainer.strategy != "auto":
        return config.trainer.strategy
    return "ddp" if config.world_size > 1 else "auto"
