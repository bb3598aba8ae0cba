"""Embedding a labelled quotient graph in 3D: the geometry half of decoding a quotient string.

1. ``barycentric_placement`` (``quotient_graph``): every atom at the mean of its bonded
   neighbours, the equilibrium placement of the periodic net; with atom 0 fixed it is one linear
   solve of the graph Laplacian, unique for a connected graph. Two atoms can land on the same
   point modulo the lattice (a *collision*: the net is not "stable"); ``collisions`` finds them
   and ``embed_net`` separates them by a small displacement seeded from the string.
2. ``bond_symmetries``: the integer matrices that map the typed bond vectors of that placement
   onto themselves, i.e. the point symmetry of the placed net in the string's basis.
3. ``fit_metric``: the metric ``G = L Lᵀ``, restricted to metrics invariant under those
   symmetries (``invariant_metrics``), that gives the bonds their target lengths: a linear
   least-squares problem in ``G`` (relative errors), weakly pulled towards the net's own
   barycentric metric (``quotient_graph.net_metric``, invariant and positive definite), which
   keeps it well posed. Without the restriction an under-determined fit picks an arbitrary
   metric (rock salt came out as a rhombohedral CsCl-like cell).
4. ``net_springs.relax_springs``: atoms and metric relaxed together (bond springs and hinges
   that make the geometry obey the bond rule), in coordinates that keep the symmetry.

Target bond length of a pair: the sum of the two elements' atomic radii from the element table
(Slater's empirical radii; ASE's covalent radii where missing). These are rough and only the
shape is well determined; an MLIP relaxation afterwards (``QuotientStringRepresentation(relaxer=
...)``) supplies the chemistry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crystalforge.core.elements import element_table
from crystalforge.representations.canonical import unit_matrices
from crystalforge.representations.net_springs import relax_springs
from crystalforge.representations.quotient_graph import barycentric_placement, net_metric

__all__ = [
    "NetEmbedding",
    "barycentric_placement",
    "bond_symmetries",
    "bond_targets",
    "collisions",
    "embed_net",
    "fit_metric",
    "invariant_metrics",
]

COLLISION_TOLERANCE = 1e-4
"""Fractional distance below which two barycentric positions count as the same point."""


@dataclass(frozen=True, eq=False)
class NetEmbedding:
    """Fractional coordinates ``[n, 3]``, lattice ``[3, 3]`` (rows, Å) and the collisions met."""

    frac_coords: np.ndarray
    lattice: np.ndarray
    collisions: int  # atom pairs that coincided in the barycentric placement
    bond_rmse: float  # relative RMS deviation of the final bond lengths from their targets


def _radii(numbers: np.ndarray) -> np.ndarray:
    from ase.data import covalent_radii

    radii = element_table().atomic_radius[numbers]
    return np.where(np.isfinite(radii), radii, np.asarray(covalent_radii)[numbers])


def bond_targets(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Target length ``[E]`` (Å) of each edge: the sum of its two atoms' radii."""
    radii = _radii(np.asarray(numbers, dtype=np.int64))
    return np.asarray(radii[edges[:, 0]] + radii[edges[:, 1]], dtype=np.float64)


def collisions(frac: np.ndarray, *, tol: float = COLLISION_TOLERANCE) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, at the same position modulo the lattice (fractional distance < ``tol``)."""
    diff = frac[:, None, :] - frac[None, :, :]
    diff -= np.rint(diff)
    close = np.abs(diff).max(axis=2) < tol
    i, j = np.nonzero(np.triu(close, k=1))
    return list(zip(i.tolist(), j.tolist(), strict=True))


def _bond_vectors(frac: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return frac[edges[:, 1]] + edges[:, 2:] - frac[edges[:, 0]]  # [E, 3] fractional


def bond_symmetries(numbers: np.ndarray, edges: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Integer matrices ``A [S, 3, 3]`` (entries in {−1, 0, 1}) that map the typed bond vectors onto themselves.

    The multiset of ``(Z_i, Z_j, Δ_e)`` over both orientations of every bond must be preserved by
    ``Δ → Δ A``. Every symmetry of the placed net passes; the metric is then fitted among the
    metrics with ``A G Aᵀ = G`` for all of them, so that a symmetric net gives a symmetric crystal.
    """
    units = unit_matrices()
    z = np.asarray(numbers, dtype=np.int64)
    vec = _bond_vectors(frac, edges)
    vec = np.concatenate([vec, -vec])  # [2E, 3]
    pair = np.concatenate([z[edges[:, 0]] * 128 + z[edges[:, 1]], z[edges[:, 1]] * 128 + z[edges[:, 0]]])

    def hashed(vectors: np.ndarray) -> np.ndarray:  # [..., 2E, 3] → sorted hashes [..., 2E]
        r = np.rint(vectors * 1e6).astype(np.int64)
        with np.errstate(over="ignore"):
            h = pair * np.int64(1_000_003) + r[..., 0]
            h = h * np.int64(998_244_353) + r[..., 1]
            h = h * np.int64(1_000_000_007) + r[..., 2]
        return np.sort(h, axis=-1)

    reference = hashed(vec)
    mapped = hashed(np.einsum("ec,kcd->ked", vec, units))
    return units[(mapped == reference).all(axis=1)]


