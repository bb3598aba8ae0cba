"""Exact closest pair of different atoms over periodic images, for the structure-validity check.

``search_cell`` picks the cheaper of a crystal's given and LLL-reduced bases;
``closest_pairs_batched`` searches many cells in one batched neighbour search, and
``closest_pair_blocked`` searches one large or very skewed cell image block by image block.
Pairs are ``(distance, i, j)`` with ``i < j``, or None when no pair is nearer than the cutoff.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.lattice import lll_reduction
from crystalforge.core.neighbors import image_bounds, radius_graph
from crystalforge.core.periodic import pbc_diff

__all__ = ["closest_pair_blocked", "closest_pairs_batched", "search_cell"]


def _search_cost(crystal: Crystal, cutoff: float) -> float:
    bounds = image_bounds(crystal.lattice, cutoff)
    cost = float(crystal.num_atoms) ** 2 * float(np.prod(2.0 * bounds + 1.0))
    return cost if math.isfinite(cost) else math.inf


def search_cell(crystal: Crystal, cutoff: float) -> tuple[Crystal, float]:
    """The crystal in the cheapest of its given and LLL-reduced bases, with the search cost."""
    cost = _search_cost(crystal, cutoff)
    if cost <= crystal.num_atoms**2:  # one image per pair already
        return crystal, cost
    m = lll_reduction(crystal.lattice)
    if m is None:
        return crystal, cost
    inverse = np.round(np.linalg.inv(m.astype(np.float64)))
    try:
        reduced = Crystal(crystal.atomic_numbers, crystal.frac_coords @ inverse, m.astype(np.float64) @ crystal.lattice)
    except ValueError:
        return crystal, cost
    reduced_cost = _search_cost(reduced, cutoff)
    return (reduced, reduced_cost) if reduced_cost < cost else (crystal, cost)


def closest_pairs_batched(
    cells: list[Crystal], cutoff: float, max_candidates: int
) -> list[tuple[float, int, int] | None]:
    """Per crystal, the closest pair of different atoms nearer than ``cutoff`` (distance, i, j), or None."""
    batch = CrystalBatch.collate(cells, dtype=torch.float64)
    # the caller sends only cells whose n² × images fits max_candidates, so images are bounded too
    edges = radius_graph(batch, cutoff, max_candidates=max_candidates, max_images=max_candidates)
    centre, neighbour = edges.edge_index  # [E], [E]
    close = (centre != neighbour) & (edges.distances < cutoff)  # [E]
    out: list[tuple[float, int, int] | None] = [None] * len(cells)
    if not bool(close.any()):
        return out
    owner = batch.crystal_idx[centre[close]]  # [e]
    offset = batch.atom_offsets[owner]
    i = (centre[close] - offset).numpy()
    j = (neighbour[close] - offset).numpy()
    dist = edges.distances[close].numpy()
    owner_np = owner.numpy()
    order = np.lexsort((dist, owner_np))
    first = order[np.r_[True, owner_np[order][1:] != owner_np[order][:-1]]]
    for e in first.tolist():
        out[int(owner_np[e])] = (float(dist[e]), int(min(i[e], j[e])), int(max(i[e], j[e])))
    return out


def closest_pair_blocked(cell: Crystal, cutoff: float, max_candidates: int) -> tuple[float, int, int] | None:
    """Exact closest pair of one large or very skewed cell, searching images block by block."""
    n = cell.num_atoms
    ii, jj = np.triu_indices(n, k=1)  # [P], [P]
    diff = pbc_diff(cell.frac_coords[jj], cell.frac_coords[ii])  # in [-1/2, 1/2), so the image bounds hold
    lattice = cell.lattice
    pair_vec = diff @ lattice  # [P, 3]
    bounds = image_bounds(lattice, cutoff).astype(np.int64)  # [3]
    outer = int(np.argmin(bounds))
    a, b = (axis for axis in range(3) if axis != outer)
    width_b = 2 * int(bounds[b]) + 1
    plane = (2 * int(bounds[a]) + 1) * width_b
    step = max(1, max_candidates // len(ii))
    best = np.full(len(ii), np.inf)  # [P] squared distances
    for n_outer in range(-int(bounds[outer]), int(bounds[outer]) + 1):
        base = pair_vec + n_outer * lattice[outer]  # [P, 3]
        for start in range(0, plane, step):
            idx = np.arange(start, min(start + step, plane))
            steps_a = (idx // width_b - bounds[a]).astype(np.float64)  # [m]
            steps_b = (idx % width_b - bounds[b]).astype(np.float64)
            shifts = steps_a[:, None] * lattice[a] + steps_b[:, None] * lattice[b]  # [m, 3]
            vec = base[:, None, :] + shifts[None, :, :]  # [P, m, 3]
            np.minimum(best, np.einsum("pmk,pmk->pm", vec, vec).min(axis=1), out=best)
    k = int(np.argmin(best))
    dist = math.sqrt(float(best[k]))
    return (dist, int(ii[k]), int(jj[k])) if dist < cutoff else None
