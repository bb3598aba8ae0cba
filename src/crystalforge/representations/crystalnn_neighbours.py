"""CrystalNN's coordination data of a site (Zimmermann & Jain's CrystalNN), computed with arrays.

pymatgen's ``CrystalNN.get_nn_data`` is the other ~40 % of the CrystalNN fingerprint's time, most
of it in ``VoronoiNN``'s per-facet Python loop. This module follows the same recipe for a
structure without oxidation states or disorder (what generated crystals are):

1. the Voronoi cell of the site among all atoms within ``SEARCH_CUTOFF`` (7 Å), one qhull call;
   each facet's solid angle (a fan of triangles from its first vertex, Van Oosterom-Strackee, the
   arctangent taken in (0, π] as pymatgen does) and its area (a fan of tetrahedra: ``3 V / d``);
2. neighbour weights: solid angle / the largest, × solid angle / facet area (porous adjustment),
   × ``1 + 3 √(|Δχ| / 3.3)`` (electronegativity difference), renormalised to a largest of 1, ×
   a cosine taper from ``r_i + r_j + 0.5`` to ``r_i + r_j + 1`` Å (covalent radii), rounded to
   three decimals; weights of 0 drop out;
3. neighbours in decreasing order of weight; each distinct weight ``w_k`` (decreasing,
   ``w_{K+1} = 0``) defines ``CN_k`` = the number of neighbours with weight ≥ ``w_k``, with
   probability the area of the unit quarter circle between ``w_{k+1}`` and ``w_k`` (over π/4).

Float rounding here differs from pymatgen's in the last bits, which matters only at the recipe's
discontinuities: a weight at a rounding boundary (x.xxx5), a neighbour at the search cutoff, a
degenerate facet triangle (pymatgen adds 2π for a triangle of zero triple product), an unbounded
cell. There ``StructureShells.shells`` returns the reason instead, and the caller asks pymatgen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

SEARCH_CUTOFF = 7.0  # Å, CrystalNN's default search radius
DISTANCE_CUTOFFS = (0.5, 1.0)  # Å beyond the sum of radii: weight 1 up to the first, 0 from the second
X_DIFF_WEIGHT = 3.0
ROUND_MARGIN = 1e-9  # |1000 w − (k + ½)| below this: pymatgen decides the rounding
CUTOFF_MARGIN = 1e-6  # Å: a neighbour this close to the search cutoff: pymatgen decides
FIRST_RADIUS = 5.0
"""Å: the cell is first built from the atoms within this radius (a third of the points); it is
pymatgen's cell when all its vertices lie within half of it (no atom farther out can cut it)."""
DEGENERATE = 1e-9  # triple product / |a||b||c| below this: a degenerate facet triangle


@dataclass(frozen=True)
class Shells:
    """CrystalNN's data of one site: ``weights[cn]``, and ``bonds[cn]`` ``[cn, 3]`` to its ``cn`` neighbours.

    Neighbours come in pymatgen's order (by weight, largest first), on which the bcc order parameter
    depends; ``ties`` labels them in groups whose weights agree within ``ROUND_MARGIN``, i.e. whose
    order float rounding may swap (None: pymatgen's own neighbours, in its own order).
    """

    weights: dict[int, float]
    bonds: dict[int, np.ndarray]
    ties: np.ndarray | None = None


