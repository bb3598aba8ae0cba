"""Sharded, epoch-seeded training data: the global batch does not depend on the number of processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from crystalforge.core.crystal import Crystal
from crystalforge.data.dataset import CrystalDataset
from crystalforge.io.archive import CrystalArrays
from crystalforge.testing import tiny_crystals
from crystalforge.training.distributed import CrystalDataModule, max_rank_difference
from crystalforge.training.ema import EMA

pytest.importorskip("lightning")


def _dataset(n: int) -> CrystalDataset:
    base = tiny_crystals()
    crystals = [
        Crystal(base[i % 5].atomic_numbers, base[i % 5].frac_coords, base[i % 5].lattice, material_id=f"c{i:02d}")
        for i in range(n)
    ]
    return CrystalDataset(CrystalArrays.from_crystals(crystals), name="tiny", split="train")


def _batches(data: CrystalDataModule, world: int, rank: int, epoch: int) -> list[list[str]]:
    data.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # type: ignore[assignment]
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]  # what Lightning calls every epoch
    return [list(batch.material_ids) for batch in loader]


def test_two_shards_of_8_make_the_global_batches_of_one_process_with_16():
    dataset = _dataset(32)
    one = CrystalDataModule(dataset, None, batch_size=16, seed=3, world_size=1)
    two = CrystalDataModule(dataset, None, batch_size=8, seed=3, world_size=2)
    for epoch in (0, 1):
        single = _batches(one, 1, 0, epoch)
        rank0, rank1 = _batches(two, 2, 0, epoch), _batches(two, 2, 1, epoch)
        assert len(single) == len(rank0) == len(rank1) == 2
        assert not {m for b in rank0 for m in b} & {m for b in rank1 for m in b}  # disjoint shards
        for k in range(2):
            assert sorted(rank0[k] + rank1[k]) == sorted(single[k])
    assert _batches(one, 1, 0, 0) != _batches(one, 1, 0, 1)  # each epoch its own order
    assert _batches(one, 1, 0, 1) == _batches(one, 1, 0, 1)  # and the same one again (resume)


def test_a_trainer_with_another_world_size_is_refused():
    data = CrystalDataModule(_dataset(8), None, batch_size=4, seed=0, world_size=2)
    with pytest.raises(ValueError, match=r"trainer runs 1 processes but trainer\.devices × trainer\.num_nodes = 2"):
        _batches(data, 1, 0, 0)


def test_without_a_process_group_processes_cannot_differ():
    assert max_rank_difference([torch.ones(3), torch.arange(3)]) == 0.0


def test_the_average_leaves_shared_memory():
    # ddp_spawn hands every process one shared-memory copy; each must average into its own
    ema = EMA(torch.nn.Linear(2, 1), decay=0.5)
    for t in ema.shadow.state_dict().values():
        t.share_memory_()
    before = ema.shadow.weight
    ema.own_memory()
    assert not any(t.is_shared() for t in ema.shadow.state_dict().values())
    assert ema.shadow.weight is not before and torch.equal(ema.shadow.weight, before)
    unshared = ema.shadow
    ema.own_memory()
    assert ema.shadow is unshared  # nothing copied when the memory is already private
