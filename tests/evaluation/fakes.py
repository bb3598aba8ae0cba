"""Cheap stand-ins for the objects an evaluation receives: fingerprint featurizers, a relaxer, a hull."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.hull import HullEntry, ReferenceHull
from crystalforge.relax.interfaces import RelaxResult


class CompositionCounts:
    """A cheap fake fingerprint: element counts per Z bucket (composition) or lengths (structure)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls = 0

    def featurize(self, crystals: Sequence[Crystal]) -> np.ndarray:
        self._calls += 1
        if self.name == "fake_struct":
            return np.array([sorted(c.lengths) for c in crystals], dtype=np.float64)
        out = np.zeros((len(crystals), 10))
        for row, c in zip(out, crystals, strict=True):
            for z in c.atomic_numbers:
                row[z % 10] += 1.0 / c.num_atoms
        return out


class KeyedFingerprint:
    """A fingerprint looked up by ``material_id`` (NaN row for an id it does not know)."""

    def __init__(self, name: str, table: Mapping[str, tuple[float, ...]]) -> None:
        self.name = name
        self.table = dict(table)

    def featurize(self, crystals: Sequence[Crystal]) -> np.ndarray:
        width = len(next(iter(self.table.values())))
        nan = (float("nan"),) * width
        return np.array([self.table.get(str(c.material_id), nan) for c in crystals], dtype=np.float64).reshape(
            len(crystals), width
        )


class FakeRelaxer:
    """Returns each input unchanged with -2.2 eV/atom for NaCl, -1 eV/atom otherwise ("explodes" fails)."""

    name = "fake"
    settings: ClassVar[dict[str, str]] = {"kind": "fake"}

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        out = []
        for c in crystals:
            if c.material_id == "explodes":
                out.append(RelaxResult.failed("explosion: test", material_id=c.material_id))
                continue
            e = -2.2 if set(c.composition) == {"Na", "Cl"} else -1.0
            out.append(
                RelaxResult(
                    crystal=c,
                    energy=e * c.num_atoms,
                    energy_per_atom=e,
                    initial_energy_per_atom=e + 0.1,
                    rmsd=0.01,
                    steps=3,
                    converged=True,
                    material_id=c.material_id,
                )
            )
        return out


def nacl_hull() -> ReferenceHull:
    """Na and Cl at -1 eV/atom, NaCl at -2 eV/atom (the fake relaxer puts NaCl 0.2 eV/atom below)."""
    return ReferenceHull(
        [
            HullEntry("na", "Na1", -1.0, "t"),
            HullEntry("cl", "Cl1", -1.0, "t"),
            HullEntry("nacl", "Na1 Cl1", -2.0, "t"),
        ]
    )
