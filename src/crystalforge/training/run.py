"""``train(config)``: dataset → model → Lightning Trainer → a small plain-data checkpoint.

The run folder holds ``config.yaml`` (the resolved config), Lightning's resume checkpoint
``last.ckpt`` (rerunning the same command resumes from it), CSV (or TensorBoard) logs and the
exported ``model.pt`` (EMA weights, config, dataset statistics, final metrics) that
``crystalforge generate`` loads.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from crystalforge.config import dump_config, to_dict
from crystalforge.registry import ModelConfig, build_model, resolve_elements

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how batched."""

    dataset: str = "perov_5"
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation
    root: str | None = None
    batch_size: int = 256
    limit: int | None = None  # use only the first N training structures (smoke runs)
    augment: bool = False  # random rotation/translation/permutation (the model is invariant anyway)
    workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, warm-up + cosine, EMA, clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    max_epochs: int = 100
    # length of the warm-up + cosine schedule in epochs (None: max_epochs); set it above max_epochs to
    # stop a run part-way through a longer schedule reproducibly (instead of by max_time_minutes)
    schedule_epochs: int | None = None
    max_time_minutes: float | None = None
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    seed: int = 0
    logger: Literal["csv", "tensorboard"] = "csv"
    check_val_every_n_epoch: int = 5
    threads: int | None = None  # torch CPU threads (None: torch's default)


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (``crystalforge train CONFIG [--set key=value ...]``)."""

    name: str = "model"
    init_from: str | None = None  # a model.pt whose weights start this run (continue a shipped model)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _datasets(config: DataConfig) -> tuple[list, list]:
    from crystalforge.api import load_dataset

    train = list(load_dataset(config.dataset, config.train_split, root=config.root))
    if config.limit is not None:
        train = train[: config.limit]
    val = list(load_dataset(config.dataset, config.val_split, root=config.root)) if config.val_split else []
    return train, val


def train(config: TrainConfig, out_dir: str | Path) -> Path:
    """Train (or resume) and export ``<out_dir>/model.pt``; returns its path."""
    threads = torch.get_num_threads()
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    try:
        return _train(config, Path(out_dir))
    finally:
        torch.set_num_threads(threads)


def prepare(config: TrainConfig) -> tuple[list, list, Any, TrainConfig, Any]:
    """``(train_set, val_set, dataset_stats, resolved_config, model)`` of a run, before any training.

    The resolved config names the elements the model's type vocabulary was built from.
    """
    from crystalforge.data.stats import compute_dataset_stats

    train_set, val_set = _datasets(config.data)
    if not train_set:
        raise ValueError(f"{config.data.dataset}/{config.data.train_split}: no training structures")
    stats = compute_dataset_stats(train_set)
    model_config = replace(config.model, elements=resolve_elements(config.model, stats))
    return train_set, val_set, stats, replace(config, model=model_config), build_model(model_config, stats)


def _train(config: TrainConfig, out: Path) -> Path:
    import lightning as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from crystalforge.data.augment import BatchAugment
    from crystalforge.data.loader import make_loader
    from crystalforge.training.checkpoint import load_checkpoint, save_checkpoint
    from crystalforge.training.lightning import LitGenerative

    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.trainer.seed, workers=True, verbose=False)
    train_set, val_set, stats, resolved, model = prepare(config)
    (out / "config.yaml").write_text(dump_config(resolved))
    if config.init_from and not (out / "last.ckpt").exists():
        init = load_checkpoint(config.init_from)
        try:
            model.load_state_dict(init["weights"])
        except RuntimeError as exc:
            raise ValueError(f"init_from {config.init_from}: weights do not fit this model config ({exc})") from None
    steps_per_epoch = max(1, len(train_set) // config.data.batch_size)
    lit = LitGenerative(
        model,
        lr=config.optim.lr,
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
        drop_last=len(train_set) > config.data.batch_size,
        num_workers=config.data.workers,
        augment=augment,
    )
    val_loader = make_loader(val_set, batch_size=config.data.batch_size) if val_set else None
    log = (
        CSVLogger(str(out), name="logs") if config.trainer.logger == "csv" else TensorBoardLogger(str(out), name="logs")
    )
    max_time = None
    if config.trainer.max_time_minutes is not None:
        max_time = {"minutes": config.trainer.max_time_minutes}
    trainer = pl.Trainer(
        max_epochs=config.trainer.max_epochs,
        max_time=max_time,
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        strategy="ddp" if config.trainer.devices > 1 else "auto",
        precision=config.trainer.precision,
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
        }
    )
    path = save_checkpoint(
        out / "model.pt",
        kind="joint",
        config=to_dict(resolved),
        weights=lit.export_weights(),
        dataset_stats=stats.to_dict(),
        metrics=metrics,
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("wrote %s (%s)", path, metrics)
    return path


def load_model(checkpoint: str | Path | dict[str, Any]) -> tuple[Any, TrainConfig, Any]:
    """``(model, config, dataset_stats)`` from a ``model.pt`` written by ``train``."""
    from crystalforge.config import from_dict
    from crystalforge.core.dataset_stats import DatasetStats
    from crystalforge.training.checkpoint import load_checkpoint

    data = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    config = from_dict(TrainConfig, data["config"])
    stats = None if data.get("dataset_stats") is None else DatasetStats.from_dict(data["dataset_stats"])
    model = build_model(config.model, stats)
    model.load_state_dict(data["weights"])
    model.eval()
    return model, config, stats
