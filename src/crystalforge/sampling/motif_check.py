"""Does a crystal (say, after relaxation) still carry a lattice motif? A test that ignores the cell.

``motif_kept(crystal, "kagome:Mn")`` answers yes or no; ``find_motif_layer`` returns the layer it
found (atoms, plane normal, bond lengths). Only atoms of the motif element count; other elements,
in the layer or not (Sn in the hexagons of Mn3Sn's kagome net), are ignored.

The criterion, in Cartesian space only:

1. **The ideal net** comes from the ``Motif`` itself (sites, ``gamma``, ``a = b = 1``): each site's
   *star* is the set of its nearest neighbours, described by the angular gaps between consecutive
   bonds (``motif_stars``): kagome 4 bonds with gaps 60/120/60/120° (two corner-sharing triangles),
   honeycomb 3 at 120°, triangular 6 at 60°, square 4 at 90°, Lieb 4 at 90° (corner sites) and
   2 at 180° (edge sites, twice as many).
2. **Candidate planes**: normals of pairs of bonds from one motif-element atom to two others
   (periodic images included; its ``MAX_PAIR_BONDS`` shortest bonds) whose lengths agree within
   ``1 + tolerance`` and whose angle is, within ``angle_tolerance``, one found in an ideal star;
   each is tried as proposed and refitted to the bonds lying loosely in it (``_refit``).
3. **The layer test** for a plane normal ``n``: a bond is *in plane* when its component along ``n``
   is at most ``tolerance`` times its length; an atom's in-plane neighbours are the in-plane atoms
   up to ``(1 + tolerance)`` times its shortest in-plane distance, and a layer is a connected set of
   atoms under that relation. The plane carries the motif when some layer has: every atom's star
   matching an ideal star (same number of bonds, every gap within ``angle_tolerance`` after the best
   rotation or reflection), a symmetric neighbour relation, in-plane bond lengths spread by at most
   ``1 + tolerance``, and the ideal stars' proportions (Lieb: one corner per two edge atoms).

Rotations, translations, another cell or a supercell of the same crystal give the same answer, and a
cell sheared a little by relaxation still passes: the lattice ties (``a = b``, ``gamma``) are read
from the bond angles of the net, not from the cell parameters. A pattern with another atom of the
motif element inside it (Mn at a kagome hexagon's centre) fails, as it should.
A layer must be made of short bonds: each atom's shortest in-plane bond is at most ``REACH`` (1.4)
times its nearest motif-element neighbour in any direction, which keeps sparse high-index planes
through a dense 3D arrangement (a near-square net of √2-long bonds in a simple hexagonal lattice)
from counting. Degenerate cells (needing more than ``MAX_IMAGES`` periodic images) are reported as
not keeping the motif.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import z_to_symbol
from crystalforge.core.lattice import plane_spacings
from crystalforge.sampling.motifs import Motif, element_z, parse_motif
from crystalforge.sampling.motifs import motif as motif_by_name

__all__ = [
    "DEFAULT_ANGLE_TOLERANCE",
    "DEFAULT_TOLERANCE",
    "MotifLayer",
    "find_motif_layer",
    "motif_kept",
    "motif_stars",
]

DEFAULT_TOLERANCE = 0.2
"""Relative tolerance: bond-length spread in a layer, and out-of-plane tilt (as a fraction of a bond)."""
DEFAULT_ANGLE_TOLERANCE = 12.0
"""Largest deviation (degrees) of a gap between consecutive in-plane bonds from the ideal star."""
REACH = 1.4
"""A layer atom's shortest in-plane bond is at most ``REACH`` times its nearest motif-element neighbour."""
MAX_PAIR_BONDS = 24
"""Shortest bonds per atom whose pairs propose plane normals."""
MAX_IMAGES = 20_000
"""A neighbour search needing more periodic images than this counts as a degenerate cell."""
_SAME_NORMAL = math.cos(math.radians(2.0))


@dataclass(frozen=True)
class MotifLayer:
    """A layer of motif-element atoms that carries a motif's net.

    Attributes:
        atoms: indices into the crystal of the layer's atoms, sorted.
        normal: unit normal of the plane (Cartesian, Å frame of the crystal).
        bond_min: shortest in-plane nearest-neighbour bond of the layer (Å).
        bond_max: longest one (Å).
        angle_error: largest deviation (degrees) of a star's gap from the ideal star.

    """

    atoms: tuple[int, ...]
    normal: tuple[float, float, float]
    bond_min: float
    bond_max: float
    angle_error: float


