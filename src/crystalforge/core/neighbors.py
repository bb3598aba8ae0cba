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

import torch
from torch import Tensor

from crystalforge.core.crystal import CrystalBatch
from crystalforge.core.lattice import plane_spacings
from crystalforge.core.periodic import frac_to_cart

DEFAULT_CHUNK_CANDIDATES = 2_000_000
"""Upper bound on candidate (pair, image) triples examined at once."""


@dataclass(frozen=True)
class PeriodicEdges:
    """Directed periodic edges of a batch, sorted by centre atom then distance."""

    edge_index: Tensor  # [2, E] int64, (centre i, neighbour j), global atom indices
    cell_shift: Tensor  # [E, 3] int64 image of j
    vectors: Tensor  # [E, 3] Å, x_j + shift @ L - x_i
    distances: Tensor  # [E] Å

    @property
    def num_edges(self) -> int:
        """E."""
        return int(self.edge_index.shape[1])


def _image_bounds(lattice: Tensor, cutoff: Tensor) -> Tensor:
    # frac differences are pbc-reduced to [-1/2, 1/2), so |n_k + df_k| * d_k <= cutoff needs
    # |n_k| <= cutoff / d_k + 1/2
    spacing = plane_spacings(lattice)  # [B, 3]
    return torch.floor(cutoff[:, None] / spacing + 0.5 + 1e-9).to(torch.int64)  # [B, 3]


def _chunks(cost: list[int], limit: int) -> list[tuple[int, int]]:
    out, start, acc = [], 0, 0
    for b, c in enumerate(cost):
        if acc and acc + c > limit:
            out.append((start, b))
            start, acc = b, 0
        acc += c
    out.append((start, len(cost)))
    return out


def _candidates(batch: CrystalBatch, bounds: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
    """All (i, j, shift) triples for crystals lo..hi-1 with shifts inside ``bounds``."""
    device = batch.device
    n = batch.num_atoms[lo:hi]
    widths = 2 * bounds[lo:hi] + 1  # [b, 3]
    num_shifts = widths.prod(1)  # [b]
    per_crystal = n * n * num_shifts
    owner = torch.repeat_interleave(torch.arange(hi - lo, device=device), per_crystal)
    start = torch.cumsum(per_crystal, 0) - per_crystal
    local = torch.arange(int(per_crystal.sum()), device=device) - start[owner]
    s_count = num_shifts[owner]
    pair, s = local // s_count, local % s_count
    n_o = n[owner]
    offset = batch.atom_offsets[lo:hi][owner]
    i, j = pair // n_o + offset, pair % n_o + offset
    w = widths[owner]
    s0 = s // (w[:, 1] * w[:, 2])
    s1 = (s // w[:, 2]) % w[:, 1]
    s2 = s % w[:, 2]
    b = bounds[lo:hi][owner]
    shift = torch.stack([s0 - b[:, 0], s1 - b[:, 1], s2 - b[:, 2]], 1)
    return i, j, shift


def radius_graph(
    batch: CrystalBatch,
    cutoff: float | Tensor,
    *,
    self_loops: bool = False,
    max_candidates: int = DEFAULT_CHUNK_CANDIDATES,
) -> PeriodicEdges:
    """Every (i, j, image) with 0 < |r_ij| <= cutoff (and |r| = 0 self-images only if ``self_loops``).

    ``cutoff`` is one value or one per crystal ``[B]`` (Å).
    """
    b_count = batch.num_crystals
    cut = torch.as_tensor(cutoff, dtype=batch.lattice.dtype, device=batch.device).expand(b_count).clone()
    if bool((cut <= 0).any()):
        raise ValueError("cutoff must be positive")
    bounds = _image_bounds(batch.lattice, cut)
    frac = batch.frac_coords
    cost = (batch.num_atoms**2 * (2 * bounds + 1).prod(1)).tolist()
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for lo, hi in _chunks(cost, max_candidates):
        i, j, shift = _candidates(batch, bounds, lo, hi)
        # reduce the frac difference so the bound above holds, and fold that integer into the shift
        diff = frac[j] - frac[i]
        fold = torch.round(diff)
        total = shift.to(frac.dtype) + diff - fold
        lat = batch.lattice[batch.crystal_idx[i]]
        vec = frac_to_cart(total, lat)
        dist = torch.linalg.norm(vec, dim=1)
        keep = dist <= cut[batch.crystal_idx[i]]
        if not self_loops:
            keep &= ~((i == j) & (dist < 1e-8))
        image = shift - fold.to(torch.int64)
        parts.append((i[keep], j[keep], image[keep], vec[keep]))
    i = torch.cat([p[0] for p in parts])
    j = torch.cat([p[1] for p in parts])
    image = torch.cat([p[2] for p in parts])
    vec = torch.cat([p[3] for p in parts])
    dist = torch.linalg.norm(vec, dim=1)
    return _sorted_edges(i, j, image, vec, dist)


def _sorted_edges(i: Tensor, j: Tensor, image: Tensor, vec: Tensor, dist: Tensor) -> PeriodicEdges:
    # sort by centre, then distance (stable: ties keep candidate order, which is deterministic)
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(i[order], stable=True)]
    return PeriodicEdges(
        edge_index=torch.stack([i[order], j[order]]),
        cell_shift=image[order],
        vectors=vec[order],
        distances=dist[order],
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
        edges = radius_graph(sub, radius[idx], max_candidates=max_candidates)
        centre = edges.edge_index[0]
        counts = torch.bincount(centre, minlength=int(sub.num_atoms.sum()))
        fewest = torch.full((len(idx),), 2**62, dtype=torch.int64, device=device)
        fewest = fewest.scatter_reduce(0, sub.crystal_idx, counts, reduce="amin")
        enough = fewest >= k  # [b]
        # edges are sorted by centre then distance: the first k of each centre are its k nearest
        rank = torch.arange(edges.num_edges, device=device) - (torch.cumsum(counts, 0) - counts)[centre]
        owner = sub.crystal_idx[centre]
        take = (rank < k) & enough[owner]
        to_global = (batch.atom_offsets[idx] - sub.atom_offsets)[owner[take]]
        parts.append(
            (edges.edge_index[:, take] + to_global, edges.cell_shift[take], edges.vectors[take], edges.distances[take])
        )
        pending[idx[enough]] = False
        radius[idx[~enough]] *= 2.0
    i = torch.cat([p[0][0] for p in parts])
    j = torch.cat([p[0][1] for p in parts])
    image = torch.cat([p[1] for p in parts])
    vec = torch.cat([p[2] for p in parts])
    dist = torch.cat([p[3] for p in parts])
    return _sorted_edges(i, j, image, vec, dist)
