"""Pure transforms of a batch that leave the physical crystals unchanged (or replicate them).

Used by the invariance tests and by data augmentation. With ``L`` rows = lattice vectors and
``x = f L``:

- ``rotate``: ``L' = L Rᵀ`` (Cartesian frame rotated by ``R``), ``f`` unchanged;
- ``permute``: atoms reordered within each crystal;
- ``translate``: ``f' = wrap(f + s)`` with one shift ``s`` per crystal;
- ``change_basis``: ``L' = M L``, ``f' = wrap(f M⁻¹)`` with ``M`` integer, ``det M = ±1``;
- ``supercell``: ``L' = diag(n) L`` with atoms replicated (``n`` per axis, same for the batch).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.periodic import wrap_frac


def random_rotations(
    num: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Uniform random proper rotations ``[num, 3, 3]`` (QR of a Gaussian matrix, sign-fixed)."""
    g = torch.randn(num, 3, 3, generator=generator, dtype=dtype)
    q: Tensor
    r: Tensor
    q, r = torch.linalg.qr(g)  # torch.linalg is untyped in torch's stubs
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q


def random_unimodular(num: int, *, generator: torch.Generator | None = None, steps: int = 3) -> Tensor:
    """Random integer matrices with det = +1 ``[num, 3, 3]`` (products of elementary shears)."""
    out = torch.eye(3, dtype=torch.int64).repeat(num, 1, 1)
    for _ in range(steps):
        for b in range(num):
            r, c = torch.randperm(3, generator=generator)[:2].tolist()
            k = int(torch.randint(-1, 2, (1,), generator=generator))
            shear = torch.eye(3, dtype=torch.int64)
            shear[r, c] = k
            out[b] = shear @ out[b]
    return out


def random_permutation(batch: CrystalBatch, *, generator: torch.Generator | None = None) -> Tensor:
    """A permutation ``[N]`` of global atom indices that keeps every atom in its crystal."""
    keys = torch.rand(batch.atomic_numbers.shape[0], generator=generator).to(batch.device)
    order = torch.argsort(batch.crystal_idx.to(keys.dtype) * 2.0 + keys)
    return order


def rotate(batch: CrystalBatch, rotation: Tensor) -> CrystalBatch:
    """Rotate the Cartesian frame: ``L' = L Rᵀ`` with ``rotation [B, 3, 3]`` or ``[3, 3]``."""
    rot = rotation.to(batch.lattice)
    return batch.replace(lattice=batch.lattice @ rot.transpose(-1, -2))


def permute(batch: CrystalBatch, permutation: Tensor) -> CrystalBatch:
    """Reorder atoms: new atom ``a`` is old atom ``permutation[a]`` (must stay within crystals)."""
    perm = permutation.to(batch.device)
    if not torch.equal(batch.crystal_idx[perm], batch.crystal_idx):
        raise ValueError("permutation moves atoms between crystals")
    changes = {"atomic_numbers": batch.atomic_numbers[perm], "frac_coords": batch.frac_coords[perm]}
    if batch.fixed is not None:
        changes["fixed"] = batch.fixed[perm]
    return batch.replace(**changes)


def translate(batch: CrystalBatch, shift: Tensor) -> CrystalBatch:
    """Shift all atoms of crystal b by ``shift[b]`` (fractional, ``[B, 3]``), then wrap."""
    s = shift.to(batch.frac_coords)
    return batch.replace(frac_coords=wrap_frac(batch.frac_coords + s[batch.crystal_idx]))


def change_basis(batch: CrystalBatch, matrix: Tensor) -> CrystalBatch:
    """Describe the same lattice with new vectors ``L' = M L`` (``M [B, 3, 3]`` integer, det ±1).

    A ``det M = −1`` choice is followed by negating all vectors so the cell stays right-handed.
    """
    m = matrix.to(torch.int64)
    det = torch.round(torch.linalg.det(m.double())).to(torch.int64)
    if bool((det.abs() != 1).any()):
        raise ValueError("change_basis needs integer matrices with det = ±1")
    sign = det.to(batch.lattice.dtype)[:, None, None]
    mf = m.to(batch.lattice.dtype) * sign
    new_lattice = mf @ batch.lattice
    inv = torch.linalg.inv(mf)
    new_frac = (batch.frac_coords[:, None, :] @ inv[batch.crystal_idx])[:, 0, :]
    return batch.replace(lattice=new_lattice, frac_coords=wrap_frac(new_frac))


def supercell(batch: CrystalBatch, repeats: tuple[int, int, int]) -> CrystalBatch:
    """Replicate every crystal ``repeats`` times along a, b, c (atoms of each cell copy contiguous per crystal)."""
    if min(repeats) < 1:
        raise ValueError("repeats must be positive")
    reps = torch.tensor(repeats, dtype=batch.frac_coords.dtype, device=batch.device)
    images = torch.tensor(
        list(itertools.product(*(range(r) for r in repeats))), dtype=batch.frac_coords.dtype, device=batch.device
    )
    count = images.shape[0]
    # order atoms crystal by crystal: for crystal b, all images of its atoms
    order = torch.argsort(batch.crystal_idx, stable=True)
    frac = batch.frac_coords[order]
    z = batch.atomic_numbers[order]
    owner = batch.crystal_idx[order]
    new_frac = ((frac[:, None, :] + images[None]) / reps).reshape(-1, 3)  # [N * count, 3]
    new_z = z.repeat_interleave(count)
    new_owner = owner.repeat_interleave(count)
    regroup = torch.argsort(new_owner, stable=True)
    scale = torch.diag(reps)
    fixed = None if batch.fixed is None else batch.fixed[order].repeat_interleave(count)[regroup]
    return batch.replace(
        atomic_numbers=new_z[regroup],
        frac_coords=wrap_frac(new_frac[regroup]),
        fixed=fixed,
        lattice=scale @ batch.lattice,
        num_atoms=batch.num_atoms * count,
    )