@lru_cache(maxsize=256)
def _element_data(symbol: str) -> tuple[float, float]:
    """(electronegativity, default radius) as CrystalNN takes them for an element without oxidation state."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    element = Element(symbol)
    radius = CovalentRadius.radius.get(symbol)
    if radius is None:
        radius = element.atomic_radius
    return float(element.X), float(radius) if radius is not None else math.nan


def supported(structure: Structure) -> bool:
    """True when the recipe here applies: ordered sites, plain elements (no oxidation states)."""
    return structure.is_ordered and all(not hasattr(site.specie, "oxi_state") for site in structure)


class StructureShells:
    """Per-structure arrays shared by its sites' ``shells`` calls."""

    def __init__(self, structure: Structure) -> None:
        self.lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
        frac = np.asarray(structure.frac_coords, dtype=np.float64)
        self.cart = (frac - np.floor(frac)) @ self.lattice  # wrapped into the cell
        symbols = [site.specie.symbol for site in structure]
        data = np.array([_element_data(s) for s in symbols], dtype=np.float64).reshape(-1, 2)
        self.chi, self.radius = data[:, 0], data[:, 1]
        self.usable = bool(np.all(np.isfinite(self.radius)))  # else pymatgen fails, and should
        # every lattice translation that can bring an atom within the cutoff of a site in the cell
        heights = abs(np.linalg.det(self.lattice)) / np.linalg.norm(
            np.cross(self.lattice[[1, 2, 0]], self.lattice[[2, 0, 1]]), axis=1
        )
        spans = [np.arange(-r, r + 1) for r in np.ceil(SEARCH_CUTOFF / heights).astype(int) + 1]
        shifts = np.stack(np.meshgrid(*spans, indexing="ij"), axis=-1).reshape(-1, 3) @ self.lattice
        self.images = (self.cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3)  # [S*N, 3]
        self.image_atom = np.tile(np.arange(len(self.cart)), len(shifts))

    def _cell(self, dist: np.ndarray, radius: float) -> tuple[np.ndarray, Any, np.ndarray, list[list[int]]] | None:
        """Voronoi cell of the site among the atoms within ``radius``.

        Returns (kept images, qhull result, the facets' other points, the facets' vertex lists);
        None if qhull fails, the cell is open, or (below ``SEARCH_CUTOFF``) a vertex lies so far
        out that an atom beyond ``radius`` could cut it.
        """
        from scipy.spatial import Voronoi

        keep = np.flatnonzero(dist <= radius)
        keep = keep[np.argsort(dist[keep], kind="stable")]
        if len(keep) < 5 or dist[keep[1]] < 1e-8:  # too few points for a cell, or an atom on top of another
            return None
        try:
            voro = Voronoi(self.images[keep])
        except Exception:  # noqa: BLE001 - qhull refuses degenerate input; pymatgen handles it its way
            return None
        ridges = np.flatnonzero((voro.ridge_points == 0).any(axis=1))
        others = voro.ridge_points[ridges].max(axis=1)
        faces = [voro.ridge_vertices[r] for r in ridges]
        if not faces or any(-1 in face for face in faces):
            return None
        if radius < SEARCH_CUTOFF:
            corners = voro.vertices[np.unique(np.concatenate(faces))] - self.images[keep[0]]
            if np.linalg.norm(corners, axis=1).max() >= radius / 2 - CUTOFF_MARGIN:
                return None
        return keep, voro, others, faces

    def shells(self, index: int) -> Shells | str:
        """CrystalNN's weights and neighbours of site ``index``, or why pymatgen must decide instead."""
        if not self.usable:
            return "no radius for an element"
        centre = self.cart[index]
        dist = np.linalg.norm(self.images - centre, axis=1)
        cell = self._cell(dist, FIRST_RADIUS)
        if cell is None:  # the smaller set does not fix the cell: pymatgen's own point set
            if np.any(np.abs(dist - SEARCH_CUTOFF) < CUTOFF_MARGIN):
                return "an atom at the search cutoff"
            cell = self._cell(dist, SEARCH_CUTOFF)
        if cell is None:
            return "no closed Voronoi cell"
        keep, voro, others, faces = cell
        measures = _facet_measures(voro.vertices, centre, faces)
        if measures is None:
            return "a degenerate facet triangle"
        solid, volume = measures  # every triangle has a nonzero triple product: all solid angles are > 0
        vectors = self.images[keep[others]] - centre
        bond = np.linalg.norm(vectors, axis=1)
        area = 3 * volume / (bond / 2)  # V = A d / 3, d the distance to the facet
        weight = solid / solid.max() * (solid / area)
        atoms = self.image_atom[keep[others]]
        d_chi = np.abs(self.chi[index] - self.chi[atoms])
        weight = weight * np.where(np.isnan(d_chi), 1.0, 1 + X_DIFF_WEIGHT * np.sqrt(d_chi / 3.3))
        weight = weight / weight.max()
        diameter = self.radius[index] + self.radius[atoms]
        low, high = diameter + DISTANCE_CUTOFFS[0], diameter + DISTANCE_CUTOFFS[1]
        taper = (np.cos((bond - low) / (high - low) * math.pi) + 1) * 0.5
        weight = weight * np.where(bond <= low, 1.0, np.where(bond < high, taper, 0.0))
        if weight.max() == 0:
            return _NONE
        thousandths = weight * 1000
        if np.any(np.abs(thousandths - np.floor(thousandths) - 0.5) < ROUND_MARGIN * 1000):
            return "a weight at a rounding boundary"
        order = np.argsort(-weight, kind="stable")  # pymatgen's neighbour order: by weight, largest first
        weight = weight[order]
        rounded = np.array([round(float(w), 3) for w in weight])
        bonds = vectors[order]
        gaps = -np.diff(weight)
        ties = np.concatenate([[0], np.cumsum(gaps >= ROUND_MARGIN * np.maximum(weight[1:], 1e-300))])
        bins = [float(w) for w in dict.fromkeys(rounded.tolist()) if w > 0] + [0.0]
        weights: dict[int, float] = {}
        by_cn: dict[int, np.ndarray] = {}
        for k, value in enumerate(bins[:-1]):
            cn = int(np.count_nonzero(rounded >= value))
            weights[cn] = _quarter_circle(bins[k], bins[k + 1])
            by_cn[cn] = bonds[:cn]
        rest = 1 - sum(weights.values())
        if rest > 0:
            weights[0], by_cn[0] = rest, np.zeros((0, 3))
        return Shells(weights, by_cn, ties)


