"""Canonical form of a labelled quotient graph up to relabelling, lattice gauge and basis.

Three choices change the edge list of one and the same net; each is removed here:

(a) **Vertex labelling.** Colour refinement (Weisfeiler–Lehman) starts from the elements
    (ordered by Z, so labels always list the elements in increasing Z) and refines each atom's
    colour by the multiset of (colour of ``w``, pair colour of ``(v, w)``) over all atoms ``w``.
    The pair colour (``pair_profiles``) counts the images of ``w`` at bond distance 1, 2, 3 from
    ``v`` in the periodic net: it includes the edge multiplicities and also sees the offsets,
    while being independent of labelling, gauge and basis (refining on the quotient multigraph
    alone left far more ties). Ties are broken by individualisation–refinement: the first
    smallest non-singleton cell is split once per member, recursively; the leaves (discrete
    partitions) are the candidate labellings. The set of leaves is isomorphism invariant, so the
    minimum over it is canonical; no automorphism pruning is done, so symmetric nets enumerate
    every symmetric copy.
(b) **Gauge** (which image of each atom sits in cell 0: ``n_ij → n_ij + t_i − t_j``). For one
    labelling, a BFS spanning tree is grown from vertex 0 visiting neighbours in label order;
    among parallel edges between a parent and its child the one with the lexicographically
    smallest offset (parent → child) is the tree edge, and the gauge is fixed so that tree edges
    have offset 0. Lexicographic order is translation invariant, so this choice does not depend
    on the input gauge; the other edges then carry the voltages of the fundamental cycles.
(c) **Basis.** ``quotient_graph.net_reduced_basis`` writes the offsets in a Niggli-reduced basis
    of the net's own metric (so crystals with one net share it whatever their cell shapes),
    unique up to the integer automorphisms ``U`` of that metric (``U G Uᵀ = G``; at most 48,
    entries in {−1, 0, 1} for a reduced basis). Each is applied to the offsets (``n → n U``). This
    uses the lattice's own symmetry (its holohedry), not spglib's standard setting, whose remaining
    choices (axis permutations of an orthorhombic cell, monoclinic cell choice) exceed the point group.

Every (labelling, operation) pair gives a sorted edge list; the lexicographically smallest is the
canonical form. The search is capped (``max_candidates`` = leaves × operations): at the cap
``CanonicalisationLimitError`` is raised, never a non-canonical string.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from crystalforge.core.errors import CrystalError

__all__ = [
    "CanonicalForm",
    "CanonicalisationLimitError",
    "candidate_labellings",
    "canonical_form",
    "lattice_automorphisms",
    "pair_profiles",
    "unit_matrices",
]

DEFAULT_MAX_CANDIDATES = 200_000
"""Default cap on labellings × basis operations examined for one structure."""

PROFILE_DEPTH = 3
"""Bond distance up to which ``pair_profiles`` counts images (the refinement's reach into the periodic net)."""

_PROFILE_SHIFT = 64
_SHIFT = 500  # offsets are packed as n + _SHIFT in base 2·_SHIFT + 1
_BASE = 2 * _SHIFT + 1


class CanonicalisationLimitError(CrystalError):
    """The canonical search needed more labellings × operations than allowed."""


@dataclass(frozen=True)
class CanonicalForm:
    """A canonical labelled quotient graph and what finding it cost."""

    atomic_numbers: tuple[int, ...]  # in label order
    edges: tuple[tuple[int, int, int, int, int], ...]  # sorted (i, j, n1, n2, n3), i <= j
    leaves: int  # candidate labellings enumerated
    operations: int  # basis operations per labelling


# ---- basis operations -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def unit_matrices() -> np.ndarray:
    """Every 3×3 matrix with entries in {−1, 0, 1} and determinant ±1 ``[M, 3, 3]``."""
    grid = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.int64).reshape(-1, 3, 3)
    det = np.rint(np.linalg.det(grid.astype(np.float64))).astype(np.int64)
    return grid[np.abs(det) == 1]


def lattice_automorphisms(lattice: np.ndarray, *, rel_tol: float = 1e-5) -> np.ndarray:
    """Integer matrices ``U [K, 3, 3]`` with ``U G Uᵀ ≈ G`` for ``G = L Lᵀ`` (``L`` Niggli-reduced rows).

    Searched over entries in {−1, 0, 1}, which holds every automorphism of a reduced basis;
    the identity comes first. ``rel_tol`` is relative to the largest entry of ``G``.
    """
    lat = np.asarray(lattice, dtype=np.float64)
    gram = lat @ lat.T
    units = unit_matrices()
    mapped = np.einsum("kij,jl,kml->kim", units, gram, units)
    close = np.abs(mapped - gram).reshape(len(units), -1).max(axis=1) <= rel_tol * np.abs(gram).max()
    found = units[close]
    is_identity = (found == np.eye(3, dtype=np.int64)).all(axis=(1, 2))
    return np.concatenate([found[is_identity], found[~is_identity]])


