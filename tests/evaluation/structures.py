"""Hand-built structures for the structure-matching tests: symmetry copies, perturbed, strained, doubled cells."""

from __future__ import annotations

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    supercell,
    translate,
)
from crystalforge.testing import tiny_crystals

TINY = {c.material_id: c for c in tiny_crystals()}


def triclinic() -> Crystal:
    """A P1 cell (no symmetry, so no primitive reduction and no equivalent atoms)."""
    return TINY["triclinic_5"]


def transformed(
    crystal: Crystal,
    *,
    seed: int = 0,
    repeats: tuple[int, int, int] | None = None,
    basis: bool = True,
    material_id: str | None = None,
) -> Crystal:
    """The same crystal rotated, translated, re-described by another basis, permuted and (optionally) repeated."""
    gen = torch.Generator().manual_seed(seed)
    batch = CrystalBatch.collate([crystal], dtype=torch.float64)
    if repeats is not None:
        batch = supercell(batch, repeats)
    batch = rotate(batch, random_rotations(1, generator=gen))
    batch = translate(batch, torch.rand(1, 3, generator=gen, dtype=torch.float64))
    if basis:
        batch = change_basis(batch, random_unimodular(1, generator=gen))
    batch = permute(batch, random_permutation(batch, generator=gen))
    return batch.split()[0].replace(material_id=material_id)


def perturbed(crystal: Crystal, displacement: float, *, seed: int = 0, material_id: str | None = None) -> Crystal:
    """Every atom moved by exactly ``displacement`` Å in a random direction."""
    rng = np.random.default_rng(seed)
    step = rng.normal(size=(crystal.num_atoms, 3))
    step *= displacement / np.linalg.norm(step, axis=1, keepdims=True)
    cart = crystal.cart_coords + step
    return crystal.replace(frac_coords=cart @ np.linalg.inv(crystal.lattice), material_id=material_id)


def strained(crystal: Crystal, factor: float = 1.8, material_id: str | None = None) -> Crystal:
    """Same composition, ``a`` stretched by ``factor`` (CSP's loose tolerances may still match it)."""
    return crystal.replace(lattice=np.diag([factor, 1.0, 1.0]) @ crystal.lattice, material_id=material_id)


def doubled(crystal: Crystal, atom: int = 0, material_id: str | None = None) -> Crystal:
    """Same formula, never a match: a 2x1x1 supercell with one atom of one copy moved.

    Its primitive cell has twice the sites of ``crystal``'s, and without ``attempt_supercell``
    pymatgen never matches cells with different site counts.
    """
    big = CrystalBatch.collate([crystal], dtype=torch.float64)
    big = supercell(big, (2, 1, 1)).split()[0]
    frac = big.frac_coords.copy()
    frac[2 * atom, 1] += 0.25  # atoms of the supercell are grouped per original atom, two images each
    return big.replace(frac_coords=frac, material_id=material_id)


def rock_salt(z_cation: int, z_anion: int, a: float, material_id: str) -> Crystal:
    """Two-atom fcc primitive cell of a rock-salt compound."""
    fcc = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]) * a
    return Crystal([z_cation, z_anion], [[0, 0, 0], [0.5, 0.5, 0.5]], fcc, material_id=material_id)
