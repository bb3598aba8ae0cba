"""``Crystal``: one structure, NumPy, the IO-level record (the batched form is ``core.batch``).

Conventions (see ``docs/architecture.md``): rows of ``lattice`` are lattice vectors in Å,
``cart = frac @ lattice``, fractional coordinates wrapped to [0, 1), atomic numbers are Z.
Both types are frozen; change them with ``replace``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.elements import MAX_Z, element_table, symbol_to_z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.core.lattice import lattice_to_params
from crystalforge.core.periodic import frac_to_cart, pbc_diff, wrap_frac

if TYPE_CHECKING:  # pragma: no cover
    import ase
    from pymatgen.core import Structure

AVOGADRO = 6.02214076e23
MIN_RELATIVE_VOLUME = 1e-6
"""A cell is degenerate when ``volume / (a·b·c)`` (the sine-product of its angles) is below this."""


def _freeze(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Crystal:
    """One periodic crystal.

    Construction normalises and validates: arrays are copied to float64/int64 and made read-only,
    fractional coordinates are wrapped to [0, 1), and a left-handed lattice is made right-handed
    by negating all three vectors and the fractional coordinates (the same Cartesian structure).
    Bad data raises ``CrystalError`` naming ``material_id`` when one is given.
    """

    atomic_numbers: np.ndarray  # [n] int64, Z in 1..118
    frac_coords: np.ndarray  # [n, 3] float64 in [0, 1)
    lattice: np.ndarray  # [3, 3] float64, rows are lattice vectors, Å
    properties: Mapping[str, float] = field(default_factory=dict)
    material_id: str | None = None

    def __post_init__(self) -> None:
        try:
            z = np.array(self.atomic_numbers, dtype=np.int64).reshape(-1)
            frac = np.array(self.frac_coords, dtype=np.float64)
            lat = np.array(self.lattice, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CrystalError(f"cannot convert to arrays: {exc}", source=self.material_id) from None
        self._check(z, frac, lat)
        if np.linalg.det(lat) < 0:
            lat, frac = -lat, -frac
        props = {str(k): float(v) for k, v in dict(self.properties).items()}
        object.__setattr__(self, "atomic_numbers", _freeze(z))
        object.__setattr__(self, "frac_coords", _freeze(wrap_frac(frac)))
        object.__setattr__(self, "lattice", _freeze(lat))
        object.__setattr__(self, "properties", props)

    def _check(self, z: np.ndarray, frac: np.ndarray, lat: np.ndarray) -> None:
        def fail(problem: str) -> CrystalError:
            return CrystalError(problem, source=self.material_id)

        if lat.shape != (3, 3):
            raise fail(f"lattice must have shape (3, 3), got {lat.shape}")
        if frac.ndim != 2 or frac.shape[1] != 3:
            raise fail(f"frac_coords must have shape (n, 3), got {frac.shape}")
        if frac.shape[0] != z.shape[0]:
            raise fail(f"{z.shape[0]} atomic numbers but {frac.shape[0]} coordinate rows")
        if z.shape[0] == 0:
            raise fail("structure has no atoms")
        if not np.isfinite(lat).all():
            raise fail("lattice contains NaN or infinite values")
        if not np.isfinite(frac).all():
            rows = np.flatnonzero(~np.isfinite(frac).all(axis=1))
            raise fail(f"fractional coordinates of atom(s) {rows[:5].tolist()} are NaN or infinite")
        bad = z[(z < 1) | (z > MAX_Z)]
        if bad.size:
            raise fail(f"unknown element: atomic number {int(bad[0])} is outside 1..{MAX_Z}")
        lengths = np.linalg.norm(lat, axis=1)
        vol = abs(float(np.linalg.det(lat)))
        if lengths.min() <= 0 or vol <= MIN_RELATIVE_VOLUME * float(np.prod(lengths)):
            raise fail(
                f"lattice is degenerate (volume {vol:.3g} Å³ for vector lengths {np.round(lengths, 3).tolist()} Å)"
            )

    # ---- derived quantities -------------------------------------------------------------
    @property
    def num_atoms(self) -> int:
        """Number of atoms in the cell."""
        return int(self.atomic_numbers.shape[0])

    @property
    def cart_coords(self) -> np.ndarray:
        """Cartesian coordinates ``[n, 3]`` in Å."""
        return frac_to_cart(self.frac_coords, self.lattice)

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return float(np.linalg.det(self.lattice))

    @property
    def density(self) -> float:
        """Mass density in g/cm³."""
        mass = float(element_table().masses[self.atomic_numbers].sum())
        return mass / AVOGADRO / (self.volume * 1e-24)

    @property
    def lengths(self) -> np.ndarray:
        """Lattice lengths a, b, c ``[3]`` in Å."""
        return lattice_to_params(self.lattice)[0]

    @property
    def angles(self) -> np.ndarray:
        """Lattice angles alpha, beta, gamma ``[3]`` in degrees."""
        return lattice_to_params(self.lattice)[1]

    @property
    def composition(self) -> dict[str, int]:
        """Element symbol → count in the cell, in order of first appearance."""
        out: dict[str, int] = {}
        for z in self.atomic_numbers.tolist():
            sym = z_to_symbol(z)
            out[sym] = out.get(sym, 0) + 1
        return out

    @property
    def formula(self) -> str:
        """Reduced formula, elements by increasing electronegativity (pymatgen's order): ``"SrTiO3"``."""
        counts = self.composition
        g = 0
        for c in counts.values():
            g = math.gcd(g, c)
        chi = element_table().electronegativity

        def order(symbol: str) -> tuple[float, str]:
            x = chi[symbol_to_z(symbol)]
            return (float("inf") if np.isnan(x) else float(x), symbol)

        return "".join(f"{s}{counts[s] // g if counts[s] // g > 1 else ''}" for s in sorted(counts, key=order))

    # ---- changes and comparisons ----------------------------------------------------------
    def replace(self, **changes: Any) -> Crystal:
        """A copy with some fields changed (validated like any new ``Crystal``)."""
        return dataclasses.replace(self, **changes)

    def allclose(self, other: Crystal, *, atol: float = 1e-8) -> bool:
        """Same atoms in the same order, same lattice and coordinates (periodically) within ``atol``."""
        if self.num_atoms != other.num_atoms or not np.array_equal(self.atomic_numbers, other.atomic_numbers):
            return False
        diff = pbc_diff(self.frac_coords, other.frac_coords)
        return bool(np.allclose(self.lattice, other.lattice, atol=atol) and np.abs(diff).max() <= atol)

    def __repr__(self) -> str:
        lengths, angles = lattice_to_params(self.lattice)
        ident = f"{self.material_id!r}, " if self.material_id else ""
        return (
            f"Crystal({ident}{self.formula}, {self.num_atoms} atoms, "
            f"abc={np.round(lengths, 3).tolist()}, angles={np.round(angles, 2).tolist()})"
        )

    # ---- conversions (pymatgen and ASE are imported only here, when used) ------------------
    @classmethod
    def from_pymatgen(cls, structure: Structure, *, material_id: str | None = None) -> Crystal:
        """From an ordered pymatgen ``Structure`` (atom order, lattice and coordinates kept exactly).

        Disordered or dummy species raise ``CrystalError``; numeric ``structure.properties`` become
        properties.
        """
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
        return cls(
            atomic_numbers=np.asarray(numbers, dtype=np.int64),
            frac_coords=np.asarray(structure.frac_coords, dtype=np.float64),
            lattice=np.asarray(structure.lattice.matrix, dtype=np.float64),
            properties=properties,
            material_id=material_id,
        )

    def to_pymatgen(self) -> Structure:
        """To a pymatgen ``Structure`` with the same atom order; properties go to ``.properties``."""
        from pymatgen.core import Lattice, Structure

        return Structure(
            Lattice(self.lattice),
            species=self.atomic_numbers.tolist(),
            coords=self.frac_coords,
            coords_are_cartesian=False,
            properties=dict(self.properties),
        )

    @classmethod
    def from_ase(cls, atoms: ase.Atoms, *, material_id: str | None = None) -> Crystal:
        """From ASE ``Atoms`` with a full 3-D cell; numeric ``atoms.info`` entries become properties."""
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
        return cls(numbers, frac, cell, properties=properties, material_id=material_id)

    def to_ase(self) -> ase.Atoms:
        """To ASE ``Atoms`` with ``pbc=True``; properties and ``material_id`` go to ``info``."""
        import ase

        atoms = ase.Atoms(numbers=self.atomic_numbers, cell=self.lattice, scaled_positions=self.frac_coords, pbc=True)
        atoms.info.update(self.properties)
        if self.material_id is not None:
            atoms.info["material_id"] = self.material_id
        return atoms
