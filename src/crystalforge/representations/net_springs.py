"""The spring network that finishes the embedding of a net (``net_embedding.embed_net``).

Atoms and metric relax together in torch (L-BFGS, float64). Energy: harmonic bonds towards their
target lengths, plus hinges that make the geometry obey the relative bond rule that wrote the
string (``quotient_graph.relative_bonds``): with ``m_i`` atom i's shortest bond, a bond should be
at most ``(1 + margins[0]) · max(m_i, m_j)`` long and a non-bonded pair at least
``(1 + margins[1]) · max(m_i, m_j)`` apart, around the rule's first tolerance 0.25; a barrier keeps
the cell from flattening.

Coordinates that keep symmetry: atoms move by Cartesian displacements in the frame of the
starting metric and the metric stays in the span of the invariant metrics. Gradient steps in
fractional coordinates or in a lattice matrix do not commute with a symmetry whose integer matrix
is not orthogonal (every non-cubic setting), so a symmetric start would drift into a distorted
one; in these coordinates it stays symmetric.
"""

from __future__ import annotations

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.neighbors import radius_graph
from crystalforge.core.threads import torch_threads

__all__ = ["BOND_MARGINS", "relax_springs"]

BOND_MARGINS = (0.23, 0.27)
"""Bonds within ``1.23``, non-bonded pairs beyond ``1.27`` times the larger shortest bond of their two atoms."""

_DTYPE = torch.float64
_Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # atom i, atom j, image shift of j


