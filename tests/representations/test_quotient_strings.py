"""Invariant quotient strings: canonical under symmetry copies, distinct nets, round trips, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.representations.base import Representation
from crystalforge.representations.canonical import CanonicalisationLimitError, canonical_form, lattice_automorphisms
from crystalforge.representations.net_embedding import barycentric_placement, collisions
from crystalforge.representations.quotient_graph import orient_edges
from crystalforge.representations.quotient_strings import (
    QuotientStringRepresentation,
    decode,
    encode,
    offset_symbol,
    parse,
    scale_to_lowest_energy,
    tokens,
    vocabulary,
)
from crystalforge.testing import tiny_crystals

REP = QuotientStringRepresentation()
MATCHER = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)


def _crystal(structure: Structure, name: str) -> Crystal:
    return Crystal.from_pymatgen(structure, material_id=name)


def rock_salt() -> Crystal:
    return _crystal(
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]), "NaCl"
    )


def caesium_chloride() -> Crystal:
    return _crystal(Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]), "CsCl")


def perovskite() -> Crystal:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return _crystal(Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"], frac), "SrTiO3")


def wurtzite() -> Crystal:
    lattice = Lattice.hexagonal(3.82, 6.26)
    return _crystal(
        Structure.from_spacegroup("P6_3mc", lattice, ["Zn", "S"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]]), "ZnS-w"
    )


def zinc_blende() -> Crystal:
    lattice = Lattice.cubic(5.41)
    return _crystal(Structure.from_spacegroup("F-43m", lattice, ["Zn", "S"], [[0, 0, 0], [0.25] * 3]), "ZnS-zb")


def low_symmetry() -> Crystal:
    return next(c for c in tiny_crystals() if c.material_id == "triclinic_5")  # P1, 5 atoms


STRUCTURES = [rock_salt, perovskite, wurtzite, low_symmetry]


def _rotated_translated_permuted(crystal: Crystal, seed: int) -> Crystal:
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=seed).as_matrix()
    order = rng.permutation(crystal.num_atoms)
    return Crystal(
        crystal.atomic_numbers[order],
        crystal.frac_coords[order] + rng.uniform(-1, 1, size=3),
        crystal.lattice @ rotation.T,
    )


def _other_cell(crystal: Crystal, change: np.ndarray | None = None) -> Crystal:
    """The same crystal in another basis ``change @ lattice`` (an integer matrix of determinant ±1)."""
    change = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]]) if change is None else change
    return Crystal(crystal.atomic_numbers, crystal.frac_coords @ np.linalg.inv(change), change @ crystal.lattice)


def _supercell_2x1x1(crystal: Crystal) -> Crystal:
    frac = np.concatenate([crystal.frac_coords, crystal.frac_coords + np.array([1, 0, 0])]) / np.array([2, 1, 1])
    lattice = crystal.lattice * np.array([[2.0], [1.0], [1.0]])
    return Crystal(np.tile(crystal.atomic_numbers, 2), frac, lattice)


# ---- invariance -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", STRUCTURES, ids=lambda f: f.__name__)
def test_string_is_invariant_to_symmetry_copies(make):
    crystal = make()
    string = REP.encode(crystal)
    copies = {
        "rotation/translation/permutation": _rotated_translated_permuted(crystal, seed=3),
        "unimodular basis change": _other_cell(crystal),
        "axes permuted": _other_cell(crystal, np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])),
        "axes swapped and one reversed": _other_cell(crystal, np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])),
        "2x1x1 supercell": _supercell_2x1x1(crystal),
        "scaled by 1.07": crystal.replace(lattice=crystal.lattice * 1.07),
        "all at once": _rotated_translated_permuted(_supercell_2x1x1(_other_cell(crystal)), seed=5),
    }
    for what, copy in copies.items():
        assert REP.encode(copy) == string, f"{crystal.material_id}: {what} changed the string"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canonical_form_removes_labelling_and_gauge(seed):
    """With the basis fixed (identity only), relabelling atoms and re-choosing their images changes nothing."""
    graph = parse(REP.encode(perovskite()))
    identity = np.eye(3, dtype=np.int64)[None]
    reference = canonical_form(graph.atomic_numbers, graph.edges, identity)
    rng = np.random.default_rng(seed)
    order = rng.permutation(graph.num_vertices)  # new label of each old vertex
    shift = rng.integers(-2, 3, size=(graph.num_vertices, 3))  # lattice translation of each atom
    e = graph.edges
    offsets = e[:, 2:] + shift[e[:, 0]] - shift[e[:, 1]]
    numbers = np.empty_like(graph.atomic_numbers)
    numbers[order] = graph.atomic_numbers
    moved = canonical_form(numbers, orient_edges(order[e[:, 0]], order[e[:, 1]], offsets), identity)
    assert reference.leaves == 6  # the three O atoms are equivalent in the quotient graph
    assert moved.edges == reference.edges and moved.atomic_numbers == reference.atomic_numbers


def test_module_level_api_and_protocol():
    crystal = rock_salt()
    assert isinstance(REP, Representation) and REP.lossless is False
    string = encode(crystal)
    assert string == REP.encode(crystal)
    assert decode(string).formula == crystal.formula


# ---- distinct nets ----------------------------------------------------------------------------
def test_different_nets_give_different_strings():
    strings = {f.__name__: REP.encode(f()) for f in (rock_salt, caesium_chloride, wurtzite, zinc_blende, perovskite)}
    assert len(set(strings.values())) == len(strings), strings


def test_format_rock_salt():
    string = REP.encode(rock_salt())
    toks = tokens(string)
    assert toks[:2] == ["Na", "Cl"]  # elements in label order (increasing Z)
    assert (len(toks) - 2) % 5 == 0 and (len(toks) - 2) // 5 == 6  # six Na–Cl bonds per primitive cell
    assert set(toks) <= set(vocabulary(max_vertices=2))


# ---- decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [rock_salt, perovskite, wurtzite, zinc_blende, caesium_chloride], ids=lambda f: f.__name__
)
def test_decode_recovers_the_structure_and_the_string(make):
    crystal = make()
    string = REP.encode(crystal)
    decoded = REP.decode_with_info(string)
    assert decoded.crystal.formula == crystal.formula
    assert MATCHER.fit(decoded.crystal.to_pymatgen(), crystal.to_pymatgen()), f"{crystal.material_id} not recovered"
    assert REP.encode(decoded.crystal) == string


def test_decode_accepts_non_canonical_strings():
    canonical = REP.encode(rock_salt())
    toks = tokens(canonical)
    bonds = [toks[k : k + 5] for k in range(2, len(toks), 5)]
    reordered = " ".join(["Na", "Cl"] + [t for bond in reversed(bonds) for t in bond])
    assert reordered != canonical
    assert REP.encode(REP.decode(reordered)) == canonical


def test_barycentric_collisions_are_detected():
    # two O atoms bonded to the same Ti through identical offsets land on one point
    edges = np.array([[0, 1, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    frac = barycentric_placement(3, edges)
    assert collisions(frac) == [(0, 1), (0, 2), (1, 2)]
    assert collisions(np.array([[0.0, 0, 0], [0.5, 0.5, 0.5]])) == []


def test_decode_with_a_relaxer_stub():
    class Stub:
        def __init__(self, fail: bool) -> None:
            self.fail, self.seen = fail, 0

        def relax(self, crystals):
            self.seen += len(crystals)
            if self.fail:
                return [SimpleNamespace(crystal=None, failure="explosion: stub") for _ in crystals]
            return [SimpleNamespace(crystal=c.replace(lattice=c.lattice * 1.1), failure=None) for c in crystals]

    string = REP.encode(rock_salt())
    good = Stub(fail=False)
    out = QuotientStringRepresentation(relaxer=good).decode_with_info(string)
    assert good.seen == 1 and out.relax_failure is None
    np.testing.assert_allclose(out.crystal.lattice, out.embedded.lattice * 1.1)
    bad = QuotientStringRepresentation(relaxer=Stub(fail=True)).decode_with_info(string)
    assert bad.relax_failure == "explosion: stub" and bad.crystal is bad.embedded


def test_volume_scan_picks_the_lowest_energy_scaling():
    class Volume:  # energy per atom lowest at ``target`` Å³ per atom; NaN for 1-atom cells
        def __init__(self, target: float) -> None:
            self.target = target

        def relax(self, crystals):
            return [
                SimpleNamespace(
                    energy_per_atom=float("nan") if c.num_atoms == 1 else (c.volume / c.num_atoms - self.target) ** 2
                )
                for c in crystals
            ]

    dense = rock_salt().replace(lattice=np.eye(3) * 4.5)  # 11.39 Å³ per atom (conventional cell, 8 atoms)
    lone = tiny_crystals()[0]
    scaled, untouched = scale_to_lowest_energy([dense, lone], Volume(20.0))
    assert scaled.volume / scaled.num_atoms == pytest.approx(4.5**3 / 8 * 1.2**3, rel=1e-6)  # 19.68, nearest to 20
    assert untouched is lone
    out = QuotientStringRepresentation(energy_model=Volume(40.0)).decode_with_info(REP.encode(rock_salt()))
    assert out.crystal.volume == pytest.approx(out.embedded.volume * 1.2**3)  # 22 Å³ per atom embedded → 38


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("string", "message"),
    [
        ("", "at least one element"),
        ("0 1 o o o", "at least one element"),
        ("Na Xx 0 1 o o o", "'Xx' is not an element"),
        ("Na Cl", "no bonds"),
        ("Na Cl 0 1 o o", "5 each"),
        ("Na Cl 0 2 o o o", "vertex 2 does not exist"),
        ("Na Cl 0 a o o o", "not a vertex label"),
        ("Na Cl 0 1 o x o", "'x' is not an offset symbol"),
        ("Na Cl 0 0 o o o", "bonded to itself with offset 0"),
        ("Na Cl 0 1 o o + 1 0 o o -", "repeats 1 bond"),
    ],
)
def test_malformed_strings_give_clear_errors(string, message):
    with pytest.raises(CrystalError, match=message):
        parse(string)


def test_decode_refuses_disconnected_and_layered_nets():
    with pytest.raises(CrystalError, match="disconnected"):
        REP.decode("Na Cl 0 0 + o o 0 0 o + o 0 0 o o + 1 1 + o o 1 1 o + o 1 1 o o +")
    with pytest.raises(CrystalError, match="2-periodic"):
        REP.decode("C C 0 1 o o o 0 1 + o o 0 1 o + o")
    with pytest.raises(CrystalError, match="must be str"):
        REP.decode(b"Na Cl")  # type: ignore[arg-type]


def test_encode_refuses_molecules_and_layers_naming_the_structure():
    molecules = Crystal(
        np.array([7, 7]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.1 / 6.0]]), np.eye(3) * 6.0, material_id="N2-box"
    )
    with pytest.raises(CrystalError, match=r"N2-box.*finite \(0-periodic"):
        REP.encode(molecules)
    # one honeycomb layer per cell, layers 6 Å apart: a 2-periodic net at every tolerance of the ladder
    layer = Structure(Lattice.hexagonal(2.46, 6.0), ["C", "C"], [[0, 0, 0], [1 / 3, 2 / 3, 0]])
    with pytest.raises(CrystalError, match=r"graphene.*2-periodic \(layers\)"):
        REP.encode(Crystal.from_pymatgen(layer, material_id="graphene"))


def test_search_cap_raises_instead_of_a_non_canonical_string():
    with pytest.raises(CanonicalisationLimitError, match=r"SrTiO3.*exceeds 10 candidates"):
        QuotientStringRepresentation(max_candidates=10).encode(perovskite())


def test_tokens_and_vocabulary():
    assert offset_symbol(0) == "o" and offset_symbol(2) == "++" and offset_symbol(-3) == "---"
    vocab = vocabulary(max_vertices=12, max_offset=2)
    assert {"Na", "O", "0", "11", "o", "+", "--"} <= set(vocab) and "12" not in vocab
    assert len(vocab) == len(set(vocab))
    assert tokens("Na Cl  0 1 o o +") == ["Na", "Cl", "0", "1", "o", "o", "+"]
    graph = parse("Na Cl 1 0 ++ o -")  # reversed orientation is normalised
    assert graph.edges.tolist() == [[0, 1, -2, 0, 1]]


def test_lattice_automorphisms_are_the_holohedry():
    assert len(lattice_automorphisms(Lattice.cubic(3.0).matrix)) == 48
    assert len(lattice_automorphisms(Lattice.hexagonal(3.0, 5.0).matrix)) == 24
    assert len(lattice_automorphisms(Lattice.orthorhombic(3.0, 4.0, 5.0).matrix)) == 8
    ops = lattice_automorphisms(Lattice.from_parameters(3.0, 4.0, 5.0, 80, 95, 100).matrix)
    assert len(ops) == 2 and (ops[0] == np.eye(3)).all()
