"""Invariant crystal strings in the SLICES spirit: elements plus the canonical labelled quotient graph.

A string lists the elements of the primitive cell in label order, then every bond as
``i j o1 o2 o3``: vertex labels ``i <= j`` and the three components of the periodic offset
(lattice translation of ``j``), e.g. rock salt and zinc blende::

    Na Cl 0 1 o o o 0 1 o + - 0 1 o + o 0 1 + o - 0 1 + o o 0 1 + + -
    S Zn 0 1 o o o 0 1 o o + 0 1 o + o 0 1 + o o

Offset components are written as SLICES writes them, ``-``, ``o``, ``+`` for −1, 0, +1, and larger
ones by repetition (``++`` = 2, ``---`` = −3). Every token is whole and separated by single
spaces: element symbols, vertex labels (``0``, ``1``, …, one token each) and offset symbols;
``tokens``/``vocabulary`` give what a sequence model needs.

**Invariance.** ``encode`` reduces the crystal to its primitive cell in a Niggli-reduced basis,
reads the bonds with a scale-free rule, and writes the canonical form of the resulting quotient
graph (``quotient_graph`` and ``canonical`` explain each step). The string is therefore the same
for any rotation, translation, permutation of atoms, choice of unit cell or supercell of one
structure, and for a uniform scaling of it. It does not record geometry: structures with the same
net give the same string (so ``lossless`` is False).

**Decoding** (``decode``) parses the string, checks that it describes a connected 3-periodic net,
embeds the net (``net_embedding``: barycentric placement, a fitted metric, a spring relaxation)
and, when a relaxer is given (any object with the ``Relaxer.relax`` method of
``crystalforge.relax``, such as ``make_relaxer("chgnet")``), relaxes the result with it, after
scaling it to the volume of lowest energy when a static ``energy_model`` is given. Decoding
accepts any well-formed graph string, canonical or not.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MAX_Z, symbol_to_z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.representations.canonical import (
    DEFAULT_MAX_CANDIDATES,
    CanonicalForm,
    canonical_form,
    lattice_automorphisms,
)
from crystalforge.representations.net_embedding import embed_net
from crystalforge.representations.quotient_graph import (
    DEFAULT_TOLERANCES,
    QuotientGraph,
    check_periodic_net,
    crystal_quotient_graph,
    net_reduced_basis,
    orient_edges,
)

__all__ = [
    "DecodedString",
    "EncodedString",
    "QuotientStringRepresentation",
    "decode",
    "encode",
    "format_graph",
    "offset_symbol",
    "parse",
    "scale_to_lowest_energy",
    "tokens",
    "vocabulary",
]

ZERO = "o"


def offset_symbol(value: int) -> str:
    """The token of one offset component: ``o`` for 0, ``+``·k for k > 0, ``-``·k for −k."""
    return ZERO if value == 0 else ("+" if value > 0 else "-") * abs(value)


def _offset_value(token: str) -> int | None:
    if token == ZERO:
        return 0
    if token and set(token) == {"+"}:
        return len(token)
    if token and set(token) == {"-"}:
        return -len(token)
    return None


def format_graph(atomic_numbers: Sequence[int], edges: Sequence[Sequence[int]]) -> str:
    """The string of a labelled quotient graph: element symbols, then ``i j o1 o2 o3`` per edge."""
    parts = [z_to_symbol(int(z)) for z in atomic_numbers]
    for a, b, *off in edges:
        parts += [str(int(a)), str(int(b)), *(offset_symbol(int(x)) for x in off)]
    return " ".join(parts)


def tokens(string: str) -> list[str]:
    """The whole tokens of a quotient string (split on whitespace; ``parse`` validates them)."""
    return string.split()


def vocabulary(max_vertices: int, max_offset: int = 3) -> tuple[str, ...]:
    """Every token of strings with up to ``max_vertices`` atoms and offsets up to ``±max_offset``.

    Element symbols (Z order), vertex labels ``0..max_vertices-1``, then offset symbols from
    ``-``·max_offset to ``+``·max_offset.
    """
    elements = tuple(z_to_symbol(z) for z in range(1, MAX_Z + 1))
    labels = tuple(str(k) for k in range(max_vertices))
    offsets = tuple(offset_symbol(k) for k in range(-max_offset, max_offset + 1))
    return (*elements, *labels, *offsets)


def parse(string: str) -> QuotientGraph:
    """The quotient graph of a string; ``CrystalError`` says which token is wrong and why.

    Bonds may be given in any order and orientation (``j i`` with negated offsets is the same
    bond); a repeated bond or a zero-offset loop is an error. Connectivity and periodicity are
    checked by ``check_periodic_net`` (``decode`` does both).
    """
    if not isinstance(string, str):
        raise CrystalError(f"a quotient string must be str, got {type(string).__name__}")
    toks = tokens(string)
    numbers: list[int] = []
    while len(numbers) < len(toks) and toks[len(numbers)][:1].isalpha() and toks[len(numbers)] != ZERO:
        symbol = toks[len(numbers)]
        try:
            numbers.append(symbol_to_z(symbol))
        except KeyError:
            raise CrystalError(f"token {len(numbers)} {symbol!r} is not an element symbol") from None
    if not numbers:
        raise CrystalError("a quotient string must start with at least one element symbol")
    rest = toks[len(numbers) :]
    if not rest:
        raise CrystalError(f"the string lists {len(numbers)} element(s) but no bonds")
    if len(rest) % 5:
        raise CrystalError(
            f"{len(rest)} tokens follow the elements; bonds take 5 each (i j o1 o2 o3), {len(rest) % 5} left over"
        )
    rows = []
    for k in range(0, len(rest), 5):
        where = f"bond {k // 5} (tokens {len(numbers) + k}..{len(numbers) + k + 4})"
        i_tok, j_tok, *off_tok = rest[k : k + 5]
        ends = []
        for tok in (i_tok, j_tok):
            if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0"):
                raise CrystalError(f"{where}: {tok!r} is not a vertex label")
            if int(tok) >= len(numbers):
                raise CrystalError(f"{where}: vertex {tok} does not exist (labels are 0..{len(numbers) - 1})")
            ends.append(int(tok))
        offsets = [_offset_value(t) for t in off_tok]
        if any(o is None for o in offsets):
            bad = next(t for t, o in zip(off_tok, offsets, strict=True) if o is None)
            raise CrystalError(f"{where}: {bad!r} is not an offset symbol ('o', '+'…, '-'…)")
        if ends[0] == ends[1] and all(o == 0 for o in offsets):
            raise CrystalError(f"{where}: atom {ends[0]} bonded to itself with offset 0")
        rows.append([*ends, *(int(o) for o in offsets if o is not None)])
    data = np.asarray(rows, dtype=np.int64)
    edges = orient_edges(data[:, 0], data[:, 1], data[:, 2:])
    if len(edges) != len(data):
        raise CrystalError(f"the string repeats {len(data) - len(edges)} bond(s)")
    return QuotientGraph(np.asarray(numbers, dtype=np.int64), edges)


class _Relaxes(Protocol):
    """What decoding needs of a relaxer (``crystalforge.relax.Relaxer`` has it)."""

    def relax(self, crystals: Sequence[Crystal]) -> list[Any]: ...


SCALE_FACTORS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.65, 1.8)
"""Uniform lattice scalings tried by ``scale_to_lowest_energy`` (the embedding is usually too dense)."""


def scale_to_lowest_energy(
    crystals: Sequence[Crystal], energy_model: _Relaxes, factors: Sequence[float] = SCALE_FACTORS
) -> list[Crystal]:
    """Each crystal scaled uniformly by the factor with the lowest energy per atom under ``energy_model``.

    The embedding gets the shape of a structure right but its size only roughly (bond targets are
    sums of atomic radii); an MLIP relaxation started far too dense can end in another structure.
    ``energy_model`` is a static relaxer (e.g. ``get_relaxer("chgnet-static")``) whose results
    carry ``energy_per_atom``; all candidates go to it in one call. A crystal none of whose
    scalings has a finite energy is returned unscaled.
    """
    items = list(crystals)
    candidates = [c.replace(lattice=c.lattice * f) for c in items for f in factors]
    results = energy_model.relax(candidates) if candidates else []
    energies = np.array([float(getattr(r, "energy_per_atom", np.nan)) for r in results]).reshape(len(items), -1)
    out = []
    for k, crystal in enumerate(items):
        row = np.where(np.isfinite(energies[k]), energies[k], np.inf)
        out.append(crystal if not np.isfinite(row).any() else candidates[k * len(factors) + int(np.argmin(row))])
    return out


@dataclass(frozen=True)
class EncodedString:
    """A string with the facts of its encoding."""

    string: str
    num_atoms: int  # atoms of the primitive cell
    num_edges: int
    tolerance: float  # bond tolerance δ used (NaN for CrystalNN)
    leaves: int  # candidate labellings examined
    operations: int  # basis operations per labelling


@dataclass(frozen=True)
class DecodedString:
    """A decoded crystal, its unrelaxed embedding and what happened on the way."""

    crystal: Crystal  # the embedding, scaled (energy_model) and relaxed (relaxer) when those are given
    embedded: Crystal
    collisions: int  # atom pairs that coincided in the barycentric placement
    bond_rmse: float  # relative RMS deviation of bond lengths from their targets after the springs
    relax_failure: str | None = None  # the relaxer's failure reason, if it failed


@dataclass(frozen=True)
class QuotientStringRepresentation:
    """Crystal ⇄ canonical quotient string (``lossless = False``: geometry is rebuilt from the net).

    Attributes:
        bond_rule: ``"relative"`` (default, fast, scale free) or ``"crystalnn"`` (pymatgen CrystalNN).
        tolerances: Ladder of ``δ`` for the relative rule; the first giving a 3-periodic net is used.
        symprec: spglib tolerance (Å) for the primitive cell.
        angle_tolerance: spglib angle tolerance (degrees).
        max_candidates: Cap on labellings × basis operations (``CanonicalisationLimitError`` beyond it).
        relaxer: Optional relaxer applied after embedding in ``decode`` (e.g. ``make_relaxer("chgnet")``).
        energy_model: Optional static energy model: the embedding is first scaled to its lowest
            energy over ``SCALE_FACTORS`` (``scale_to_lowest_energy``), e.g. ``get_relaxer("chgnet-static")``.
        spring_relax: Relax the spring network after the metric fit (False: barycentric + metric only).

    """

    bond_rule: str = "relative"
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    symprec: float = 0.1
    angle_tolerance: float = 5.0
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    relaxer: _Relaxes | None = field(default=None, compare=False)
    energy_model: _Relaxes | None = field(default=None, compare=False)
    spring_relax: bool = True

    name: ClassVar[str] = "quotient_string"
    lossless: ClassVar[bool] = False

    def encode_with_info(self, crystal: Crystal) -> EncodedString:
        """The canonical string of ``crystal`` and the search facts; ``CrystalError`` names the crystal."""
        graph, _, delta = crystal_quotient_graph(
            crystal,
            rule=self.bond_rule,
            tolerances=self.tolerances,
            symprec=self.symprec,
            angle_tolerance=self.angle_tolerance,
        )
        net, basis = net_reduced_basis(graph)
        form: CanonicalForm = canonical_form(
            net.atomic_numbers,
            net.edges,
            lattice_automorphisms(basis),
            max_candidates=self.max_candidates,
            source=crystal.material_id,
        )
        return EncodedString(
            string=format_graph(form.atomic_numbers, form.edges),
            num_atoms=graph.num_vertices,
            num_edges=graph.num_edges,
            tolerance=delta,
            leaves=form.leaves,
            operations=form.operations,
        )

    def encode(self, crystal: Crystal) -> str:
        """The canonical quotient string of ``crystal``."""
        return self.encode_with_info(crystal).string

    def decode_with_info(self, string: str) -> DecodedString:
        """Parse, check, embed and (with ``relaxer``) relax; ``CrystalError`` for a string that cannot be built."""
        graph = parse(string)
        check_periodic_net(graph, source="quotient string")
        placed = embed_net(graph.atomic_numbers, graph.edges, seed=zlib.crc32(string.encode()), relax=self.spring_relax)
        embedded = Crystal(graph.atomic_numbers, placed.frac_coords, placed.lattice)
        crystal, failure = embedded, None
        if self.energy_model is not None:
            crystal = scale_to_lowest_energy([embedded], self.energy_model)[0]
        if self.relaxer is not None:
            result = self.relaxer.relax([crystal])[0]
            if getattr(result, "crystal", None) is not None and getattr(result, "failure", None) is None:
                crystal = result.crystal
            else:
                failure = str(getattr(result, "failure", "the relaxer returned no structure"))
        return DecodedString(
            crystal=crystal,
            embedded=embedded,
            collisions=placed.collisions,
            bond_rmse=placed.bond_rmse,
            relax_failure=failure,
        )

    def decode(self, encoded: str) -> Crystal:
        """A crystal with the net of ``encoded`` (relaxed when a relaxer is set)."""
        return self.decode_with_info(encoded).crystal


_DEFAULT = QuotientStringRepresentation()


def encode(crystal: Crystal) -> str:
    """The canonical quotient string of ``crystal`` with the default settings."""
    return _DEFAULT.encode(crystal)


def decode(string: str) -> Crystal:
    """A crystal (spring-relaxed embedding, no MLIP) with the net of ``string``."""
    return _DEFAULT.decode(string)
