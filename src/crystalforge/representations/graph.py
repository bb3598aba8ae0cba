"""Graph views of a batch: periodic neighbour graphs and the fully connected in-cell graph.

Graphs are derived on demand, never stored on the batch (every generative step moves atoms).

- ``radius_graph`` / ``knn_graph`` (from ``core.neighbors``): real-space neighbours with integer
  image shifts, for property predictors and MLIP-style models.
- ``InCellGraph``: every ordered pair (i, j), i ≠ j, of atoms in the same crystal, with the
  fractional displacement ``pbc_diff(f_j, f_i)`` in [−1/2, 1/2). Its Fourier features
  ``sin/cos(2π k Δf)`` are periodic, so they are invariant to periodic translation and to which
  image an atom is stored in, and they use no Cartesian frame, so they are rotation invariant;
  together with the lattice Gram matrix ``L Lᵀ`` they are what DiffCSP-style backbones read.
  This graph is not invertible on its own (it drops absolute positions) and is not a
  ``Representation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.lattice import metric_tensor
from crystalforge.core.neighbors import PeriodicEdges, crystal_pairs, knn_graph, radius_graph
from crystalforge.core.periodic import pbc_diff

__all__ = [
    "InCellGraph",
    "PeriodicEdges",
    "fourier_features",
    "in_cell_graph",
    "knn_graph",
    "lattice_gram_features",
    "radius_graph",
]


@dataclass(frozen=True)
class InCellGraph:
    """All ordered atom pairs within each crystal."""

    edge_index: Tensor  # [2, E] (i, j), global atom indices, i != j unless self_loops
    frac_diff: Tensor  # [E, 3] pbc_diff(f_j, f_i) in [-1/2, 1/2)
    edge_crystal: Tensor  # [E] owning crystal of each edge


def in_cell_graph(batch: CrystalBatch, *, self_loops: bool = False) -> InCellGraph:
    """The fully connected in-cell graph of ``batch`` (E = Σ n_b² − n_b, or Σ n_b² with self loops)."""
    owner, i, j = crystal_pairs(batch.num_atoms, batch.atom_offsets)
    if not self_loops:
        keep = i != j
        i, j, owner = i[keep], j[keep], owner[keep]
    diff = pbc_diff(batch.frac_coords[j], batch.frac_coords[i])
    return InCellGraph(edge_index=torch.stack([i, j]), frac_diff=diff, edge_crystal=owner)


def fourier_features(frac_diff: Tensor, num_frequencies: int) -> Tensor:
    """``[sin(2πkΔf), cos(2πkΔf)]`` for k = 1..K per component: ``[E, 6K]``, periodic in Δf."""
    k = torch.arange(1, num_frequencies + 1, device=frac_diff.device, dtype=frac_diff.dtype)
    angle = 2 * math.pi * frac_diff[:, :, None] * k  # [E, 3, K]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(1)


def lattice_gram_features(lattice: Tensor) -> Tensor:
    """The six independent entries of ``L Lᵀ`` ``[B, 6]`` (Å²): rotation invariant lattice features."""
    gram = metric_tensor(lattice)
    rows, cols = torch.triu_indices(3, 3, device=lattice.device)
    return gram[:, rows, cols]
