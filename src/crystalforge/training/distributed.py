"""Data for one or many training processes, and a check that they hold the same weights.

Every process builds its loaders inside Lightning (``train_dataloader`` runs after the strategy
knows the world size and this process's rank) with a ``DistributedSampler``; one process is the
case ``world_size = 1``. The sampler shuffles with ``randperm(n, seed + epoch)`` and rank ``r``
takes every ``world_size``-th index from ``r``, so the global batch of step ``k`` holds the same
structures for any number of processes (1 × 16 and 2 × 8 see the same 16), and an epoch's order
depends on the seed and the epoch alone: a resumed run re-creates it, nothing of the loader is saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.dataset import CrystalDataset
from crystalforge.data.loader import arrays_to_batch


class CrystalDataModule(pl.LightningDataModule):
    """Sharded, epoch-seeded loaders over a training set and an optional validation set.

    Args:
        train_set: the training structures.
        val_set: the validation structures (None or empty: no validation).
        batch_size: structures per process and step (the global batch is ``batch_size × world_size``).
        seed: the shuffle seed (the epoch is added to it).
        world_size: the number of processes the run's LR schedule was computed for; a trainer
            with another number is an error (the schedule would be wrong).
        workers: DataLoader worker processes.

    """

    def __init__(
        self,
        train_set: CrystalDataset,
        val_set: CrystalDataset | None,
        *,
        batch_size: int,
        seed: int,
        world_size: int,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = train_set
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.workers = workers

    def _place(self) -> tuple[int, int]:
        """``(world_size, rank)`` of this process, checked against the configured world size."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("CrystalDataModule builds its loaders inside a Lightning trainer")
        world, rank = trainer.world_size, trainer.global_rank
        if world != self.world_size:
            raise ValueError(
                f"the trainer runs {world} processes but trainer.devices × trainer.num_nodes = {self.world_size}: "
                "set them to the real counts (the learning-rate schedule is computed from them)"
            )
        return world, rank

    def _loader(self, dataset: CrystalDataset, *, shuffle: bool, drop_last: bool) -> DataLoader[CrystalBatch]:
        world, rank = self._place()
        indices = range(len(dataset))  # a map-style dataset of indices (typed as a Dataset below)
        sampler: DistributedSampler[int] = DistributedSampler(
            indices,  # type: ignore[arg-type]
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=self.seed,
        )
        return DataLoader(
            indices,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.workers,
            collate_fn=partial(arrays_to_batch, dataset.arrays, dtype=torch.float32),
        )

    def train_dataloader(self) -> DataLoader[CrystalBatch]:
        """The shard of this process; incomplete batches are dropped when the shard holds more than one batch."""
        per_process = math.ceil(len(self.train_set) / self.world_size)
        return self._loader(self.train_set, shuffle=True, drop_last=per_process > self.batch_size)

    def transfer_batch_to_device(self, batch: CrystalBatch, device: torch.device, dataloader_idx: int) -> CrystalBatch:
        """``CrystalBatch.to`` moves every field."""
        return batch.to(device)

    def val_dataloader(self) -> DataLoader[CrystalBatch] | list[DataLoader[CrystalBatch]]:
        """The share of the validation set of this process, in order (none: an empty list)."""
        if self.val_set is None:
            return []
        return self._loader(self.val_set, shuffle=False, drop_last=False)


def max_rank_difference(tensors: Iterable[torch.Tensor]) -> float:
    """The largest difference between this process's floating-point ``tensors`` and rank 0's.

    A collective: every process of the group calls it with the same tensors (by name and shape).
    Without an initialised process group it is 0.
    """
    values = [t.detach().reshape(-1).float() for t in tensors if t.is_floating_point()]
    if not values or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    mine = torch.cat(values)
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    gap = (mine - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)
