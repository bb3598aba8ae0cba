"""Periodic neighbour search: radius and k-nearest graphs with integer cell shifts.

Edge ``e`` joins centre ``i = edge_index[0, e]`` to neighbour ``j = edge_index[1, e]`` in image
``cell_shift[e]`` (integers); its vector is ``x_j + cell_shift[e] @ lattice - x_i`` (Å), the same
convention as pymatgen's ``get_neighbor_list`` (centre, point, offset). The search is exact for any
cell shape and for cutoffs larger than the cell: for each crystal the image range along axis ``k``
is bounded by ``cutoff / d_k + 1/2`` with ``d_k`` the spacing of lattice planes. Work is done in
chunks of crystals so memory stays bounded; all arithmetic is in the batch's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.lattice import plane_spacings

Array = TypeVar("Array", np.ndarray, torch.Tensor)

DEFAULT_CHUNK_CANDIDATES = 2_000_000
"""Upper bound on candidate (pair, image) triples examined at once."""

MAX_IMAGES = 20_000
"""A crystal needing more periodic images than this for one search is refused (``searchable``).

A well-formed cell needs tens to hundreds (a 5 Å cutoff and 2 Å plane spacings: 7³ = 343); a
near-flat generated cell (plane spacing 10⁻⁴ Å) needs millions and would exhaust memory.
"""


@dataclass(frozen=True)
class PeriodicEdges:
    """Directed periodic edges of a batch, grouped by centre atom in increasing order."""

    edge_index: Tensor  # [2, E] int64, (centre i, neighbour j), global atom indices
    cell_shift: Tensor  # [E, 3] int64 image of j
    vectors: Tensor  # [E, 3] Å, x_j + shift @ L - x_i
    distances: Tensor  # [E] Å

    @property
    def num_edges(self) -> int:
        """E."""
        return int(self.edge_index.shape[1])


def image_bounds(lattice: Array, cutoff: Array | float) -> Array:
    """Largest image index ``|n_k|`` per axis ``[..., 3]`` that can hold a neighbour within ``cutoff``.

    Fractional differences are first reduced to [−1/2, 1/2], so ``|n_k + Δf_k| · d_k <= cutoff``
    needs ``|n_k| <= cutoff / d_k + 1/2`` with ``d_k`` the lattice-plane spacing. Returned as
    floats (inf for a degenerate cell); ``cutoff`` broadcasts against ``[..., 3]``.
    """
    spacing = plane_spacings(lattice)
    if isinstance(spacing, torch.Tensor):
        return torch.floor(cutoff / spacing + 0.5 + 1e-9)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.floor(cutoff / spacing + 0.5 + 1e-9)


def image_counts(batch: CrystalBatch, cutoff: float | Tensor) -> Tensor:
    """Periodic images ``[B]`` a radius search with ``cutoff`` (Å, one or per crystal) examines per crystal."""
    cut = torch.as_tensor(cutoff, dtype=batch.lattice.dtype, device=batch.device).expand(batch.num_crystals)
    bounds = image_bounds(batch.lattice.detach(), cut[:, None])
    return torch.nan_to_num(2 * bounds + 1, nan=float("inf"), posinf=float("inf")).prod(1)


def searchable(batch: CrystalBatch, cutoff: float | Tensor, *, max_images: int = MAX_IMAGES) -> Tensor:
    """``[B]`` bool: crystals whose radius search stays within ``max_images`` periodic images."""
    return image_counts(batch, cutoff) <= max_images


def _segment_starts(sizes: Tensor) -> Tensor:
    """Index of each segment's first item ``[S]`` when segments of ``sizes [S]`` are laid end to end."""
    return torch.cumsum(sizes, 0) - sizes


