"""Two-dimensional lattice motifs for structural constraints (SCIGEN-style inpainting).

A ``Motif`` is a set of sites in one layer of a cell plus the lattice ties the pattern needs
(Okabe et al. 2024, "Structural constraint integration in generative model for discovery of
quantum material candidates"): the motif sites sit at ``(x, y, layer)`` in fractional
coordinates of the cell, and the in-plane cell shape is fixed (``a = b``, ``gamma``, with
``alpha = beta = 90°``) while the lengths ``a`` and ``c`` stay free for the model to generate.

| motif | sites (x, y) | ties |
|---|---|---|
| triangular | (0, 0) | a = b, gamma = 120° |
| honeycomb | (1/3, 2/3), (2/3, 1/3) | a = b, gamma = 120° |
| kagome | (1/2, 0), (0, 1/2), (1/2, 1/2) | a = b, gamma = 120° |
| square | (0, 0) | a = b, gamma = 90° |
| lieb | (0, 0), (1/2, 0), (0, 1/2) | a = b, gamma = 90° |

``motif(name)`` looks one up; ``parse_motif("kagome:Mn")`` reads the ``MOTIF:ELEMENT`` form a
command line or config uses. ``sampling.constraints.MotifConstraint`` turns a motif into a
``Constraint``.
``sampling.motif_check.motif_kept`` tells whether a crystal (after relaxation, say) still carries
one, independently of its cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from crystalforge.core.elements import MAX_Z, symbol_to_z

__all__ = ["MOTIFS", "Motif", "element_z", "motif", "motif_names", "parse_motif"]


@dataclass(frozen=True)
class Motif:
    """Sites of a 2D pattern in one layer of a cell, and the lattice ties the pattern requires.

    Attributes:
        name: lookup name (lower case).
        sites: in-plane fractional coordinates ``(x, y)`` of each site, ``k`` of them.
        gamma: the angle between ``a`` and ``b`` in degrees (120 hexagonal, 90 tetragonal).
        layer: default fractional height ``z`` of the layer.
        equal_ab: whether ``a = b`` is tied (every motif here ties it).
        description: one line for help texts.

    """

    name: str
    sites: tuple[tuple[float, float], ...]
    gamma: float
    layer: float = 0.0
    equal_ab: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError(f"motif {self.name!r} has no sites")
        if not 0.0 < self.gamma < 180.0:
            raise ValueError(f"motif {self.name!r}: gamma must be in (0, 180) degrees, got {self.gamma}")
        for site in self.sites:
            if len(site) != 2 or not all(0.0 <= v < 1.0 for v in site):
                raise ValueError(f"motif {self.name!r}: site {site} must be (x, y) with 0 <= x, y < 1")

    @property
    def num_sites(self) -> int:
        """k, the number of motif sites (the first k atoms of each crystal carry them)."""
        return len(self.sites)

    @property
    def angles(self) -> tuple[float, float, float]:
        """The tied cell angles (alpha, beta, gamma) in degrees: the layer is perpendicular to c."""
        return (90.0, 90.0, self.gamma)

    def frac_coords(self, layer: float | None = None) -> np.ndarray:
        """Fractional coordinates ``[k, 3]`` of the sites at height ``layer`` (default ``self.layer``)."""
        z = self.layer if layer is None else float(layer)
        if not 0.0 <= z < 1.0:
            raise ValueError(f"motif {self.name!r}: layer height must be in [0, 1), got {z}")
        return np.asarray([(x, y, z) for x, y in self.sites], dtype=np.float64)


_THIRD, _TWO_THIRDS = 1.0 / 3.0, 2.0 / 3.0

MOTIFS: Mapping[str, Motif] = MappingProxyType(
    {
        m.name: m
        for m in (
            Motif("triangular", ((0.0, 0.0),), 120.0, description="one site per hexagonal cell"),
            Motif(
                "honeycomb",
                ((_THIRD, _TWO_THIRDS), (_TWO_THIRDS, _THIRD)),
                120.0,
                description="two sites per hexagonal cell (graphene-like)",
            ),
            Motif(
                "kagome",
                ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)),
                120.0,
                description="corner-sharing triangles, three sites per hexagonal cell",
            ),
            Motif("square", ((0.0, 0.0),), 90.0, description="one site per square cell"),
            Motif(
                "lieb",
                ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5)),
                90.0,
                description="square lattice with edge-centre sites, three per square cell",
            ),
        )
    }
)
"""The built-in motifs by name."""


def motif_names() -> tuple[str, ...]:
    """Names of the built-in motifs, sorted."""
    return tuple(sorted(MOTIFS))


def motif(name: str) -> Motif:
    """The built-in motif called ``name`` (case-insensitive); ``ValueError`` lists the known names."""
    found = MOTIFS.get(name.strip().lower())
    if found is None:
        raise ValueError(f"unknown motif {name!r}; known motifs: {', '.join(motif_names())}")
    return found


def element_z(text: str | int) -> int:
    """Atomic number of an element symbol (``"Mn"``) or number (``"25"``, 25); ``ValueError`` otherwise."""
    token = str(text).strip()
    if token.isdigit():
        z = int(token)
        if not 1 <= z <= MAX_Z:
            raise ValueError(f"atomic number {z} is outside 1..{MAX_Z}")
        return z
    if not token.isalpha():
        raise ValueError(f"unknown element {text!r}")
    try:
        return symbol_to_z(token)
    except KeyError:
        raise ValueError(f"unknown element {text!r}") from None


def parse_motif(text: str) -> tuple[Motif, int]:
    """``"kagome:Mn"`` → ``(kagome motif, 25)``: a motif name and the element on its sites.

    Raises ``ValueError`` for a missing ``:``, an unknown motif (listing the known ones) or an
    unknown element.
    """
    name, sep, element = text.partition(":")
    if not sep or not name.strip() or not element.strip():
        known = ", ".join(motif_names())
        raise ValueError(f"expected MOTIF:ELEMENT such as 'kagome:Mn', got {text!r} (motifs: {known})")
    found = motif(name)
    try:
        z = element_z(element)
    except ValueError as exc:
        raise ValueError(f"motif {text!r}: {exc}") from None
    return found, z