def invariant_metrics(ops: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``[k, 3, 3]`` of the symmetric matrices ``G`` with ``A G Aᵀ = G`` for every ``A``."""
    rows, cols = np.triu_indices(3)
    basis = np.zeros((6, 3, 3))
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        basis[k, r, c] = basis[k, c, r] = 1.0 if r == c else np.sqrt(0.5)
    if len(ops) == 0:
        return basis
    # constraint rows: (A B_k Aᵀ − B_k) for each op, as linear maps of the 6 coefficients
    images = np.einsum("aij,kjl,aml->akim", ops.astype(np.float64), basis, ops.astype(np.float64)) - basis
    constraint = images.transpose(0, 2, 3, 1).reshape(-1, 6)
    _, sing, vt = np.linalg.svd(constraint)
    rank = int((sing > 1e-8).sum())
    null = vt[rank:]  # [k, 6]
    return np.einsum("qk,kij->qij", null, basis)


def _positive(gram: np.ndarray, prior: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """Mix ``gram`` towards ``prior`` (both invariant) just enough to make it well-conditioned positive definite."""
    for alpha in np.linspace(0.0, 1.0, 21):
        mixed = (1 - alpha) * gram + alpha * prior
        values = np.linalg.eigvalsh(mixed)
        if values.min() > ratio * values.max():
            return np.asarray(mixed)
    return prior


def fit_metric(
    frac_vectors: np.ndarray, targets: np.ndarray, ops: np.ndarray, prior: np.ndarray, *, prior_weight: float = 1e-2
) -> np.ndarray:
    """The metric ``G [3, 3]``, invariant under ``ops``, that best gives the bond vectors their target lengths.

    Least squares in the relative errors of squared lengths over the invariant metrics, pulled
    weakly towards ``prior`` (an invariant positive definite shape, scaled to fit; it keeps the
    problem well posed), then mixed with the scaled prior as far as needed to be positive definite.
    """
    basis = invariant_metrics(ops)  # [k, 3, 3]
    quad = np.einsum("ei,kij,ej->ek", frac_vectors, basis, frac_vectors) / (targets**2)[:, None]  # [E, k]
    ones = np.ones(len(targets))
    iso = np.einsum("ei,ij,ej->e", frac_vectors, prior, frac_vectors) / targets**2
    prior_gram = prior * float(iso @ ones / max(float(iso @ iso), 1e-12))
    weight = prior_weight * np.sqrt(len(targets))
    design = np.vstack([quad, weight * np.eye(len(basis))])
    rhs = np.concatenate([ones, weight * np.einsum("kij,ij->k", basis, prior_gram)])
    coeffs, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    return _positive(np.einsum("k,kij->ij", coeffs, basis), prior_gram)


def embed_net(numbers: np.ndarray, edges: np.ndarray, *, seed: int = 0, relax: bool = True) -> NetEmbedding:
    """Place the net: barycentric coordinates, fitted metric, then (``relax``) the spring network."""
    z = np.asarray(numbers, dtype=np.int64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 5)
    frac = barycentric_placement(len(z), e)
    prior = net_metric(len(z), e)  # invariant under every symmetry of the net
    ops = bond_symmetries(z, e, frac)
    clashes = collisions(frac)
    if clashes:  # separate coinciding atoms by a small, reproducible displacement (this breaks symmetry)
        moved = sorted({b for _, b in clashes})
        frac[moved] += np.random.default_rng(seed).normal(scale=0.03, size=(len(moved), 3))
        ops = np.eye(3, dtype=np.int64)[None]
    targets = bond_targets(z, e)
    gram = fit_metric(_bond_vectors(frac, e), targets, ops, prior)
    rmse = float("nan")
    if relax and len(e):
        frac, gram, rmse = relax_springs(frac, gram, e, targets, invariant_metrics(ops), prior)
        gram = _positive(gram, prior * float(np.trace(gram)) / float(np.trace(prior)))
    lattice = np.asarray(np.linalg.cholesky(gram), dtype=np.float64)  # rows: L Lᵀ = G
    return NetEmbedding(frac_coords=frac, lattice=lattice, collisions=len(clashes), bond_rmse=rmse)
