"""``CrystalArrays``: many crystals as flat arrays + offsets, saved as one ``.npz`` archive.

This is both our own structure archive format (``write_structures(..., fmt="npz")``) and the
layout of the dataset preprocessing cache. Loading 10k crystals is a handful of array reads;
``Crystal`` objects are built only when indexed.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.limits import StructureLimits
from crystalforge.io.atomic import atomic_write

ARCHIVE_FORMAT = "crystalforge.arrays/1"


@dataclass(frozen=True)
class CrystalArrays:
    """Flat storage of B crystals with N atoms in total."""

    atomic_numbers: np.ndarray  # [N] int16
    frac_coords: np.ndarray  # [N, 3] float64
    lattice: np.ndarray  # [B, 3, 3] float64
    num_atoms: np.ndarray  # [B] int32
    material_ids: np.ndarray  # [B] str
    properties: dict[str, np.ndarray] = field(default_factory=dict)  # each [B] float64, NaN = missing
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-compatible

    def __post_init__(self) -> None:
        b, n = len(self.num_atoms), len(self.atomic_numbers)
        if self.num_atoms.ndim != 1 or self.num_atoms.dtype.kind not in "iu" or (self.num_atoms < 0).any():
            raise ValueError("num_atoms must be a 1-d array of counts >= 0")
        if self.lattice.shape != (b, 3, 3) or self.frac_coords.shape != (n, 3) or int(self.num_atoms.sum()) != n:
            raise ValueError("inconsistent CrystalArrays shapes")
        if len(self.material_ids) != b or any(v.shape != (b,) for v in self.properties.values()):
            raise ValueError("material_ids and properties need one entry per crystal")
        object.__setattr__(self, "_offsets", np.concatenate([[0], np.cumsum(self.num_atoms, dtype=np.int64)]))

    @classmethod
    def from_crystals(cls, crystals: Sequence[Crystal], *, metadata: dict[str, Any] | None = None) -> CrystalArrays:
        """Pack crystals (properties are the union of keys; missing values are NaN)."""
        keys = sorted({k for c in crystals for k in c.properties})
        z = [c.atomic_numbers for c in crystals]
        f = [c.frac_coords for c in crystals]
        return cls(
            atomic_numbers=np.concatenate(z).astype(np.int16) if z else np.zeros(0, np.int16),
            frac_coords=np.concatenate(f) if f else np.zeros((0, 3)),
            lattice=np.stack([c.lattice for c in crystals]) if crystals else np.zeros((0, 3, 3)),
            num_atoms=np.asarray([c.num_atoms for c in crystals], dtype=np.int32),
            material_ids=np.asarray([c.material_id or "" for c in crystals], dtype=str),
            properties={k: np.asarray([c.properties.get(k, np.nan) for c in crystals], dtype=np.float64) for k in keys},
            metadata=dict(metadata or {}),
        )

    def __len__(self) -> int:
        return len(self.num_atoms)

    @property
    def offsets(self) -> np.ndarray:
        """Index of each crystal's first atom, and the total at the end ``[B + 1]``."""
        offsets: np.ndarray = self._offsets  # type: ignore[attr-defined]  # set in __post_init__
        return offsets

    def atom_rows(self, indices: np.ndarray) -> np.ndarray:
        """The atom rows of crystals ``indices``, crystal by crystal, in that order ``[n]`` (no Python loop)."""
        idx = np.asarray(indices, dtype=np.int64)
        counts = self.num_atoms[idx].astype(np.int64)
        starts = self.offsets[idx]
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        rows: np.ndarray = np.repeat(starts, counts) + within
        return rows

    def select(self, indices: Sequence[int] | np.ndarray) -> CrystalArrays:
        """The crystals at ``indices`` (in that order) as a new ``CrystalArrays``."""
        idx = np.asarray(indices, dtype=np.int64)
        atoms = self.atom_rows(idx)
        return CrystalArrays(
            atomic_numbers=self.atomic_numbers[atoms],
            frac_coords=self.frac_coords[atoms],
            lattice=self.lattice[idx],
            num_atoms=self.num_atoms[idx],
            material_ids=self.material_ids[idx],
            properties={k: v[idx] for k, v in self.properties.items()},
            metadata=self.metadata,
        )

    def __getitem__(self, index: int) -> Crystal:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crystals")
        index %= len(self)
        s, e = self._offsets[index], self._offsets[index + 1]  # type: ignore[attr-defined]
        props = {k: float(v[index]) for k, v in self.properties.items() if not np.isnan(v[index])}
        ident = str(self.material_ids[index]) or None
        return Crystal(
            self.atomic_numbers[s:e], self.frac_coords[s:e], self.lattice[index], properties=props, material_id=ident
        )

    def __iter__(self) -> Iterator[Crystal]:
        for i in range(len(self)):
            yield self[i]

    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` atomically (fast to reload)."""
        arrays = {
            "atomic_numbers": self.atomic_numbers,
            "frac_coords": self.frac_coords,
            "lattice": self.lattice,
            "num_atoms": self.num_atoms,
            "material_ids": self.material_ids,
            "metadata": np.asarray(json.dumps({"format": ARCHIVE_FORMAT, **self.metadata})),
        }
        arrays.update({f"property:{k}": v for k, v in self.properties.items()})
        with atomic_write(path, "wb") as handle:
            # no key is "allow_pickle" (numpy >= 2.1 has that keyword; naming it would break older numpy)
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> CrystalArrays:
        """Read an archive written by ``save``; raises ``ValueError`` naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                if not isinstance(meta, dict) or meta.pop("format", None) != ARCHIVE_FORMAT:
                    raise ValueError("not a crystalforge archive (format tag missing or different)")
                return cls(
                    atomic_numbers=data["atomic_numbers"],
                    frac_coords=data["frac_coords"],
                    lattice=data["lattice"],
                    num_atoms=data["num_atoms"],
                    material_ids=data["material_ids"],
                    properties={k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("property:")},
                    metadata=meta,
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: cannot read crystal archive: {exc}") from None


def archive_records(path: str | Path, limits: StructureLimits) -> Iterator[Candidate]:
    """One record per crystal of an archive (``path:i``): a bad crystal, or one over ``limits``, is an error record.

    An unreadable archive raises ``ValueError`` naming the file (there is no record to skip to).
    """
    arrays = CrystalArrays.load(path)
    for i in range(len(arrays)):
        source, ident = f"{path}:{i}", str(arrays.material_ids[i]) or None
        try:
            crystal = arrays[i]
        except CrystalError as exc:
            yield Candidate(source, error=exc.problem, material_id=ident)
            continue
        problem = limits.problem(crystal)
        if problem is None:
            yield Candidate(source, crystal=crystal, material_id=ident)
        else:
            yield Candidate(source, error=problem, material_id=ident)