_NONE = Shells({0: 1.0}, {0: np.zeros((0, 3))})
"""No neighbour with a weight: coordination number 0 with probability 1."""


def _facet_measures(
    vertices: np.ndarray, centre: np.ndarray, faces: list[list[int]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Solid angle and cone volume of each facet (fans from its first vertex); None if one is degenerate."""
    first, second, third, owner = [], [], [], []
    for f, face in enumerate(faces):
        for a, b in pairwise(face[1:]):
            first.append(face[0])
            second.append(a)
            third.append(b)
            owner.append(f)
    p0 = vertices[first] - centre
    p1 = vertices[second] - centre
    p2 = vertices[third] - centre
    n0, n1, n2 = (np.linalg.norm(p, axis=1) for p in (p0, p1, p2))
    triple = np.einsum("ij,ij->i", p0, np.cross(p1, p2))
    if np.any(np.abs(triple) < DEGENERATE * n0 * n1 * n2):
        return None
    tp = np.abs(triple)
    de = (
        n0 * n1 * n2
        + n2 * np.einsum("ij,ij->i", p0, p1)
        + n1 * np.einsum("ij,ij->i", p0, p2)
        + n0 * np.einsum("ij,ij->i", p1, p2)
    )
    angle = 2 * np.arctan2(tp, de)  # in (0, 2π): pymatgen's atan(tp/de), shifted by π when negative
    owners = np.asarray(owner)
    solid = np.bincount(owners, weights=angle, minlength=len(faces))
    volume = np.bincount(owners, weights=tp / 6, minlength=len(faces))
    return solid, volume


def _quarter_circle(upper: float, lower: float) -> float:
    """Area of the unit quarter circle between ``x = lower`` and ``x = upper``, over π/4."""

    def area(x: float) -> float:
        if x == 1:
            return 0.25 * math.pi
        root = math.sqrt(1 - x**2)
        return 0.5 * (x * root + math.atan(x / root))

    return (area(upper) - area(lower)) / (0.25 * math.pi)
