"""Training sequences: ``prefix + <bos> + open tokens of the text`` with their slots, in length groups.

A crystal's text (``io.text`` via the tokenizer) is reduced to the tokens the model writes
(``decoding.model_stream``: the format's fixed tokens are left out) ending with ``<eos>``. The
network reads ``inputs`` (the sequence without its last token) with the ``slots`` of the tokens it
must predict, and is scored on ``targets`` (the sequence shifted by one; the prefix and ``<bos>``
are given, their targets ignored).

``order_atoms`` is the family's augmentation: the text lists sites in the crystal's atom order,
which carries no physics, so training shows each crystal in a fresh order every time. ``"grouped"``
keeps atoms of one element together (the header's element order, drawn at random, is then the order
of the site blocks), ``"random"`` shuffles all sites, ``"data"`` keeps the stored order.

``length_groups`` cuts a batch into groups of similar length so little compute goes to padding.
``sequence_bound`` is the longest sequence a crystal of at most ``max_atoms`` atoms and
``max_elements`` elements can give, the model's ``block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MAX_Z
from crystalforge.core.symmetry_ops import permute
from crystalforge.generative.autoregressive.decoding import FormatTables, model_stream
from crystalforge.representations.tokens import CrystalText

__all__ = ["IGNORE", "AtomOrder", "TrainingSequence", "length_groups", "order_atoms", "pad", "sequence_bound",
           "training_sequences"]  # fmt: skip

AtomOrder = Literal["grouped", "random", "data"]
IGNORE = -100
"""Cross-entropy target of positions that are not scored."""


@dataclass(frozen=True)
class TrainingSequence:
    """One crystal's training sequence: ``inputs``, ``slots`` and ``targets`` of equal length."""

    inputs: list[int]
    slots: list[int]
    targets: list[int]


def sequence_bound(text: CrystalText, *, max_atoms: int, max_elements: int, prefix_length: int) -> int:
    """Positions of the longest possible sequence (prefix, ``<bos>``, open tokens, ``<eos>``)."""
    kinds = max(1, min(max_elements, max_atoms))
    header = kinds * (1 + len(str(max_atoms))) + 1  # (symbol, count digits)…, newline
    lattice = 3 * (3 + 1 + text.length_decimals) + 3 * (3 + 1 + text.angle_decimals)  # integer, dot, decimals
    site = 1 + 3 * text.coord_decimals
    return prefix_length + 1 + header + lattice + max_atoms * site + 1


def order_atoms(batch: CrystalBatch, order: AtomOrder, *, generator: torch.Generator | None = None) -> CrystalBatch:
    """``batch`` with the atoms of every crystal reordered as ``order`` says (see the module docstring)."""
    if order == "data":
        return batch
    owner = batch.crystal_idx.cpu().numpy()
    within = torch.rand(len(owner), generator=generator, dtype=torch.float64).numpy()
    if order == "grouped":
        group = torch.rand(batch.num_crystals, MAX_Z + 1, generator=generator, dtype=torch.float64)
        element = group[batch.crystal_idx.cpu(), batch.atomic_numbers.cpu()].numpy()
        perm = np.lexsort((within, element, owner))
    elif order == "random":
        perm = np.lexsort((within, owner))
    else:
        raise ValueError(f"atom order must be 'grouped', 'random' or 'data', got {order!r}")
    return permute(batch, torch.from_numpy(perm).to(batch.device))


def training_sequences(
    batch: CrystalBatch, tables: FormatTables, prefix: Tensor, *, block_size: int
) -> list[TrainingSequence]:  # prefix: [B, P]
    """Every crystal's training sequence; ``ValueError`` naming one that does not fit ``block_size``."""
    out = []
    tokenizer = tables.tokenizer
    for head, crystal in zip(prefix.cpu().tolist(), batch.split(), strict=True):
        ids = tokenizer.encode_crystal(crystal)[1:]  # the text and <eos>
        tokens, slots = model_stream(tables, ids, crystal.num_atoms, source=crystal.material_id)
        full = [*head, tokenizer.bos_id, *tokens]
        if len(full) - 1 > block_size:
            raise ValueError(
                f"{crystal.material_id or 'a training crystal'}: its sequence needs {len(full) - 1} positions, "
                f"the model has {block_size} (more atoms or elements than the statistics the model was sized by)"
            )
        p = len(head)
        out.append(TrainingSequence(full[:-1], [0] * p + slots, [IGNORE] * p + full[p + 1 :]))
    return out


def length_groups(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by length (longest first) so each group's padded size ``count × longest`` fits ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def pad(rows: list[list[int]], value: int, device: torch.device) -> Tensor:
    """``[len(rows), longest]`` int64, ``value`` after each row's end."""
    padded = pad_sequence([torch.tensor(r, dtype=torch.int64) for r in rows], batch_first=True, padding_value=value)
    return padded.to(device)