@dataclass(frozen=True)
class _Edges:
    """Directed bonds between motif-element atoms (sub-lattice indices), any periodic image."""

    ci: np.ndarray  # [E] centre
    cj: np.ndarray  # [E] neighbour
    image: np.ndarray  # [E, 3] int, the neighbour's cell shift
    vec: np.ndarray  # [E, 3] Å
    dist: np.ndarray  # [E] Å
    nearest: np.ndarray  # [n] Å, each atom's nearest neighbour in any direction


def _gaps(vectors: np.ndarray) -> np.ndarray:
    """Angular gaps (degrees, summing to 360) between consecutive 2D vectors ``[m, 2]`` sorted by angle."""
    angles = np.sort(np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0])))
    return np.diff(np.append(angles, angles[0] + 360.0))


def _gap_error(gaps: np.ndarray, ideal: np.ndarray) -> float:
    """Largest gap deviation (degrees) under the best cyclic rotation or reflection; inf for another count."""
    if len(gaps) != len(ideal):
        return math.inf
    best = math.inf
    for sequence in (gaps, gaps[::-1]):
        for shift in range(len(ideal)):
            best = min(best, float(np.max(np.abs(np.roll(sequence, shift) - ideal))))
    return best


def _canonical(gaps: np.ndarray) -> tuple[float, ...]:
    """A key equal for stars that differ by a rotation or reflection."""
    rounded = np.round(gaps, 6)
    forms = [tuple(np.roll(seq, s).tolist()) for seq in (rounded, rounded[::-1]) for s in range(len(rounded))]
    return min(forms)


@lru_cache(maxsize=64)
def motif_stars(motif: Motif) -> tuple[tuple[tuple[float, ...], int], ...]:
    """The distinct nearest-neighbour stars of the motif's ideal net: ``(gaps in degrees, number of sites)``.

    The net has ``a = b = 1`` and the motif's ``gamma``; a site's star is its nearest neighbours
    (periodic images included), e.g. kagome ``(((60, 120, 60, 120), 3),)``.
    """
    g = math.radians(motif.gamma)
    basis = np.array([[1.0, 0.0], [math.cos(g), math.sin(g)]])
    reach = math.ceil(1.0 / math.sin(g)) + 2
    steps = np.arange(-reach, reach + 1)
    shifts = np.stack(np.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2) @ basis
    sites = np.asarray(motif.sites, dtype=np.float64) @ basis
    points = (sites[:, None, :] + shifts[None]).reshape(-1, 2)
    counts: dict[tuple[float, ...], int] = {}
    for site in sites:
        vectors = points - site
        dist = np.linalg.norm(vectors, axis=1)
        other = dist > 1e-9
        nearest = vectors[other & (dist <= dist[other].min() * (1.0 + 1e-6))]
        key = _canonical(_gaps(nearest))
        counts[key] = counts.get(key, 0) + 1
    return tuple(sorted(counts.items()))


def _pair_angles(stars: tuple[tuple[tuple[float, ...], int], ...], angle_tolerance: float) -> np.ndarray:
    """Angles (degrees) between two bonds of one ideal star that are not collinear."""
    found: set[float] = set()
    for gaps, _ in stars:
        cumulative = np.cumsum(gaps)
        for start in range(len(gaps)):
            for stop in range(start, len(gaps)):
                angle = cumulative[stop] - (cumulative[start - 1] if start else 0.0)
                angle = min(angle, 360.0 - angle)
                if angle_tolerance < angle < 180.0 - angle_tolerance:
                    found.add(round(float(angle), 6))
    return np.array(sorted(found))


def _resolve(motif: str | Motif | tuple[Motif | str, int | str], element: int | str | None) -> tuple[Motif, int]:
    """``(Motif, Z)`` from ``"kagome:Mn"``, ``("kagome", "Mn")``, or a motif (name) with ``element``."""
    if isinstance(motif, tuple):
        motif, element = motif
    if isinstance(motif, str) and element is None:
        return parse_motif(motif)
    found = motif_by_name(motif) if isinstance(motif, str) else motif
    if element is None:
        raise ValueError(f"motif {found.name!r}: give the element on its sites (e.g. '{found.name}:Mn')")
    return found, element_z(element)


def _image_count(spacing: np.ndarray, cutoff: float) -> float:
    return float(np.prod(2.0 * np.ceil(cutoff / spacing) + 1.0))


