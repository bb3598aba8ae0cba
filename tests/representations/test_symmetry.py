from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    translate,
)
from crystalforge.representations.base import Representation
from crystalforge.representations.symmetry import (
    SymmetryInfo,
    WyckoffEncoding,
    WyckoffRepresentation,
    analyze_symmetry,
)
from crystalforge.testing import crystals, tiny_crystals

TINY = {c.material_id: c for c in tiny_crystals()}
EXPECTED_SPACEGROUPS = {"po_sc_1": 221, "si_fcc_2": 227, "nacl_conv_8": 225, "triclinic_5": 1, "edge_3": 47}


def _spacegroup_structures() -> dict[str, tuple[Crystal, int]]:
    built = {
        "rutile": (
            Structure.from_spacegroup(
                "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
            ),
            136,
        ),
        "wurtzite": (
            Structure.from_spacegroup(
                "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
            ),
            186,
        ),
        "bi2te3": (
            Structure.from_spacegroup(
                "R-3m", Lattice.hexagonal(4.38, 30.5), ["Bi", "Te", "Te"], [[0, 0, 0.4], [0, 0, 0], [0, 0, 0.21]]
            ),
            166,
        ),
        "monoclinic_c2m": (
            Structure.from_spacegroup(
                "C2/m", Lattice.monoclinic(5.6, 3.9, 6.7, 104.0), ["Ca", "O"], [[0.1, 0, 0.3], [0.27, 0, 0.81]]
            ),
            12,
        ),
    }
    return {name: (Crystal.from_pymatgen(s, material_id=name), sg) for name, (s, sg) in built.items()}


SPACEGROUP_STRUCTURES = _spacegroup_structures()
MATCHER = StructureMatcher(scale=False)  # primitive_cell=True: a conventional cell matches its primitive one
# StructureMatcher's primitive-cell reduction misses some pathological random cells (e.g. a C2/m
# carbon cell whose primitive vector is 1.57 Å); supercell matching without reduction finds them.
SUPERCELL_MATCHER = StructureMatcher(scale=False, primitive_cell=False, attempt_supercell=True)


def _same_structure(a: Crystal, b: Crystal) -> bool:
    sa, sb = a.to_pymatgen(), b.to_pymatgen()
    return MATCHER.fit(sa, sb) or SUPERCELL_MATCHER.fit(sa, sb)


def _assert_round_trip(crystal: Crystal, rep: WyckoffRepresentation | None = None) -> Crystal:
    rep = rep or WyckoffRepresentation()
    decoded = rep.decode(rep.encode(crystal))
    assert decoded.material_id == crystal.material_id
    assert _same_structure(crystal, decoded), f"{crystal!r} -> {decoded!r}"
    return decoded


def test_protocol_and_flags():
    rep = WyckoffRepresentation()
    assert isinstance(rep, Representation)
    assert rep.name == "wyckoff"
    assert rep.lossless


@pytest.mark.parametrize(("material_id", "number"), EXPECTED_SPACEGROUPS.items())
def test_known_spacegroups_of_tiny_crystals(material_id: str, number: int):
    info = analyze_symmetry(TINY[material_id])
    assert isinstance(info, SymmetryInfo)
    assert info.spacegroup_number == number
    assert len(info.wyckoff_letters) == len(info.site_symmetry_symbols) == TINY[material_id].num_atoms
    assert info.equivalent_atoms.shape == (TINY[material_id].num_atoms,)
    assert (info.symprec, info.angle_tolerance) == (0.1, 5.0)


def test_nacl_wyckoff_positions():
    nacl = TINY["nacl_conv_8"]
    info = analyze_symmetry(nacl)
    assert info.international == "Fm-3m"
    assert info.num_orbits == 2
    by_element = {z: {info.wyckoff_letters[i] for i in np.flatnonzero(nacl.atomic_numbers == z)} for z in (11, 17)}
    assert sorted(by_element.values(), key=sorted) == [{"a"}, {"b"}]
    enc = WyckoffRepresentation().encode(nacl)
    assert isinstance(enc, WyckoffEncoding)
    assert (enc.spacegroup_number, enc.num_sites, enc.num_atoms) == (225, 2, 8)
    assert sorted(enc.wyckoff_labels) == ["4a", "4b"]
    assert sorted(enc.atomic_numbers.tolist()) == [11, 17]
    np.testing.assert_allclose(np.abs(np.linalg.det(enc.lattice)), 5.64**3, rtol=1e-10)


@pytest.mark.parametrize("material_id", list(TINY))
def test_round_trip_tiny_crystals(material_id: str):
    crystal = TINY[material_id]
    decoded = _assert_round_trip(crystal)
    # same structure, so the same volume per atom
    assert decoded.volume / decoded.num_atoms == pytest.approx(crystal.volume / crystal.num_atoms, rel=1e-9)


