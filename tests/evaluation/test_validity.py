"""Validity metric: hand-built cases whose verdicts are known by construction."""

from __future__ import annotations

import itertools
from importlib.metadata import version
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.periodic import min_image_cart
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    translate,
)
from crystalforge.evaluation.metrics.validity import (
    composition_validity,
    structure_validity,
    structure_validity_many,
    validity,
)
from crystalforge.testing import crystals, min_pair_distance, tiny_crystals

needs_smact = pytest.mark.skipif(find_spec("smact") is None, reason="smact is not installed")


def pair(distance: float, *, a: float = 5.0) -> Crystal:
    """Two atoms ``distance`` Å apart along x in a cubic cell of side ``a``."""
    return Crystal([11, 17], [[0.1, 0.2, 0.3], [0.1 + distance / a, 0.2, 0.3]], np.eye(3) * a)


def skewed_close_pair() -> Crystal:
    """Two atoms 0.3 Å apart only through the image ``-2a`` of a very skewed cell.

    ``a = (3,0,0)``, ``b = (60,3,0) = 20a + (0,3,0)``, ``c = (0,0,3)``. The second atom sits at
    frac (0, 0.1, 0), Cartesian (6, 0.3, 0): its image shifted by -2a is (0, 0.3, 0), 0.3 Å from
    the first atom, but images within ±1 of the pbc-reduced difference are all >= 3 Å away.
    """
    lattice = np.array([[3.0, 0.0, 0.0], [60.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    return Crystal([14, 14], [[0.0, 0.0, 0.0], [0.0, 0.1, 0.0]], lattice)


def brute_force_min_distance(crystal: Crystal, reach: int = 3) -> float:
    """Shortest distance between two different atoms over images in [-reach, reach]^3."""
    if crystal.num_atoms < 2:
        return float("inf")
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=float)
    f = crystal.frac_coords
    diff = f[None, :, :] - f[:, None, :]  # [n, n, 3]
    vec = (diff[:, :, None, :] + shifts[None, None]) @ crystal.lattice  # [n, n, S, 3]
    dist = np.linalg.norm(vec, axis=-1).min(-1)
    np.fill_diagonal(dist, np.inf)
    return float(dist.min())


# ---- structure validity ---------------------------------------------------------------------
def test_close_pair_is_invalid_and_the_reason_gives_the_distance():
    result = structure_validity(pair(0.4))
    assert not result.valid and not result
    assert "0.400 Å" in result.reason and "atoms 0 (Na) and 1 (Cl)" in result.reason


def test_pair_beyond_the_minimum_distance_is_valid():
    assert structure_validity(pair(0.6)).valid


def test_tiny_cell_is_invalid_by_volume():
    one_atom = Crystal([26], [[0.0, 0.0, 0.0]], np.diag([0.3, 0.5, 0.5]))  # 0.075 Å³
    result = structure_validity(one_atom)
    assert not result.valid and "volume" in result.reason


def test_one_atom_cells_are_valid_even_when_the_atom_sees_its_own_image_closely():
    assert structure_validity(Crystal([26], [[0.0, 0.0, 0.0]], np.eye(3) * 2.87)).valid
    # 0.4 Å lattice vector: the atom is 0.4 Å from its own image, which is not checked
    assert structure_validity(Crystal([26], [[0.5, 0.5, 0.5]], np.diag([0.4, 3.0, 3.0]))).valid


def test_skewed_cell_close_only_through_a_far_image_is_invalid():
    crystal = skewed_close_pair()
    f = crystal.frac_coords
    _, naive = min_image_cart(f[1] - f[0], crystal.lattice)
    assert naive > 2.9  # the 27-image search from pbc-reduced diffs misses the pair
    assert min_pair_distance(crystal) == pytest.approx(0.3, abs=1e-9)
    result = structure_validity(crystal)
    assert not result.valid and "0.300 Å" in result.reason


def test_thresholds_are_parameters():
    assert structure_validity(pair(0.6), min_distance=0.7).valid is False
    assert structure_validity(pair(0.4), min_distance=0.3).valid
    assert structure_validity(pair(0.4), min_distance=0.0).valid
    assert structure_validity(pair(0.6), min_volume=200.0).valid is False


def test_pathological_cells_give_verdicts_not_errors():
    huge = Crystal([6, 6], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], np.eye(3) * 1.0e5)
    overlapping = Crystal([8, 8, 8], [[0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [0.7, 0.7, 0.7]], np.eye(3) * 4.0)
    needle = Crystal([6, 6], [[0.0, 0.0, 0.0], [0.0, 0.5, 0.5]], np.diag([1e-9, 1e6, 1e6]))
    results = structure_validity_many([huge, overlapping, needle])
    assert results[0].valid
    assert not results[1].valid and "0.000 Å" in results[1].reason
    assert not results[2].valid and "degenerate" in results[2].reason


def test_short_lattice_vector_is_searched_exactly_in_small_blocks():
    lattice = np.diag([0.01, 10.0, 10.0])  # 101 images along a
    far = Crystal([6, 6], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]], lattice)
    near = Crystal([6, 6], [[0.0, 0.0, 0.0], [0.3, 0.03, 0.0]], lattice)  # 0.3 Å along b
    cells = [far, near, skewed_close_pair(), pair(0.4), pair(0.6)]
    batched = [r.valid for r in structure_validity_many(cells)]
    blocked = [r.valid for r in structure_validity_many(cells, max_candidates=50)]
    assert batched == blocked == [True, False, False, False, True]