def _edges(lattice: np.ndarray, frac: np.ndarray, z: int, tolerance: float) -> _Edges | None:
    """Bonds between the sub-lattice atoms up to the module's reach, or None for a degenerate cell."""
    from pymatgen.core import Lattice, Structure

    try:
        spacing = np.asarray(plane_spacings(lattice), dtype=np.float64)
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(spacing)) and spacing.min() > 1e-3):
        return None
    structure = Structure(Lattice(lattice), [z_to_symbol(z)] * len(frac), frac)
    n = len(frac)
    cutoff = 3.0
    while True:
        if _image_count(spacing, cutoff) > MAX_IMAGES:
            return None
        ci, cj, image, dist = structure.get_neighbor_list(cutoff)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, ci, dist)
        if np.isfinite(nearest).all():
            break
        cutoff *= 2.0
    reach = REACH * (1.0 + tolerance) * float(nearest.max())
    if reach > cutoff:
        if _image_count(spacing, reach) > MAX_IMAGES:
            return None
        ci, cj, image, dist = structure.get_neighbor_list(reach)
    keep = dist <= reach
    ci, cj, dist = ci[keep].astype(np.int64), cj[keep].astype(np.int64), dist[keep]
    image = np.rint(image[keep]).astype(np.int64)
    points = structure.frac_coords
    vec = (points[cj] + image - points[ci]) @ lattice
    return _Edges(ci, cj, image, vec, dist, nearest)


def _candidate_normals(
    edges: _Edges, n: int, pair_angles: np.ndarray, tolerance: float, angle_tol: float
) -> list[np.ndarray]:
    """Plane normals proposed by pairs of bonds at one atom, most often proposed first."""
    proposals: list[np.ndarray] = []
    for i in range(n):
        own = np.flatnonzero(edges.ci == i)
        own = own[np.argsort(edges.dist[own], kind="stable")][:MAX_PAIR_BONDS]
        v, d = edges.vec[own], edges.dist[own]
        a, b = np.triu_indices(len(own), 1)
        cos = np.einsum("ij,ij->i", v[a], v[b]) / (d[a] * d[b])
        angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        near = np.zeros(len(a), dtype=bool)
        if len(pair_angles):
            near = np.abs(angle[:, None] - pair_angles[None, :]).min(axis=1) <= angle_tol
        ok = (d[b] <= (1.0 + tolerance) * d[a]) & near
        cross = np.cross(v[a[ok]], v[b[ok]])
        proposals.append(cross / np.linalg.norm(cross, axis=1, keepdims=True))
    every = np.concatenate(proposals) if proposals else np.zeros((0, 3))
    kept = np.zeros_like(every)
    support = np.zeros(len(every), dtype=np.int64)
    count = 0
    for normal in every:
        same = np.flatnonzero(np.abs(kept[:count] @ normal) >= _SAME_NORMAL)
        if same.size:
            support[same[0]] += 1
        else:
            kept[count], support[count] = normal, 1
            count += 1
    order = np.argsort(-support[:count], kind="stable")
    return [kept[k] for k in order]


def _refit(edges: _Edges, n: int, normal: np.ndarray, tolerance: float) -> np.ndarray:
    """The plane through the origin that best fits the bonds loosely in plane (twice the tilt allowed).

    A buckled or sheared layer's true normal is the average over all its bonds, not the normal of
    the two bonds that proposed it.
    """
    loose = np.abs(edges.vec @ normal) <= 2.0 * tolerance * edges.dist
    shortest = np.full(n, np.inf)
    np.minimum.at(shortest, edges.ci[loose], edges.dist[loose])
    near = loose & (edges.dist <= (1.0 + tolerance) * shortest[edges.ci])
    if np.count_nonzero(near) < 2:
        return normal
    fitted: np.ndarray = np.linalg.svd(edges.vec[near] / edges.dist[near, None])[2][-1]
    return fitted