def test_si_primitive_decodes_to_conventional_cell():
    decoded = _assert_round_trip(TINY["si_fcc_2"])
    assert decoded.num_atoms == 8
    np.testing.assert_allclose(decoded.lengths, [5.431] * 3, rtol=1e-9)


@pytest.mark.parametrize("name", list(SPACEGROUP_STRUCTURES))
def test_round_trip_spacegroup_structures(name: str):
    crystal, number = SPACEGROUP_STRUCTURES[name]
    enc = WyckoffRepresentation().encode(crystal)
    assert enc.spacegroup_number == number
    assert enc.num_sites == (3 if name == "bi2te3" else 2)
    decoded = _assert_round_trip(crystal)
    assert decoded.volume / decoded.num_atoms == pytest.approx(crystal.volume / crystal.num_atoms, rel=1e-6)


def test_round_trip_of_noisy_structure_within_symprec():
    crystal, _ = SPACEGROUP_STRUCTURES["rutile"]
    rng = np.random.default_rng(0)
    noisy = crystal.replace(frac_coords=crystal.frac_coords + rng.normal(0.0, 0.002, crystal.frac_coords.shape))
    assert analyze_symmetry(noisy).spacegroup_number == 136
    _assert_round_trip(noisy)
    assert analyze_symmetry(noisy, symprec=1e-5).spacegroup_number < 136


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(crystals(max_atoms=5, min_distance=0.8))
def test_round_trip_random_crystals(crystal: Crystal):
    _assert_round_trip(crystal)


def test_invariance_of_spacegroup_number():
    originals = list(TINY.values()) + [c for c, _ in SPACEGROUP_STRUCTURES.values()]
    batch = CrystalBatch.collate(originals, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    transformed = {
        "rotation": rotate(batch, random_rotations(len(originals), generator=gen)),
        "translation": translate(batch, torch.rand(len(originals), 3, generator=gen, dtype=torch.float64)),
        "permutation": permute(batch, random_permutation(batch, generator=gen)),
        "change_basis": change_basis(batch, random_unimodular(len(originals), generator=gen)),
    }
    expected = [analyze_symmetry(c) for c in originals]
    for kind, moved in transformed.items():
        for before, crystal in zip(expected, moved.split(), strict=True):
            after = analyze_symmetry(crystal)
            assert after.spacegroup_number == before.spacegroup_number, (kind, crystal.material_id)
            assert after.num_orbits == before.num_orbits, (kind, crystal.material_id)


def test_spglib_failure_names_the_crystal():
    overlapping = Crystal([6, 6], [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], np.eye(3) * 4.0, material_id="bad-overlap")
    with pytest.raises(CrystalError, match="bad-overlap"):
        analyze_symmetry(overlapping)
    with pytest.raises(CrystalError, match="bad-overlap"):
        WyckoffRepresentation().encode(overlapping)
    with pytest.raises(CrystalError, match="symprec"):
        analyze_symmetry(TINY["po_sc_1"], symprec=0.0)


def test_decode_rejects_inconsistent_encodings():
    enc = WyckoffRepresentation().encode(TINY["nacl_conv_8"])
    wrong_group = WyckoffEncoding(
        spacegroup_number=1,
        hall_number=enc.hall_number,
        lattice=enc.lattice,
        atomic_numbers=enc.atomic_numbers,
        wyckoff_letters=enc.wyckoff_letters,
        frac_coords=enc.frac_coords,
        multiplicities=enc.multiplicities,
        material_id="nacl-wrong",
    )
    with pytest.raises(CrystalError, match="nacl-wrong"):
        WyckoffRepresentation().decode(wrong_group)
    moved = WyckoffEncoding(
        spacegroup_number=enc.spacegroup_number,
        hall_number=enc.hall_number,
        lattice=enc.lattice,
        atomic_numbers=enc.atomic_numbers,
        wyckoff_letters=enc.wyckoff_letters,
        frac_coords=enc.frac_coords + np.array([0.13, 0.07, 0.02]),  # off the special positions
        multiplicities=enc.multiplicities,
        material_id="nacl-moved",
    )
    with pytest.raises(CrystalError, match="multiplicity"):
        WyckoffRepresentation().decode(moved)
    assert WyckoffRepresentation(strict=False).decode(moved).num_atoms == 2 * 192
    with pytest.raises(CrystalError, match="degenerate"):
        WyckoffEncoding(1, 1, np.diag([1.0, 1.0, 0.0]), [1], ["a"], [[0, 0, 0]], [1])
    with pytest.raises(CrystalError, match="hall_number"):
        WyckoffEncoding(1, 999, np.eye(3), [1], ["a"], [[0, 0, 0]], [1])
