"""``Crystal`` ⇄ pymatgen ``Structure`` (atom order, lattice and coordinates kept exactly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


def structure_to_crystal(structure: Structure, *, material_id: str | None = None) -> Crystal:
    """Convert an ordered pymatgen ``Structure``; disordered or dummy species raise ``CrystalError``."""
    if not structure.is_ordered:
        raise CrystalError("disordered structure (partial occupancies) is not supported", source=material_id)
    numbers = []
    for index, site in enumerate(structure):
        z = getattr(site.specie, "Z", 0)
        if not z:
            raise CrystalError(f"unknown element {site.species_string!r} at site {index}", source=material_id)
        numbers.append(z)
    properties = {
        k: float(v)
        for k, v in (structure.properties or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return Crystal(
        atomic_numbers=np.asarray(numbers, dtype=np.int64),
        frac_coords=np.asarray(structure.frac_coords, dtype=np.float64),
        lattice=np.asarray(structure.lattice.matrix, dtype=np.float64),
        properties=properties,
        material_id=material_id,
    )


def crystal_to_structure(crystal: Crystal) -> Structure:
    """Convert to a pymatgen ``Structure`` with the same atom order; properties go to ``.properties``."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice(crystal.lattice),
        species=crystal.atomic_numbers.tolist(),
        coords=crystal.frac_coords,
        coords_are_cartesian=False,
        properties=dict(crystal.properties),
    )
