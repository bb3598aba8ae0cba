"""``Crystal`` ⇄ ASE ``Atoms`` (periodic in all three directions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError

if TYPE_CHECKING:  # pragma: no cover
    import ase


def atoms_to_crystal(atoms: ase.Atoms, *, material_id: str | None = None) -> Crystal:
    """Convert ASE ``Atoms`` with a full 3-D cell; numeric ``atoms.info`` entries become properties."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if atoms.cell.rank < 3:
        raise CrystalError(
            f"cell has rank {atoms.cell.rank}; a crystal needs three lattice vectors", source=material_id
        )
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    if numbers.size and numbers.min() < 1:
        raise CrystalError("unknown element (atomic number 0) in atoms", source=material_id)
    frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
    properties = {
        k: float(v)
        for k, v in atoms.info.items()
        if k != "material_id"  # an identifier, even when it looks like a number
        and isinstance(v, (int, float, np.floating, np.integer))
        and not isinstance(v, (bool, np.bool_))
    }
    return Crystal(numbers, frac, cell, properties=properties, material_id=material_id)


def crystal_to_atoms(crystal: Crystal) -> ase.Atoms:
    """Convert to ASE ``Atoms`` with ``pbc=True``; properties and ``material_id`` go to ``info``."""
    import ase

    atoms = ase.Atoms(
        numbers=crystal.atomic_numbers, cell=crystal.lattice, scaled_positions=crystal.frac_coords, pbc=True
    )
    atoms.info.update(crystal.properties)
    if crystal.material_id is not None:
        atoms.info["material_id"] = crystal.material_id
    return atoms
