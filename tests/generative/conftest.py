"""Shared fixtures of the generative tests: single-threaded torch and small batch builders."""

from __future__ import annotations

import pytest
import torch

from crystalforge.core.batch import CrystalBatch

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Oracle runs push thousands of tiny ops; these tests run single-threaded (``tests/conftest.py``)."""
    return


def make_batch(num_atoms, *, z=6, dtype=F64):
    """A batch with the given atom counts (cubic 4 Å cells, atoms at the origin)."""
    n = torch.as_tensor(num_atoms, dtype=torch.int64)
    total = int(n.sum())
    return CrystalBatch(
        atomic_numbers=torch.full((total,), z, dtype=torch.int64),
        frac_coords=torch.zeros(total, 3, dtype=dtype),
        lattice=4.0 * torch.eye(3, dtype=dtype).expand(len(n), 3, 3).clone(),
        num_atoms=n,
    )


def gen(seed):
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def steps(num):
    """Sampler times t_i = i/num and step sizes 1/num."""
    return [(torch.tensor(i / num, dtype=F64), 1.0 / num) for i in range(num)]
