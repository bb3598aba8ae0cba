"""DataLoader factory: batches of ``CrystalBatch`` from any sequence of ``Crystal``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch.utils.data import DataLoader

from crystalforge.core.crystal import Crystal

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.augment import BatchAugment


def _collate(crystals: Sequence[Crystal], *, dtype: torch.dtype, augment: BatchAugment | None) -> CrystalBatch:
    batch = CrystalBatch.collate(crystals, dtype=dtype)
    return augment(batch) if augment is not None else batch


def make_loader(
    dataset: Sequence[Crystal],
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    num_workers: int = 0,
    augment: BatchAugment | None = None,
) -> DataLoader:
    """A ``DataLoader`` yielding ``CrystalBatch``es (seeded shuffling, float fields in ``dtype``).

    ``augment`` applies random symmetry transforms to every batch (torch's global RNG, seeded by
    the caller as usual for training).
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=partial(_collate, dtype=dtype, augment=augment),
    )
