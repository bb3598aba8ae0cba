"""A fixed-size memory of training structures, filled by one seeded reservoir pass over the data.

The search baselines "train" by remembering. ``CrystalMemory.observe(batch)`` is called from the
model's ``loss`` (under ``torch.no_grad``, only in training mode). The loss is the hook because it is
the one place the training structures reach a model: the Lightning adapter calls only
``model.loss(batch)``, and ``registry.Family.resolve`` sees dataset statistics, never structures.

**Reservoir.** ``capacity`` slots; the ``i``-th structure seen (0-based) takes slot ``i`` while
``i < capacity``, else slot ``j`` drawn uniformly from ``0..i`` when ``j < capacity`` (Vitter's
algorithm R), so every structure of the pass is kept with the same probability. The draws of a batch
come from a generator seeded by ``(seed, structures seen so far)``: the memory depends only on the
seed and the loader's (seeded) order, also after a resume.

**One pass.** The pass ends once ``pass_size`` structures were seen, or when fewer remain than the
batch just seen (the training loader drops an incomplete last batch); later epochs leave the memory
unchanged, so it holds each training structure at most once. ``pass_size = 0`` never ends the pass.
Under DDP every process sees only its share and the processes' memories are not merged: train these
families on one device.

**Storage.** Every buffer is an integer tensor: atomic numbers as int16 (0 pads), fractional
coordinates and lattices as the bit patterns of float32 values (``Tensor.view(torch.int32)``). The
trainer's weight average (``training.ema``) blends floating buffers but copies integer ones, and a
memory must come back exactly as it was written.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch

__all__ = ["CrystalMemory", "rows_for_size", "scale_counts"]


def _bits(x: Tensor) -> Tensor:
    """Float values as int32 bit patterns (exact round trip through ``_floats``)."""
    return x.to(torch.float32).contiguous().view(torch.int32)


def _floats(bits: Tensor) -> Tensor:
    """Inverse of ``_bits``."""
    return bits.contiguous().view(torch.float32)


class CrystalMemory(nn.Module):
    """``capacity`` training structures of at most ``max_atoms`` atoms (types, and geometry if asked).

    Args:
        capacity: number of slots ``K``.
        max_atoms: ``A``, the padded width (the largest training structure).
        pass_size: structures in one pass over the training data (0: unknown, never complete).
        seed: seed of the reservoir draws.
        geometry: also keep fractional coordinates and lattices (prototypes), not only types.

    """

    def __init__(
        self, capacity: int, max_atoms: int, *, pass_size: int = 0, seed: int = 0, geometry: bool = False
    ) -> None:
        super().__init__()
        if capacity < 0 or max_atoms < 0 or pass_size < 0:
            raise ValueError(f"capacity, max_atoms, pass_size must be >= 0, got {capacity}, {max_atoms}, {pass_size}")
        self.capacity = capacity
        self.max_atoms = max_atoms
        self.pass_size = pass_size
        self.seed = seed
        self.geometry = geometry
        self.atomic_numbers: Tensor
        self.frac_bits: Tensor
        self.lattice_bits: Tensor
        self.seen: Tensor
        self.complete: Tensor
        self.register_buffer("atomic_numbers", torch.zeros(capacity, max_atoms, dtype=torch.int16))  # [K, A]
        if geometry:
            self.register_buffer("frac_bits", torch.zeros(capacity, max_atoms, 3, dtype=torch.int32))  # [K, A, 3]
            self.register_buffer("lattice_bits", torch.zeros(capacity, 3, 3, dtype=torch.int32))  # [K, 3, 3]
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("complete", torch.zeros((), dtype=torch.int64))

    # ---- filling ------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, batch: CrystalBatch) -> None:
        """Offer every crystal of ``batch`` to the reservoir (a no-op once the pass is complete)."""
        if bool(self.complete) or self.capacity == 0:
            return
        b = batch.num_crystals
        seen = int(self.seen)
        slots = self._slots(seen, b)
        keep: dict[int, int] = {}  # slot → crystal; a later crystal drawing the same slot replaces an earlier one
        sizes = batch.num_atoms.tolist()
        for crystal, slot in enumerate(slots):
            if slot >= 0 and sizes[crystal] <= self.max_atoms:
                keep[slot] = crystal
        if keep:
            self._write(batch, torch.tensor(list(keep), dtype=torch.int64), torch.tensor(list(keep.values())))
        self.seen.fill_(seen + b)
        if self.pass_size and self.pass_size - (seen + b) < b:  # done, or only a dropped remainder is left
            self.complete.fill_(1)

    def _slots(self, seen: int, b: int) -> list[int]:
        """The slot of each of ``b`` new structures (-1: not kept), by algorithm R."""
        index = torch.arange(seen, seen + b, dtype=torch.float64)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + seen)
        draws = torch.floor(torch.rand(b, generator=generator, dtype=torch.float64) * (index + 1.0))
        slots = torch.where(index < self.capacity, index, draws).to(torch.int64)
        return [s if s < self.capacity else -1 for s in slots.tolist()]

    def _write(self, batch: CrystalBatch, slots: Tensor, crystals: Tensor) -> None:
        """Write crystals ``crystals [M]`` of ``batch`` into ``slots [M]``, padded to ``max_atoms``."""
        device = self.atomic_numbers.device
        sub = batch.index_select(crystals.to(batch.device))
        within = torch.arange(sub.atomic_numbers.shape[0], device=sub.device) - sub.atom_offsets[sub.crystal_idx]
        rows, cols = sub.crystal_idx.to(device), within.to(device)
        slots = slots.to(device)
        types = torch.zeros(len(slots), self.max_atoms, dtype=torch.int16, device=device)
        types[rows, cols] = sub.atomic_numbers.to(device, torch.int16)
        self.atomic_numbers[slots] = types
        if self.geometry:
            frac = torch.zeros(len(slots), self.max_atoms, 3, dtype=torch.int32, device=device)
            frac[rows, cols] = _bits(sub.frac_coords.to(device))
            self.frac_bits[slots] = frac
            self.lattice_bits[slots] = _bits(sub.lattice.to(device))

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Slots in use."""
        return min(int(self.seen), self.capacity)

    def types(self) -> np.ndarray:
        """Atomic numbers of the slots in use ``[K', A]`` int64, 0-padded."""
        return self.atomic_numbers[: len(self)].cpu().numpy().astype(np.int64)

    def frac_coords(self, row: int) -> np.ndarray:
        """Fractional coordinates ``[A, 3]`` float64 of slot ``row`` (padding rows are 0)."""
        if not self.geometry:
            raise ValueError("this memory keeps compositions only (geometry=False)")
        return _floats(self.frac_bits[row]).cpu().numpy().astype(np.float64)

    def lattice(self, row: int) -> np.ndarray:
        """Lattice ``[3, 3]`` float64 (rows are vectors, Å) of slot ``row``."""
        if not self.geometry:
            raise ValueError("this memory keeps compositions only (geometry=False)")
        return _floats(self.lattice_bits[row]).cpu().numpy().astype(np.float64)


