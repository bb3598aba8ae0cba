"""Random symmetry transforms of a batch for training: the structures stay the same crystals.

Rotations change only the Cartesian frame, periodic translations only the origin, permutations
only the atom order, and unimodular basis changes only the choice of lattice vectors
(``core.symmetry_ops``). An invariant model gives the same outputs for all of them; these
transforms are for models that are not invariant by construction, and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    translate,
)


@dataclass(frozen=True)
class BatchAugment:
    """Apply the enabled random transforms, each with an independent draw per crystal."""

    rotate: bool = False
    translate: bool = True
    permute: bool = False
    change_basis: bool = False

    def __call__(self, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> CrystalBatch:
        """The transformed batch (the input is not modified)."""
        b = batch.num_crystals
        out = batch
        if self.permute:
            out = permute(out, random_permutation(out, generator=generator))
        if self.translate:
            shift = torch.rand(b, 3, generator=generator, dtype=torch.float64)
            out = translate(out, shift.to(out.frac_coords))
        if self.change_basis:
            out = change_basis(out, random_unimodular(b, generator=generator))
        if self.rotate:
            out = rotate(out, random_rotations(b, generator=generator).to(out.lattice))
        return out