def test_verdicts_are_invariant_under_the_symmetry_ops():
    cells = [*tiny_crystals(), pair(0.4), pair(0.6), skewed_close_pair()]
    expected = [r.valid for r in structure_validity_many(cells)]
    assert expected == [True] * 5 + [False, True, False]
    batch = CrystalBatch.collate(cells, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    transformed = [
        rotate(batch, random_rotations(len(cells), generator=gen)),
        translate(batch, torch.rand(len(cells), 3, generator=gen, dtype=torch.float64)),
        permute(batch, random_permutation(batch, generator=gen)),
        change_basis(batch, random_unimodular(len(cells), generator=gen, steps=4)),
    ]
    for moved in transformed:
        assert [r.valid for r in structure_validity_many(moved.split())] == expected


@settings(max_examples=25, deadline=None)
@given(crystals(max_atoms=5))
def test_agrees_with_a_brute_force_image_search(crystal):
    cutoff = 1.5  # large enough that both verdicts occur
    expected = brute_force_min_distance(crystal) >= cutoff
    assert structure_validity(crystal, min_distance=cutoff).valid == expected


# ---- composition validity -------------------------------------------------------------------
@pytest.mark.parametrize("oxidation_states", ["smact14", "icsd24"])
@pytest.mark.parametrize(
    ("composition", "valid"),
    [
        ({"Na": 1, "Cl": 1}, True),
        ({"Sr": 1, "Ti": 1, "O": 3}, True),
        ({"Na": 1, "Cl": 2}, False),  # Na+1 with two Cl-1 cannot balance
        ({"Fe": 4}, True),  # single element
        ({"Fe": 3, "Al": 1}, True),  # all metals
    ],
)
@needs_smact
def test_textbook_compositions(composition, valid, oxidation_states):
    for reproduce in (True, False):
        result = composition_validity(composition, oxidation_states=oxidation_states, reproduce_smact_221=reproduce)
        assert result.valid is valid, result.reason


@needs_smact
def test_iridium_lowest_state_of_smact_221():
    # Li+1 and H-1 (Li 0.98 < H 2.20, Ir 2.20): Li3IrH needs Ir-2, Li4IrH needs Ir-3.
    needs_minus_2, needs_minus_3 = {"Li": 3, "Ir": 1, "H": 1}, {"Li": 4, "Ir": 1, "H": 1}
    assert composition_validity(needs_minus_2, reproduce_smact_221=True).valid
    assert not composition_validity(needs_minus_2, reproduce_smact_221=False).valid
    assert not composition_validity(needs_minus_3, reproduce_smact_221=True).valid
    assert composition_validity(needs_minus_3, reproduce_smact_221=False).valid
    assert "Ir-2" in composition_validity(needs_minus_2).reason
    for comp in (needs_minus_2, needs_minus_3):  # the ICSD-24 list has no negative Ir at all
        assert not composition_validity(comp, oxidation_states="icsd24").valid


@needs_smact
def test_zirconium_electronegativity_typo_of_smact_221():
    # ZrCs3F balances only as Zr+4 Cs-1 F-1: the Zr cation must be less electronegative than
    # the Cs anion (0.79), true for the 2.2.1 value 0.33, false for 1.33.
    comp = {"Zr": 1, "Cs": 3, "F": 1}
    assert composition_validity(comp, reproduce_smact_221=True).valid
    result = composition_validity(comp, reproduce_smact_221=False)
    assert not result.valid and "Pauling" in result.reason
    assert composition_validity(comp, reproduce_smact_221=False, pauling_test=False).valid


@needs_smact
def test_missing_electronegativity():
    # Pm has no Pauling electronegativity. Opposite charges pass: PmCl3 (Pm+3, Cl-1).
    assert composition_validity({"Pm": 1, "Cl": 3}, reproduce_smact_221=False).valid
    # Same-sign charges fail: NaPmCl4 balances only with Na+1 and Pm+3 both cations.
    assert not composition_validity({"Na": 1, "Pm": 1, "Cl": 4}, reproduce_smact_221=False).valid
    assert not composition_validity({"Na": 1, "Pm": 1, "Cl": 4}, reproduce_smact_221=True).valid
    # In smact 2.2.1 under CDVAE the first opposite-charge pair with a missing value (H, Pm in
    # Z order) ends the test with a pass, so the failing pair (H-1 2.20, Au+ 2.54) is never seen.
    comp = {"Pm": 1, "Au": 1, "H": 4}
    assert composition_validity(comp, reproduce_smact_221=True).valid
    assert not composition_validity(comp, reproduce_smact_221=False).valid


@needs_smact
def test_elements_without_data_are_invalid_with_a_reason():
    for comp in ({"Og": 1, "O": 2}, {"Og": 1}, {118: 2, 11: 1}):
        result = composition_validity(comp)
        assert not result.valid and "no data for Og" in result.reason
    result = composition_validity({"He": 1, "Na": 1})
    assert not result.valid and "no smact14 oxidation states for He" in result.reason
    assert composition_validity({"He": 3}).valid  # one element


@needs_smact
def test_order_scaling_and_keys_do_not_change_the_verdict():
    forms = [{"Na": 1, "Cl": 1}, {"Cl": 1, "Na": 1}, {"Na": 2, "Cl": 2}, {11: 3, 17: 3}]
    assert {composition_validity(f) for f in forms} == {composition_validity({"Na": 1, "Cl": 1})}
    assert composition_validity({"Cl": 4, "Na": 2}) == composition_validity({"Na": 1, "Cl": 2})


@needs_smact
def test_bad_composition_input_raises():
    for bad, match in [
        ({"Xx": 1}, "unknown element"),
        ({"Na": 0}, "positive integer"),
        ({"Na": 1.5}, "positive integer"),
        ({}, "empty"),
        ({0: 1}, "outside"),
    ]:
        with pytest.raises(ValueError, match=match):
            composition_validity(bad)
    with pytest.raises(ValueError, match="smact14"):
        composition_validity({"Na": 1}, oxidation_states="wiki")  # type: ignore[arg-type]


# ---- the report -----------------------------------------------------------------------------
@needs_smact
def test_report_percentages_reasons_and_protocol():
    nacl = tiny_crystals()[2]
    og = Crystal([118, 8], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], np.eye(3) * 4.0)
    close_nacl = pair(0.4)
    report = validity([nacl, og, close_nacl, pair(0.6)])
    assert report.num_crystals == 4
    assert [c.valid for c in report.crystals] == [True, False, False, True]
    assert report.crystals[1].struct_valid and not report.crystals[1].comp_valid
    assert "Og" in report.crystals[1].reason
    assert not report.crystals[2].struct_valid and report.crystals[2].comp_valid
    assert (report.validity_struct, report.validity_comp, report.validity) == (75.0, 75.0, 50.0)
    protocol = report.protocol
    assert protocol["min_distance"] == 0.5 and protocol["min_volume"] == 0.1
    assert protocol["oxidation_states"] == "smact14" and protocol["reproduce_smact_221"] is True
    assert protocol["smact_version"] == version("smact")  # smact 4.0.2's __version__ still says 4.0.0
    assert report.to_dict()["validity"] == 50.0


def test_empty_report_has_nan_percentages():
    report = validity([])
    assert report.num_crystals == 0 and np.isnan(report.validity)


@pytest.mark.data
@needs_smact
def test_perov_5_test_composition_validity(data_root):
    pd = pytest.importorskip("pandas")
    from pymatgen.core import Structure

    frame = pd.read_csv(data_root / "perov_5" / "test.csv.gz")
    structures = [Crystal.from_pymatgen(Structure.from_str(cif, fmt="cif")) for cif in frame["cif"]]
    assert len(structures) == 3785

    def percent(**settings: object) -> float:
        valid = [composition_validity(c.composition, **settings).valid for c in structures]  # type: ignore[arg-type]
        return round(100.0 * sum(valid) / len(valid), 2)

    assert percent(oxidation_states="smact14", reproduce_smact_221=True) == 98.60
    assert percent(oxidation_states="icsd24", reproduce_smact_221=False) == 98.31
    assert all(r.valid for r in structure_validity_many(structures))