def _pack(a: np.ndarray, b: np.ndarray, shift: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(shift, dtype=np.int64) + 50
    return ((((a * n + b) * 101 + s[:, 0]) * 101 + s[:, 1]) * 101) + s[:, 2]


class _Springs:
    """Positions ``f0 + u · to_frac`` and metric ``Σ c_k B_k`` with the energy's pieces."""

    def __init__(
        self,
        frac: np.ndarray,
        gram: np.ndarray,
        edges: np.ndarray,
        targets: np.ndarray,
        basis: np.ndarray,
    ) -> None:
        self.n = len(frac)
        self.to_frac = torch.tensor(np.linalg.inv(np.linalg.cholesky(gram)), dtype=_DTYPE)  # Cartesian → fractional
        self.f0 = torch.tensor(frac, dtype=_DTYPE)
        self.basis_np = basis
        self.basis = torch.tensor(basis, dtype=_DTYPE)
        self.c = torch.tensor(np.einsum("kij,ij->k", basis, gram), dtype=_DTYPE, requires_grad=True)
        self.u = torch.zeros((self.n, 3), dtype=_DTYPE, requires_grad=True)
        e = torch.as_tensor(edges, dtype=torch.int64)
        self.i, self.j, self.off = e[:, 0], e[:, 1], e[:, 2:].to(_DTYPE)
        self.ends = torch.cat([self.i, self.j])
        self.d0 = torch.tensor(targets, dtype=_DTYPE)
        self.bonded = np.concatenate(
            [
                _pack(edges[:, 0], edges[:, 1], edges[:, 2:], self.n),
                _pack(edges[:, 1], edges[:, 0], -edges[:, 2:], self.n),
            ]
        )

    def metric(self) -> torch.Tensor:
        return torch.einsum("k,kij->ij", self.c, self.basis)

    def frac(self) -> torch.Tensor:
        return self.f0 + self.u @ self.to_frac

    def lengths(self, a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        f = self.frac()
        vec = f[b] + shift - f[a]
        return torch.sqrt(torch.clamp(((vec @ self.metric()) * vec).sum(dim=1), min=1e-12))

    def bond_lengths(self) -> torch.Tensor:
        return self.lengths(self.i, self.j, self.off)

    def shortest(self, d: torch.Tensor, tau: float = 0.02) -> torch.Tensor:
        """Each atom's shortest bond ``[n]``, smoothed: ties would make ``amin``'s gradient useless."""
        both = torch.cat([d, d])
        low = torch.full((self.n,), float("inf"), dtype=_DTYPE)
        low = low.scatter_reduce(0, self.ends, both.detach(), reduce="amin", include_self=False)
        weights = torch.zeros(self.n, dtype=_DTYPE).index_add(0, self.ends, torch.exp(-(both - low[self.ends]) / tau))
        return low - tau * torch.log(weights)

    @torch.no_grad()
    def reset_metric(self, gram: np.ndarray) -> None:
        self.c.copy_(torch.tensor(np.einsum("kij,ij->k", self.basis_np, gram), dtype=_DTYPE))

    @torch.no_grad()
    def near_pairs(self, cutoff: float) -> _Pairs:
        """Non-bonded pairs (i, j, shift) closer than ``cutoff`` (Å), shifts relative to the unwrapped positions."""
        frac = self.frac()
        cell = torch.floor(frac)  # the search reads wrapped positions; its shifts are moved back below
        batch = CrystalBatch(
            atomic_numbers=torch.zeros(self.n, dtype=torch.int64),  # the search ignores elements
            frac_coords=frac - cell,
            lattice=torch.linalg.cholesky(self.metric())[None],  # rows: L Lᵀ = G
            num_atoms=torch.tensor([self.n]),
        )
        found = radius_graph(batch, cutoff)  # self-images at distance 0 are left out
        a, b = found.edge_index
        shift = found.cell_shift + (cell[a] - cell[b]).to(torch.int64)
        bonded = np.isin(_pack(a.numpy(), b.numpy(), shift.numpy(), self.n), self.bonded)
        near = (found.distances < cutoff).numpy() & ~bonded
        return a[near], b[near], shift[near].to(_DTYPE)

    def energy(self, pairs: _Pairs, margins: tuple[float, float], weight: float) -> torch.Tensor:
        d = self.bond_lengths()
        m = self.shortest(d)
        loss = (((d - self.d0) / self.d0) ** 2).sum()
        loss = loss + weight * torch.relu(d / torch.maximum(m[self.i], m[self.j]) - 1 - margins[0]).pow(2).sum()
        pa, pb, ps = pairs
        if len(pa):
            ratio = self.lengths(pa, pb, ps) / torch.maximum(m[pa], m[pb])
            loss = loss + weight * torch.relu(1 + margins[1] - ratio).pow(2).sum()
        values = torch.linalg.eigvalsh(self.metric())
        return loss + 10.0 * torch.relu(0.05 - values / values.abs().mean()).pow(2).sum()


def relax_springs(
    frac: np.ndarray,
    gram: np.ndarray,
    edges: np.ndarray,
    targets: np.ndarray,
    basis: np.ndarray,
    prior: np.ndarray,
    *,
    margins: tuple[float, float] = BOND_MARGINS,
    rule_weight: float = 10.0,
    rounds: int = 3,
    max_iter: int = 300,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Relax atoms ``frac [n, 3]`` and metric ``gram`` (kept in the span of ``basis [k, 3, 3]``).

    ``prior`` is an invariant positive definite metric shape used if the metric degenerates
    between rounds. Returns the fractional coordinates, the metric and the relative RMS deviation
    of the bond lengths from ``targets``.
    """
    with torch_threads(1):
        springs = _Springs(frac, gram, edges, targets, basis)
        for _ in range(rounds):
            g_now = springs.metric().detach().numpy()
            values = np.linalg.eigvalsh(g_now)
            if values.min() <= 0.02 * np.abs(values).max():  # flattened: restart from the prior shape
                springs.reset_metric(prior * float(np.abs(np.trace(g_now))) / float(np.trace(prior)))
            with torch.no_grad():
                reach = float(springs.shortest(springs.bond_lengths()).max()) * (1 + margins[1]) * 1.2
            pairs = springs.near_pairs(reach)
            optimiser = torch.optim.LBFGS(
                [springs.c, springs.u], max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
            )

            def closure(optimiser: torch.optim.LBFGS = optimiser, pairs: _Pairs = pairs) -> torch.Tensor:
                optimiser.zero_grad()
                loss = springs.energy(pairs, margins, rule_weight)
                loss.backward()
                return loss

            optimiser.step(closure)
        with torch.no_grad():
            rmse = float(torch.sqrt((((springs.bond_lengths() - springs.d0) / springs.d0) ** 2).mean()))
            return springs.frac().numpy().copy(), springs.metric().numpy().copy(), rmse
