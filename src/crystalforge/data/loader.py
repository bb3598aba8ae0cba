"""DataLoader factory: ``CrystalBatch``es sliced straight from a dataset's flat arrays.

A ``CrystalDataset`` keeps its crystals as flat arrays (``io.archive.CrystalArrays``); the loader
draws crystal indices and gathers their rows into one batch with a few array operations, so no
``Crystal`` object is built or re-packed per training step. Any other sequence of ``Crystal`` is
packed into arrays once, up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.data.augment import BatchAugment
from crystalforge.data.dataset import CrystalDataset
from crystalforge.io.archive import CrystalArrays


def arrays_to_batch(arrays: CrystalArrays, indices: Sequence[int] | np.ndarray, *, dtype: torch.dtype) -> CrystalBatch:
    """The crystals ``indices`` of ``arrays`` as one batch (float fields in ``dtype``; NaN properties masked)."""
    idx = np.asarray(indices, dtype=np.int64)
    atoms = arrays.atom_rows(idx)
    props = {k: torch.from_numpy(v[idx]).to(dtype) for k, v in arrays.properties.items()}
    ids = tuple(str(i) or None for i in arrays.material_ids[idx])
    return CrystalBatch(
        atomic_numbers=torch.from_numpy(arrays.atomic_numbers[atoms].astype(np.int64)),
        frac_coords=torch.from_numpy(arrays.frac_coords[atoms]).to(dtype),
        lattice=torch.from_numpy(arrays.lattice[idx]).to(dtype),
        num_atoms=torch.from_numpy(arrays.num_atoms[idx].astype(np.int64)),
        properties=props,
        condition_mask={k: ~torch.isnan(v) for k, v in props.items()},
        material_ids=ids if any(i is not None for i in ids) else None,
    )


def _collate(
    indices: list[int], *, arrays: CrystalArrays, dtype: torch.dtype, augment: BatchAugment | None
) -> CrystalBatch:
    batch = arrays_to_batch(arrays, indices, dtype=dtype)
    return augment(batch) if augment is not None else batch


def make_loader(
    dataset: CrystalDataset | Sequence[Crystal],
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    num_workers: int = 0,
    augment: BatchAugment | None = None,
) -> DataLoader[CrystalBatch]:
    """A ``DataLoader`` yielding ``CrystalBatch``es (seeded shuffling, float fields in ``dtype``).

    ``augment`` applies random symmetry transforms to every batch (torch's global RNG, seeded by
    the caller as usual for training).
    """
    arrays = dataset.arrays if isinstance(dataset, CrystalDataset) else CrystalArrays.from_crystals(list(dataset))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        range(len(arrays)),  # type: ignore[arg-type]  # a range is a map-style dataset of indices
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=partial(_collate, arrays=arrays, dtype=dtype, augment=augment),
    )