def rows_for_size(sizes: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Memory rows to build an ``n``-atom crystal from, and their size ``m``.

    Rows of exactly ``n`` atoms; else rows of the largest size ``m`` that divides ``n``; else rows of
    the nearest size (the smaller one on a tie). ``sizes [K]`` are the rows' atom counts; raises
    ``ValueError`` for an empty memory.
    """
    present = np.unique(sizes[sizes > 0])
    if present.size == 0:
        raise ValueError("the memory is empty: train the model first (crystalforge train)")
    if n in present:
        m = n
    else:
        divisors = [int(s) for s in present if n % s == 0]
        m = max(divisors) if divisors else int(present[np.argmin(np.abs(present - n) * 2 + (present > n))])
    return np.flatnonzero(sizes == m), m


def scale_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """Element counts ``[k]`` rescaled to sum to ``n`` (same elements, the ratio kept as well as integers allow).

    A multiple is exact. Otherwise largest remainders, keeping every element at least once when
    ``n >= k``; when ``n < k`` only the ``n`` most abundant elements keep one atom each (the others get 0).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n % total == 0:
        return counts * (n // total)
    k = len(counts)
    if n < k:
        out = np.zeros(k, dtype=np.int64)
        out[np.argsort(-counts, kind="stable")[:n]] = 1
        return out
    raw = counts * n / total
    out = np.maximum(np.floor(raw).astype(np.int64), 1)
    while out.sum() > n:  # the floor of 1 overshot: take from the largest
        out[int(np.argmax(out))] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    for i in range(n - int(out.sum())):
        out[order[i % k]] += 1
    return out