# ---- labellings -----------------------------------------------------------------------------------
def pair_profiles(num_vertices: int, edges: np.ndarray, depth: int = PROFILE_DEPTH) -> np.ndarray:
    """Pair colours ``[n, n]``: for atom ``v`` in cell 0, how many images of ``w`` lie at each bond distance 1..depth.

    Distances are counted in the periodic net (breadth-first search over atoms *and* cells), so
    the profile sees the offsets while being independent of labelling, gauge and basis; for
    ``w`` next to ``v`` its first entry is the number of ``v``–``w`` bonds.
    """
    n = num_vertices
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    off = np.concatenate([edges[:, 2:], -edges[:, 2:]])
    order = np.argsort(src, kind="stable")
    src, dst, off = src[order], dst[order], off[order]
    starts = np.searchsorted(src, np.arange(n))
    counts = np.bincount(src, minlength=n)
    span = 2 * _PROFILE_SHIFT + 1
    if np.abs(off).max(initial=0) * depth >= _PROFILE_SHIFT:
        raise CrystalError(f"edge offsets too large for a {depth}-step neighbourhood")

    def key(w: np.ndarray, cell: np.ndarray) -> np.ndarray:
        c = cell + _PROFILE_SHIFT
        return ((w * span + c[:, 0]) * span + c[:, 1]) * span + c[:, 2]

    profile = np.zeros((n, n, depth), dtype=np.int64)
    for root in range(n):
        front_w, front_cell = np.array([root]), np.zeros((1, 3), dtype=np.int64)
        seen = key(front_w, front_cell)
        for level in range(depth):
            reps = counts[front_w]
            picks = np.repeat(starts[front_w], reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
            w, cell = dst[picks], np.repeat(front_cell, reps, axis=0) + off[picks]
            keys, first = np.unique(key(w, cell), return_index=True)
            new = ~np.isin(keys, seen)
            front_w, front_cell = w[first[new]], cell[first[new]]
            seen = np.concatenate([seen, keys[new]])
            profile[root, :, level] = np.bincount(front_w, minlength=n)
    _, ids = np.unique(profile.reshape(n * n, depth), axis=0, return_inverse=True)
    return np.asarray(ids.reshape(n, n), dtype=np.int64)


def _rank(keys: list[tuple[Any, ...]]) -> list[int]:
    order = {key: r for r, key in enumerate(sorted(set(keys)))}
    return [order[k] for k in keys]


def _refine(colours: list[int], pairs: np.ndarray) -> list[int]:
    """The coarsest equitable ordered partition refining ``colours`` over the pair colours (ranks 0..k-1)."""
    count = len(set(colours))
    width = int(pairs.max()) + 1
    while True:
        col = np.asarray(colours, dtype=np.int64)
        rows = np.sort(col[None, :] * width + pairs, axis=1)
        colours = _rank([(int(c), *row.tolist()) for c, row in zip(col, rows, strict=True)])
        new_count = len(set(colours))
        if new_count == count:
            return colours
        count = new_count


def candidate_labellings(
    atomic_numbers: np.ndarray, edges: np.ndarray, *, limit: int | None = None
) -> Iterator[list[int]]:
    """Leaves of the individualisation–refinement tree: ``labels[v]`` per vertex, at most ``limit`` then stop."""
    pairs = pair_profiles(len(atomic_numbers), edges)
    start = _refine(_rank([(int(z),) for z in atomic_numbers]), pairs)
    produced = 0
    stack = [start]
    while stack:
        colours = stack.pop()
        sizes = Counter(colours)
        if len(sizes) == len(colours):
            yield colours
            produced += 1
            if limit is not None and produced >= limit:
                return
            continue
        target = min((size, colour) for colour, size in sizes.items() if size > 1)[1]
        members = [v for v, c in enumerate(colours) if c == target]
        for v in reversed(members):
            split = [2 * c + (1 if c == target and u != v else 0) for u, c in enumerate(colours)]
            stack.append(_refine(_rank([(c,) for c in split]), pairs))


# ---- edge lists for one labelling -----------------------------------------------------------------
def _bfs_tree(num_vertices: int, a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """(parent, child) pairs of the BFS tree from label 0, neighbours visited in label order."""
    neighbours: list[set[int]] = [set() for _ in range(num_vertices)]
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if x != y:
            neighbours[x].add(y)
            neighbours[y].add(x)
    seen, queue, tree = {0}, [0], []
    while queue:
        u = queue.pop(0)
        for w in sorted(neighbours[u]):
            if w not in seen:
                seen.add(w)
                tree.append((u, w))
                queue.append(w)
    if len(seen) != num_vertices:
        raise CrystalError("the quotient graph is disconnected")
    return tree


def _lex_key(offsets: np.ndarray) -> np.ndarray:
    packed: np.ndarray = ((offsets[..., 0] + _SHIFT) * _BASE + offsets[..., 1] + _SHIFT) * _BASE + offsets[..., 2]
    return packed + _SHIFT


def _best_row(keys: np.ndarray) -> np.ndarray:
    """The lexicographically smallest row of ``keys [K, E]``."""
    return keys[np.lexsort(keys.T[::-1])[0]]


def _less(x: np.ndarray, y: np.ndarray) -> bool:
    diff = np.flatnonzero(x != y)
    return bool(diff.size) and bool(x[diff[0]] < y[diff[0]])


def _edge_keys(labels: np.ndarray, edges: np.ndarray, operations: np.ndarray) -> np.ndarray:
    """Sorted packed edge keys ``[K, E]`` of one labelling under each basis operation."""
    n = len(labels)
    a, b = labels[edges[:, 0]], labels[edges[:, 1]]
    flip = a > b
    a, b = np.where(flip, b, a), np.where(flip, a, b)
    off = np.where(flip[:, None], -edges[:, 2:], edges[:, 2:])
    off_k = np.einsum("ec,kcd->ked", off, operations)  # [K, E, 3]
    potentials = np.zeros((len(operations), n, 3), dtype=np.int64)
    for parent, child in _bfs_tree(n, a, b):
        forward = np.flatnonzero((a == parent) & (b == child))
        backward = np.flatnonzero((a == child) & (b == parent))
        cand = np.concatenate([off_k[:, forward], -off_k[:, backward]], axis=1)  # [K, m, 3], parent → child
        chosen = cand[np.arange(len(operations)), np.argmin(_lex_key(cand), axis=1)]  # [K, 3]
        potentials[:, child] = potentials[:, parent] + chosen
    volt = off_k + potentials[:, a] - potentials[:, b]  # [K, E, 3]
    loops = a == b
    if loops.any():
        sub = volt[:, loops]
        first = np.argmax(sub != 0, axis=2)
        sign = np.sign(np.take_along_axis(sub, first[..., None], axis=2))
        volt[:, loops] = sub * sign
    if np.abs(volt).max(initial=0) >= _SHIFT:
        raise CrystalError(f"an edge offset exceeds ±{_SHIFT - 1}; the quotient graph is not a sensible net")
    keys = (a * n + b)[None, :] * _BASE**3 + _lex_key(volt)
    return np.sort(keys, axis=1)


def _unpack(key: int, n: int) -> tuple[int, int, int, int, int]:
    pair, rest = divmod(key, _BASE**3)
    a, b = divmod(pair, n)
    o1, rest = divmod(rest, _BASE**2)
    o2, o3 = divmod(rest, _BASE)
    return a, b, o1 - _SHIFT, o2 - _SHIFT, o3 - _SHIFT


def canonical_form(
    atomic_numbers: np.ndarray,
    edges: np.ndarray,
    operations: np.ndarray,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    source: str | None = None,
) -> CanonicalForm:
    """The lexicographically smallest edge list over all candidate labellings and basis operations.

    Args:
        atomic_numbers: Element of each vertex ``[n]``.
        edges: Undirected edges ``[E, 5]`` (``quotient_graph.orient_edges`` orientation).
        operations: Integer basis changes ``[K, 3, 3]`` applied as ``n → n U`` (``lattice_automorphisms``).
        max_candidates: Cap on labellings × operations; beyond it ``CanonicalisationLimitError`` is raised.
        source: Name of the structure for error messages.

    """
    z = np.asarray(atomic_numbers, dtype=np.int64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 5)
    ops = np.asarray(operations, dtype=np.int64).reshape(-1, 3, 3)
    if len(ops) == 0:
        raise ValueError("at least one basis operation (the identity) is needed")
    max_leaves = max(1, max_candidates // len(ops))
    best: np.ndarray | None = None
    best_labels: list[int] = []
    leaves = 0
    for labels in candidate_labellings(z, e, limit=max_leaves + 1):
        leaves += 1
        if leaves > max_leaves:
            raise CanonicalisationLimitError(
                f"canonical search exceeds {max_candidates} candidates ({len(ops)} basis operations × more "
                f"than {max_leaves} labellings of {len(z)} atoms); raise max_candidates to encode it",
                source=source,
            )
        row = _best_row(_edge_keys(np.asarray(labels, dtype=np.int64), e, ops))
        if best is None or _less(row, best):
            best, best_labels = row, labels
    assert best is not None
    numbers = np.empty(len(z), dtype=np.int64)
    numbers[np.asarray(best_labels, dtype=np.int64)] = z
    return CanonicalForm(
        atomic_numbers=tuple(int(x) for x in numbers),
        edges=tuple(_unpack(int(k), len(z)) for k in best.tolist()),
        leaves=leaves,
        operations=len(ops),
    )
