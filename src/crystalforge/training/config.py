"""Training run configs: data, optimiser, trainer and the model family's own config.

Plain frozen dataclasses read from YAML (``crystalforge.config``); the ``model`` section is parsed
by the family named in ``family`` (``crystalforge.registry``), so every family trains through the
same run, checkpoint and CLI code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crystalforge.registry import DEFAULT_FAMILY, get_family


@dataclass(frozen=True)
class DataConfig:
    """Which data, how batched."""

    dataset: str = "perov_5"  # a benchmark name, or a folder/file of your own structures
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation
    properties: str | None = None  # your own structures: a CSV property table (ids + numeric columns)
    val_fraction: float = 0.1  # your own structures: the seeded share held out for validation
    root: str | None = None
    batch_size: int = 256
    limit: int | None = None  # use only the first N training structures (smoke runs)
    augment: bool = False  # random rotation/translation/permutation (the model is invariant anyway)
    workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, warm-up + cosine, EMA, clipping (``grad_clip: 0`` turns clipping off)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays (GANs: (0.5, 0.9) or (0.0, 0.9))
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
    # processes: devices per node × num_nodes (data.batch_size is per process; the LR schedule counts
    # optimiser steps of the global batch). More than one trains with DDP (docs/scale.md: SLURM, torchrun)
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy name; "auto" is "ddp" for several processes ("ddp_spawn" also works)
    precision: str = "32-true"
    seed: int = 0
    logger: Literal["csv", "tensorboard"] = "csv"
    check_val_every_n_epoch: int = 5
    log_every_n_steps: int | None = None  # None: every min(50, steps per epoch) optimiser steps
    threads: int | None = None  # torch CPU threads (None: torch's default)


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (``crystalforge train CONFIG [--set key=value ...]``)."""

    name: str = "model"
    init_from: str | None = None  # a model.pt or shipped name whose weights start this run (training.adapters)
    freeze: tuple[str, ...] = ()  # parameters not to train: "pretrained" (init_from's) or name globs
    family: str = DEFAULT_FAMILY  # the model family (crystalforge.registry); "joint" = flow/diffusion
    # the family's own config (a dataclass of ``get_family(family).config_type``); plain data from a
    # YAML file is parsed into it on construction, with unknown keys and wrong types as errors
    model: object = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", get_family(self.family).parse(self.model))

    @property
    def world_size(self) -> int:
        """Processes that share one global batch under DDP (devices × nodes)."""
        return max(1, self.trainer.devices) * max(1, self.trainer.num_nodes)