def _layer_for_normal(
    edges: _Edges, n: int, normal: np.ndarray, stars: list[np.ndarray], weights: np.ndarray,
    tolerance: float, angle_tol: float,
) -> tuple[np.ndarray, float, float, float] | None:  # fmt: skip
    """``(sub-lattice atoms, bond_min, bond_max, angle_error)`` of a layer with this normal carrying the net."""
    planar = np.abs(edges.vec @ normal) <= tolerance * edges.dist
    shortest = np.full(n, np.inf)
    np.minimum.at(shortest, edges.ci[planar], edges.dist[planar])
    bonded = np.flatnonzero(planar & (edges.dist <= (1.0 + tolerance) * shortest[edges.ci]))
    rows = np.column_stack([edges.ci, edges.cj, edges.image])[bonded].tolist()
    keys = {tuple(row) for row in rows}
    bad = np.zeros(n, dtype=bool)
    for i, j, *s in keys:
        if (j, i, -s[0], -s[1], -s[2]) not in keys:
            bad[i] = bad[j] = True
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    kind = np.full(n, -1)
    error = np.full(n, np.inf)
    for i in range(n):
        own = bonded[edges.ci[bonded] == i]
        if bad[i] or len(own) == 0 or shortest[i] > REACH * edges.nearest[i]:
            continue
        flat = np.stack([edges.vec[own] @ e1, edges.vec[own] @ e2], axis=1)
        errors = [_gap_error(_gaps(flat), ideal) for ideal in stars]
        best = int(np.argmin(errors))
        if errors[best] <= angle_tol:
            kind[i], error[i] = best, errors[best]
    graph = coo_matrix((np.ones(len(bonded)), (edges.ci[bonded], edges.cj[bonded])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if np.any(kind[members] < 0):
            continue
        counts = np.bincount(kind[members], minlength=len(stars))
        if not np.array_equal(counts * int(weights.sum()), weights * len(members)):
            continue
        lengths = edges.dist[bonded[np.isin(edges.ci[bonded], members)]]
        if lengths.max() <= (1.0 + tolerance) * lengths.min():
            return members, float(lengths.min()), float(lengths.max()), float(error[members].max())
    return None


def find_motif_layer(
    crystal: Crystal,
    motif: str | Motif | tuple[Motif | str, int | str],
    element: int | str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
) -> MotifLayer | None:
    """The first layer of ``crystal`` found to carry the motif's net (module docstring), or None.

    Args:
        crystal: the structure (any cell, relaxed or not).
        motif: ``"kagome:Mn"``, ``("kagome", "Mn")``, or a ``Motif`` or motif name with ``element``.
        element: the element on the motif's sites (symbol or Z) when ``motif`` does not name it.
        tolerance: relative bond-length spread and out-of-plane tilt allowed, in [0, 0.4).
        angle_tolerance: largest deviation (degrees) of a bond-angle gap from the ideal star, in (0, 30].

    Raises:
        ValueError: for an unknown motif or element, or a tolerance out of range.

    """
    if not 0.0 <= tolerance < 0.4:
        raise ValueError(f"tolerance must be in [0, 0.4) (the second neighbours of a square net), got {tolerance}")
    if not 0.0 < angle_tolerance <= 30.0:
        raise ValueError(f"angle_tolerance must be in (0, 30] degrees, got {angle_tolerance}")
    found, z = _resolve(motif, element)
    atoms = np.flatnonzero(crystal.atomic_numbers == z)
    if atoms.size == 0:
        return None
    edges = _edges(np.asarray(crystal.lattice), np.asarray(crystal.frac_coords)[atoms], z, tolerance)
    if edges is None:
        return None
    ideal = motif_stars(found)
    stars = [np.asarray(gaps) for gaps, _ in ideal]
    weights = np.array([count for _, count in ideal], dtype=np.int64)
    pair_angles = _pair_angles(ideal, angle_tolerance)
    for proposed in _candidate_normals(edges, len(atoms), pair_angles, tolerance, angle_tolerance):
        for normal in (proposed, _refit(edges, len(atoms), proposed, tolerance)):
            layer = _layer_for_normal(edges, len(atoms), normal, stars, weights, tolerance, angle_tolerance)
            if layer is not None:
                break
        if layer is not None:
            members, bond_min, bond_max, angle_error = layer
            unit = tuple(float(v) for v in normal)
            return MotifLayer(
                atoms=tuple(int(k) for k in atoms[members]),
                normal=(unit[0], unit[1], unit[2]),
                bond_min=bond_min,
                bond_max=bond_max,
                angle_error=angle_error,
            )
    return None


def motif_kept(
    crystal: Crystal,
    motif: str | Motif | tuple[Motif | str, int | str],
    element: int | str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
) -> bool:
    """Whether some plane of ``crystal`` carries the motif's net (``find_motif_layer`` found a layer).

    ``motif_kept(relaxed, "kagome:Mn")``; ``motif_kept(c, constraint.motif, constraint.element_z)``
    for a ``MotifConstraint``. See the module docstring for the criterion and its tolerances.
    """
    layer = find_motif_layer(crystal, motif, element, tolerance=tolerance, angle_tolerance=angle_tolerance)
    return layer is not None