def _segment_positions(sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Owning segment ``[T]`` and position within it ``[T]`` of the ``T = Σ sizes`` items of segments ``sizes [S]``."""
    owner = torch.repeat_interleave(torch.arange(sizes.shape[0], device=sizes.device), sizes)
    return owner, torch.arange(owner.shape[0], device=sizes.device) - _segment_starts(sizes)[owner]


def crystal_pairs(num_atoms: Tensor, atom_offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every ordered atom pair (i, j) of each crystal, self pairs included, centre-major.

    Args:
        num_atoms: Atoms per crystal ``[b]``.
        atom_offsets: Global index of each crystal's first atom ``[b]``.

    Returns:
        Owning crystal ``[P]`` (0..b-1), centre ``i [P]`` and neighbour ``j [P]`` (global indices),
        with ``P = Σ n²``.

    """
    owner, local = _segment_positions(num_atoms * num_atoms)
    n = num_atoms[owner]
    offset = atom_offsets[owner]
    return owner, local // n + offset, local % n + offset


def _chunks(cost: list[int], limit: int) -> list[tuple[int, int]]:
    out, start, acc = [], 0, 0
    for b, c in enumerate(cost):
        if acc and acc + c > limit:
            out.append((start, b))
            start, acc = b, 0
        acc += c
    out.append((start, len(cost)))
    return out


def _radius_chunk(
    batch: CrystalBatch, bounds: Tensor, cut: Tensor, lo: int, hi: int, self_loops: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Edges of crystals lo..hi-1, in (centre, neighbour, image) order.

    Work is split in two small tables and one large gather: per atom pair the pbc-reduced
    Cartesian displacement, per crystal its image shifts in Cartesian form; each candidate is one
    (pair, shift) sum.
    """
    # pair table: all (i, j) within each crystal, centre-major
    pair_owner, pi, pj = crystal_pairs(batch.num_atoms[lo:hi], batch.atom_offsets[lo:hi])  # [P] each
    lattice = batch.lattice[lo:hi]
    diff = batch.frac_coords[pj] - batch.frac_coords[pi]
    fold = torch.round(diff)  # reduce to [-1/2, 1/2] so the image bound holds; kept to report the image
    pair_vec = ((diff - fold)[:, None, :] @ lattice[pair_owner])[:, 0, :]  # [P, 3]
    # shift table: the box of images of each crystal, in integer and Cartesian form
    widths = 2 * bounds[lo:hi] + 1  # [b, 3]
    num_shifts = widths.prod(1)  # [b]
    shift_owner, s = _segment_positions(num_shifts)  # [S] each
    w = widths[shift_owner]
    bnd = bounds[lo:hi][shift_owner]
    shift_int = torch.stack(
        [s // (w[:, 1] * w[:, 2]) - bnd[:, 0], (s // w[:, 2]) % w[:, 1] - bnd[:, 1], s % w[:, 2] - bnd[:, 2]], 1
    )
    shift_vec = (shift_int.to(lattice.dtype)[:, None, :] @ lattice[shift_owner])[:, 0, :]  # [S, 3]
    # candidates: every pair with every shift of its crystal
    cand_pair, cand_shift = _segment_positions(num_shifts[pair_owner])  # [C] each
    cand_owner = pair_owner[cand_pair]  # [C]
    cand_shift = cand_shift + _segment_starts(num_shifts)[cand_owner]
    vec = pair_vec[cand_pair] + shift_vec[cand_shift]
    dist2 = (vec * vec).sum(1)
    limit = cut[lo:hi][cand_owner]
    keep = dist2 <= limit * limit
    if not self_loops:
        keep &= ~((pi[cand_pair] == pj[cand_pair]) & (dist2 < 1e-16))
    kp, ks = cand_pair[keep], cand_shift[keep]
    return pi[kp], pj[kp], shift_int[ks] - fold[kp].to(torch.int64), vec[keep]


def radius_graph(
    batch: CrystalBatch,
    cutoff: float | Tensor,
    *,
    self_loops: bool = False,
    max_candidates: int = DEFAULT_CHUNK_CANDIDATES,
    max_images: int = MAX_IMAGES,
) -> PeriodicEdges:
    """Every (i, j, image) with 0 < |r_ij| <= cutoff (and |r| = 0 self-images only if ``self_loops``).

    ``cutoff`` is one value or one per crystal ``[B]`` (Å). Edges come grouped by centre atom in
    increasing order (within a centre: by neighbour index, then image); ``knn_graph`` sorts by
    distance. A crystal needing more than ``max_images`` periodic images is refused with a
    ``ValueError`` naming it (see ``searchable``), rather than exhausting memory.
    """
    b_count = batch.num_crystals
    cut = torch.as_tensor(cutoff, dtype=batch.lattice.dtype, device=batch.device).expand(b_count).clone()
    if bool((cut <= 0).any()):
        raise ValueError("cutoff must be positive")
    images = image_counts(batch, cut)
    too_many = torch.nonzero(images > max_images).flatten()
    if too_many.numel():
        i = int(too_many[0])
        raise ValueError(
            f"crystal {i} of the batch (material_id {batch.material_ids[i] if batch.material_ids else None}): its "
            f"cell is too thin for a {float(cut[i]):.3g} Å neighbour search ({float(images[i]):.3g} periodic images, "
            f"more than {max_images}); {too_many.numel()} such crystal(s). Check searchable() first or reduce the cell"
        )
    bounds = image_bounds(batch.lattice, cut[:, None]).to(torch.int64)  # [B, 3]
    cost = (batch.num_atoms**2 * (2 * bounds + 1).prod(1)).tolist()
    parts = [_radius_chunk(batch, bounds, cut, lo, hi, self_loops) for lo, hi in _chunks(cost, max_candidates)]
    vec = torch.cat([p[3] for p in parts])
    return PeriodicEdges(
        edge_index=torch.stack([torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]),
        cell_shift=torch.cat([p[2] for p in parts]),
        vectors=vec,
        distances=torch.linalg.norm(vec, dim=1),
    )


def _sort_by_distance(edges: PeriodicEdges) -> PeriodicEdges:
    """Edges grouped by centre, nearest first (ties keep their order: the sort is stable)."""
    i = edges.edge_index[0]
    span = float(edges.distances.max()) + 1.0 if edges.num_edges else 1.0
    order = torch.argsort(i.to(torch.float64) * span + edges.distances.to(torch.float64), stable=True)
    return PeriodicEdges(
        edges.edge_index[:, order], edges.cell_shift[order], edges.vectors[order], edges.distances[order]
    )


def knn_graph(batch: CrystalBatch, k: int, *, max_candidates: int = DEFAULT_CHUNK_CANDIDATES) -> PeriodicEdges:
    """The ``k`` nearest periodic neighbours of every atom (images included, self-image excluded).

    Ties at the k-th distance are broken by candidate order, which is deterministic. The search
    radius starts from the cell's atomic density and doubles for crystals where any atom has
    fewer than ``k`` neighbours within it.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    device = batch.device
    volume_per_atom = batch.volume.abs() / batch.num_atoms.to(batch.lattice.dtype)
    radius = (3.0 * volume_per_atom * (k + 1) / (4.0 * math.pi)) ** (1.0 / 3.0) * 1.3  # [B]
    pending = torch.ones(batch.num_crystals, dtype=torch.bool, device=device)
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    while bool(pending.any()):
        idx = torch.nonzero(pending).flatten()
        sub = batch.index_select(idx)
        edges = _sort_by_distance(radius_graph(sub, radius[idx], max_candidates=max_candidates))
        centre = edges.edge_index[0]
        counts = torch.bincount(centre, minlength=int(sub.num_atoms.sum()))
        fewest = torch.full((len(idx),), 2**62, dtype=torch.int64, device=device)
        fewest = fewest.scatter_reduce(0, sub.crystal_idx, counts, reduce="amin")
        enough = fewest >= k  # [b]
        # edges are sorted by centre then distance: the first k of each centre are its k nearest
        rank = torch.arange(edges.num_edges, device=device) - _segment_starts(counts)[centre]
        owner = sub.crystal_idx[centre]
        take = (rank < k) & enough[owner]
        to_global = (batch.atom_offsets[idx] - sub.atom_offsets)[owner[take]]
        parts.append(
            (edges.edge_index[:, take] + to_global, edges.cell_shift[take], edges.vectors[take], edges.distances[take])
        )
        pending[idx[enough]] = False
        radius[idx[~enough]] *= 2.0
    merged = PeriodicEdges(
        edge_index=torch.cat([p[0] for p in parts], 1),
        cell_shift=torch.cat([p[1] for p in parts]),
        vectors=torch.cat([p[2] for p in parts]),
        distances=torch.cat([p[3] for p in parts]),
    )
    return _sort_by_distance(merged)
