"""Composition matrices: a cell's composition as an element × count one-hot matrix, and back.

MatGAN (Dan et al., npj Comput. Mater. 6, 84, 2020) represents a composition as a binary matrix
with one row per element of the vocabulary and one column per count ``0..K``: row ``e`` is the
one-hot vector of how many atoms of element ``e`` the composition holds. Here the counts are those
of the *cell* (what a CSP model is asked to place), ``K`` is the largest count seen in training
(``max_count``) and the vocabulary is the training data's elements in increasing Z.

The map is lossless for any cell whose elements are in the vocabulary and whose counts are at most
``K`` (``decode(one_hot(c)) == c``, tested); anything else is a ``ValueError`` naming the crystal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, MAX_Z, TypeVocabulary, z_to_symbol

__all__ = ["CompositionCodec"]


@dataclass(frozen=True)
class CompositionCodec:
    """Element × count one-hot matrices over ``elements`` (sorted Z) and counts ``0..max_count``.

    Shapes: ``E = len(elements)`` rows, ``C = max_count + 1`` columns.
    """

    elements: tuple[int, ...]
    max_count: int

    def __post_init__(self) -> None:
        if not self.elements:
            raise ValueError("a composition codec needs at least one element")
        if (
            list(self.elements) != sorted(set(self.elements))
            or not 1 <= min(self.elements) <= max(self.elements) <= MAX_Z
        ):
            raise ValueError(
                f"elements must be distinct atomic numbers 1..{MAX_Z} in increasing order, got {self.elements}"
            )
        if self.max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {self.max_count}")

    @property
    def num_elements(self) -> int:
        """``E``, the rows of a matrix."""
        return len(self.elements)

    @property
    def num_classes(self) -> int:
        """``C = max_count + 1``, the columns of a matrix (count 0 included)."""
        return self.max_count + 1

    @property
    def vocabulary(self) -> TypeVocabulary:
        """The elements as a ``TypeVocabulary`` (what element-set steering reads)."""
        return TypeVocabulary(self.elements)

    def row_of_z(self) -> np.ndarray:
        """Lookup ``[MAX_Z + 1]``: the matrix row of each atomic number, −1 outside the vocabulary."""
        lookup = np.full(MAX_Z + 1, -1, dtype=np.int64)
        lookup[list(self.elements)] = np.arange(self.num_elements)
        return lookup

    # ---- batch → counts → matrix ----------------------------------------------------------------
    def counts(self, batch: CrystalBatch) -> Tensor:
        """Atoms of each element in each crystal ``[B, E]`` int64; ``ValueError`` naming a bad crystal."""
        z = batch.atomic_numbers
        lookup = torch.from_numpy(self.row_of_z()).to(z.device)
        rows = lookup[z.clamp(0, MAX_Z)]
        outside = (rows < 0) | (z < 0) | (z > MAX_Z)
        if bool(outside.any()):
            atom = int(torch.nonzero(outside)[0, 0])
            crystal = int(batch.crystal_idx[atom])
            bad = sorted({int(v) for v in z[batch.crystal_idx == crystal].tolist()} - set(self.elements))
            names = ", ".join(
                "masked type" if v == MASK_Z else z_to_symbol(v) if 1 <= v <= MAX_Z else str(v) for v in bad
            )
            raise ValueError(
                f"crystal {_name(batch, crystal)}: element(s) {names} are not in the composition vocabulary "
                f"({self.num_elements} elements of the training data)"
            )
        out = torch.zeros(batch.num_crystals, self.num_elements, dtype=torch.int64, device=z.device)
        out.index_put_((batch.crystal_idx, rows), torch.ones_like(rows), accumulate=True)
        too_many = out > self.max_count
        if bool(too_many.any()):
            crystal, row = (int(v) for v in torch.nonzero(too_many)[0])
            raise ValueError(
                f"crystal {_name(batch, crystal)}: {int(out[crystal, row])} atoms of {z_to_symbol(self.elements[row])} "
                f"exceed the largest count of the composition matrix ({self.max_count})"
            )
        return out

    def one_hot(self, counts: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Counts ``[B, E]`` → one-hot matrices ``[B, E, C]``."""
        if counts.dim() != 2 or counts.shape[1] != self.num_elements:
            raise ValueError(f"counts must be [B, {self.num_elements}], got {tuple(counts.shape)}")
        if bool(((counts < 0) | (counts > self.max_count)).any()):
            raise ValueError(f"counts must lie in 0..{self.max_count}")
        return torch.nn.functional.one_hot(counts.long(), self.num_classes).to(dtype)

    def encode(self, batch: CrystalBatch, dtype: torch.dtype = torch.float32) -> Tensor:
        """The one-hot composition matrices ``[B, E, C]`` of a batch."""
        return self.one_hot(self.counts(batch), dtype)

    @staticmethod
    def decode(matrix: Tensor) -> Tensor:
        """Matrices ``[B, E, C]`` (one-hot, probabilities or logits) → counts ``[B, E]`` by row-wise argmax."""
        return matrix.argmax(dim=-1)

    # ---- counts → atoms ------------------------------------------------------------------------
    def atomic_numbers(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        """``(atomic_numbers [N], num_atoms [B])`` of counts ``[B, E]``: elements in increasing Z."""
        z_of_row = torch.tensor(self.elements, dtype=torch.int64, device=counts.device)
        repeats = counts.long().reshape(-1)
        z = torch.repeat_interleave(z_of_row.repeat(counts.shape[0]), repeats)
        return z, counts.long().sum(dim=1)

    def composition(self, counts: Tensor | np.ndarray) -> dict[int, int]:
        """``{Z: count}`` of one crystal's counts ``[E]`` (elements with count 0 left out)."""
        values = np.asarray(counts.cpu() if isinstance(counts, Tensor) else counts, dtype=np.int64).reshape(-1)
        return {z: int(c) for z, c in zip(self.elements, values.tolist(), strict=True) if c > 0}

    def counts_of(self, compositions: list[Mapping[int, int]]) -> Tensor:
        """Inverse of ``composition`` for several crystals: ``[B, E]`` int64."""
        lookup = self.row_of_z()
        out = torch.zeros(len(compositions), self.num_elements, dtype=torch.int64)
        for i, comp in enumerate(compositions):
            for z, c in comp.items():
                if not 0 <= z <= MAX_Z or lookup[z] < 0:
                    raise ValueError(f"composition {i}: element {z} is not in the composition vocabulary")
                out[i, int(lookup[z])] = int(c)
        return out


def _name(batch: CrystalBatch, index: int) -> str:
    """A crystal's id when the batch has one, else its index."""
    ident = batch.material_ids[index] if batch.material_ids else None
    return f"{ident!r} (#{index})" if ident is not None else f"#{index}"
