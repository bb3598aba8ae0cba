"""Resource limits: reject a structure that would exhaust memory or time before any work starts.

A ``Crystal`` accepts any physically possible cell; what a job can afford is a separate question.
Neighbour searches, fingerprints and relaxations grow with the atom count and with the number of
periodic images a cutoff reaches, so a 50,000-atom file or a cell with a 1e-3 Å³ volume per atom
can take a machine's whole memory. ``check_limits`` turns those into a ``CrystalError`` that names
the record, up front. The defaults are far above every benchmark (mp_20 ≤ 20 atoms, MPTS-52 ≤ 52)
and can be raised by a user who means it (``StructureLimits(max_atoms=5000)``, or the environment
variable ``CRYSTALFORGE_MAX_ATOMS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.lattice import lll_reduction, plane_spacings

MAX_ATOMS_ENV = "CRYSTALFORGE_MAX_ATOMS"


@dataclass(frozen=True)
class StructureLimits:
    """What one structure may cost.

    Attributes:
        max_atoms: atoms per cell.
        max_length: longest lattice vector, Å (a slab with a vacuum gap stays far below it).
        min_volume_per_atom: Å³ per atom; below it atoms sit on top of each other (diamond: 5.7).
        max_volume_per_atom: Å³ per atom; above it the cell is mostly empty (a molecule in a box of
            a few hundred Å³ per atom passes).
        min_height: Å, the smallest distance between opposite faces of the LLL-reduced cell (the
            same lattice in its most compact basis, so a skewed but sound basis passes). Below it
            every atom sits that close to a periodic image of itself, and a neighbour search with
            cutoff ``r`` visits ``r / height`` images along that direction.

    """

    max_atoms: int = 1000
    max_length: float = 1000.0
    min_volume_per_atom: float = 0.5
    max_volume_per_atom: float = 1.0e5
    min_height: float = 0.5

    @classmethod
    def from_env(cls) -> StructureLimits:
        """Defaults, with ``max_atoms`` taken from ``CRYSTALFORGE_MAX_ATOMS`` when it is set."""
        raw = os.environ.get(MAX_ATOMS_ENV)
        if raw is None or not raw.strip():
            return cls()
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{MAX_ATOMS_ENV}={raw!r} is not an integer") from None
        if value < 1:
            raise ValueError(f"{MAX_ATOMS_ENV}={raw!r} must be at least 1")
        return cls(max_atoms=value)

    def count_problem(self, n: int) -> str | None:
        """Why ``n`` atoms (a count read from a file header, before parsing) are over the limit, or None."""
        if n > self.max_atoms:
            return (
                f"{n} atoms exceed the limit of {self.max_atoms} per structure "
                f"(raise it with {MAX_ATOMS_ENV} if this is intended)"
            )
        return None

    def problem(self, crystal: Crystal) -> str | None:
        """Why ``crystal`` is over a limit, or None when it is within all of them."""
        n = crystal.num_atoms
        if (too_many := self.count_problem(n)) is not None:
            return too_many
        longest = float(np.linalg.norm(crystal.lattice, axis=1).max())
        if not longest <= self.max_length:
            return f"a lattice vector of {longest:.4g} Å exceeds the limit of {self.max_length:g} Å"
        height = thinnest_height(crystal.lattice)
        if not height >= self.min_height:
            return f"the cell is {height:.3g} Å thick, below {self.min_height:g} Å (atoms would touch their own images)"
        per_atom = crystal.volume / n
        if not per_atom >= self.min_volume_per_atom:
            return f"volume per atom {per_atom:.3g} Å³ is below {self.min_volume_per_atom:g} Å³ (atoms would overlap)"
        if not per_atom <= self.max_volume_per_atom:
            return f"volume per atom {per_atom:.3g} Å³ exceeds {self.max_volume_per_atom:g} Å³"
        return None

    def check(self, crystal: Crystal, *, source: str | None = None) -> Crystal:
        """``crystal`` itself when it is within limits; otherwise a ``CrystalError`` naming it."""
        why = self.problem(crystal)
        if why is not None:
            raise CrystalError(why, source=source or crystal.material_id)
        return crystal


def thinnest_height(lattice: np.ndarray) -> float:
    """Å: the smallest lattice-plane spacing of the LLL-reduced basis of ``lattice`` (rows: vectors)."""
    m = lll_reduction(lattice)
    basis = lattice if m is None else m.astype(np.float64) @ lattice
    return float(np.min(plane_spacings(basis)))


DEFAULT_LIMITS = StructureLimits()


def check_limits(crystal: Crystal, *, source: str | None = None, limits: StructureLimits | None = None) -> Crystal:
    """``crystal`` when within ``limits`` (default: ``StructureLimits.from_env()``); else ``CrystalError``."""
    return (limits or StructureLimits.from_env()).check(crystal, source=source)
