"""The field table: which batch fields are per-atom or per-crystal, their dtype, shape and unit.

``CrystalBatch.collate``/``split``/``to`` and generic generative code read this table instead of
hard-coding field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Level(str, Enum):
    """What one row of a field belongs to."""

    ATOM = "atom"
    CRYSTAL = "crystal"
    EDGE = "edge"


@dataclass(frozen=True)
class FieldSpec:
    """Description of one batch field."""

    name: str
    level: Level
    dtype: torch.dtype | None  # None: any floating dtype (the batch's working precision)
    trailing_shape: tuple[int, ...]
    unit: str
    description: str
    optional: bool = False  # may be None on a batch (then it is absent, not empty)


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("atomic_numbers", Level.ATOM, torch.int64, (), "", "Z of each atom; MASK_Z = 0 while unknown"),
        FieldSpec("frac_coords", Level.ATOM, None, (3,), "", "fractional coordinates in [0, 1)"),
        FieldSpec("lattice", Level.CRYSTAL, None, (3, 3), "Å", "rows are lattice vectors"),
        FieldSpec("num_atoms", Level.CRYSTAL, torch.int64, (), "", "atoms per crystal"),
        FieldSpec(
            "fixed",
            Level.ATOM,
            torch.bool,
            (),
            "",
            "True for an atom whose type and position are given (inpainting)",
            optional=True,
        ),
    )
}
"""Tensor fields of a batch. ``properties`` are per-crystal too, keyed by name; ``latents`` are the
working values of generated fields (see ``CrystalBatch``) and follow their field's level."""

ATOM_FIELDS = tuple(n for n, s in FIELDS.items() if s.level is Level.ATOM)
CRYSTAL_FIELDS = tuple(n for n, s in FIELDS.items() if s.level is Level.CRYSTAL)
REQUIRED_FIELDS = tuple(n for n, s in FIELDS.items() if not s.optional)
