import numpy as np
import pytest
import torch
from hypothesis import given, settings

from crystalforge import Crystal, CrystalBatch, CrystalError
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z, TypeVocabulary, element_table, symbol_to_z, z_to_symbol
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_unimodular,
    supercell,
    translate,
)
from crystalforge.testing import crystal_batches, crystals, tiny_batch, tiny_crystals


def test_tiny_crystals_are_valid_and_varied():
    cs = tiny_crystals()
    assert [c.num_atoms for c in cs] == [1, 2, 8, 5, 3]
    assert all(((c.frac_coords >= 0) & (c.frac_coords < 1)).all() for c in cs)
    nacl = cs[2]
    assert nacl.formula == "NaCl" and nacl.density == pytest.approx(2.164, abs=0.01)


def test_crystal_is_frozen_and_read_only():
    c = tiny_crystals()[1]
    with pytest.raises(AttributeError):
        c.lattice = np.eye(3)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        c.frac_coords[0, 0] = 0.3


def test_left_handed_lattice_becomes_right_handed_with_same_cartesian_structure():
    lat = np.diag([3.0, 4.0, -5.0])
    c = Crystal([1, 8], [[0.1, 0.2, 0.3], [0.5, 0.5, 0.25]], lat)
    assert np.linalg.det(c.lattice) > 0
    expected = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.25]]) @ lat
    diff = c.cart_coords - expected
    # same points modulo lattice translations
    frac_diff = diff @ np.linalg.inv(c.lattice)
    np.testing.assert_allclose(frac_diff - np.round(frac_diff), 0, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"atomic_numbers": [1, 200], "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]]}, "unknown element"),
        ({"atomic_numbers": [1], "frac_coords": [[np.nan, 0, 0]]}, "NaN"),
        ({"atomic_numbers": [1], "frac_coords": [[0, 0, 0]], "lattice": np.zeros((3, 3))}, "degenerate"),
        (
            {"atomic_numbers": [1], "frac_coords": [[0, 0, 0]], "lattice": [[1, 0, 0], [2, 0, 0], [0, 0, 1]]},
            "degenerate",
        ),
        ({"atomic_numbers": [], "frac_coords": np.zeros((0, 3))}, "no atoms"),
        ({"atomic_numbers": [1, 2], "frac_coords": [[0, 0, 0]]}, "coordinate rows"),
        ({"atomic_numbers": [1], "frac_coords": [[0, 0, 0]], "lattice": np.full((3, 3), np.inf)}, "NaN or infinite"),
    ],
)
def test_bad_crystals_raise_naming_the_record(kwargs, message):
    args = {"lattice": np.eye(3) * 4, **kwargs}
    with pytest.raises(CrystalError, match=message) as info:
        Crystal(material_id="rec-7", **args)
    assert "rec-7" in str(info.value)


@settings(max_examples=40, deadline=None)
@given(crystal_batches(max_atoms=6, max_crystals=4))
def test_split_collate_round_trip_is_exact(batch):
    back = CrystalBatch.collate(batch.split(), dtype=torch.float64)
    assert torch.equal(back.atomic_numbers, batch.atomic_numbers)
    assert torch.equal(back.frac_coords, batch.frac_coords)
    assert torch.equal(back.lattice, batch.lattice)
    assert torch.equal(back.num_atoms, batch.num_atoms)


def test_collate_properties_union_and_mask():
    a, b = tiny_crystals()[:2]
    a = a.replace(properties={"e": -1.5})
    b = b.replace(properties={"gap": 2.0})
    batch = CrystalBatch.collate([a, b], dtype=torch.float64)
    assert batch.condition_mask["e"].tolist() == [True, False]
    assert torch.isnan(batch.properties["e"][1])
    out = batch.split()
    assert out[0].properties == {"e": -1.5} and out[1].properties == {"gap": 2.0}
    assert batch.material_ids == ("po_sc_1", "si_fcc_2")


def test_batch_views_and_device_move():
    batch = tiny_batch()
    assert batch.crystal_idx.tolist() == [0] + [1] * 2 + [2] * 8 + [3] * 5 + [4] * 3
    assert batch.atom_offsets.tolist() == [0, 1, 3, 11, 16]
    cart = batch.cart_coords
    np.testing.assert_allclose(cart[1:3].numpy(), tiny_crystals()[1].cart_coords)
    f32 = batch.to(dtype=torch.float32)
    assert f32.frac_coords.dtype == torch.float32 and f32.atomic_numbers.dtype == torch.int64
    f32.validate()
    sub = batch.index_select([3, 1])
    assert sub.num_atoms.tolist() == [5, 2] and sub.material_ids == ("triclinic_5", "si_fcc_2")
    assert sub.split()[0].allclose(tiny_crystals()[3])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_atoms": torch.tensor([1, 2, 8, 5, 4])}, "sum"),
        ({"lattice": torch.zeros(5, 3, 3, dtype=torch.float64)}, "det"),
        ({"atomic_numbers": torch.zeros(19, dtype=torch.int32)}, "int64"),
        ({"frac_coords": torch.full((19, 3), float("nan"), dtype=torch.float64)}, "NaN"),
        ({"properties": {"e": torch.zeros(3)}}, "property"),
    ],
)
def test_batch_validate_names_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        tiny_batch().replace(**change).validate()


def test_symmetry_ops_preserve_structures():
    batch = tiny_batch()
    g = torch.Generator().manual_seed(3)
    perm = random_permutation(batch, generator=g)
    moved = translate(permute(batch, perm), torch.rand(5, 3, generator=g, dtype=torch.float64))
    moved = change_basis(moved, random_unimodular(5, generator=g))
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(primitive_cell=False, scale=False)
    for a, b in zip(batch.split(), moved.split(), strict=True):
        assert matcher.fit(a.to_pymatgen(), b.to_pymatgen())
        assert a.volume == pytest.approx(b.volume)


def test_supercell_scales_extensive_quantities():
    batch = tiny_batch()
    big = supercell(batch, (2, 1, 3))
    big.validate()
    assert big.num_atoms.tolist() == (batch.num_atoms * 6).tolist()
    torch.testing.assert_close(big.volume, batch.volume * 6)
    for small, large in zip(batch.split(), big.split(), strict=True):
        assert large.density == pytest.approx(small.density)
        assert large.formula == small.formula


def test_change_basis_rejects_non_unimodular():
    with pytest.raises(ValueError, match="det"):
        change_basis(tiny_batch(), torch.diag(torch.tensor([2, 1, 1])).repeat(5, 1, 1))


def test_elements_and_vocabulary():
    assert symbol_to_z("Fe") == 26 and symbol_to_z("Fe2+") == 26 and z_to_symbol(8) == "O"
    with pytest.raises(KeyError, match="Xx"):
        symbol_to_z("Xx")
    table = element_table()
    assert len(table.symbols) == 119 and table.masses[1] == pytest.approx(1.008, abs=1e-3)
    vocab = TypeVocabulary((8, 26))
    assert vocab.size == 3
    assert vocab.encode(np.array([26, 8, MASK_Z])).tolist() == [2, 1, 0]
    assert vocab.decode(np.array([2, 1, 0])).tolist() == [26, 8, MASK_Z]
    with pytest.raises(KeyError, match="29"):
        vocab.encode(np.array([29]))


@settings(max_examples=20, deadline=None)
@given(crystals(max_atoms=4))
def test_pymatgen_round_trip_is_exact(c):
    back = Crystal.from_pymatgen(c.to_pymatgen())
    assert back.allclose(c, atol=1e-12)
    ase_back = Crystal.from_ase(c.to_ase())
    assert ase_back.allclose(c, atol=1e-9)


def test_dataset_stats_dict_round_trip():
    from crystalforge.data.stats import compute_dataset_stats

    stats = compute_dataset_stats(tiny_crystals())
    assert stats.num_structures == 5 and stats.max_atoms == 8
    assert stats.num_atoms_hist[8] == 1 and stats.element_structures[6] == 1 and stats.element_counts[11] == 4
    assert stats.num_elements_hist == (0, 3, 1, 1)
    again = DatasetStats.from_dict(stats.to_dict())
    assert again == stats
    draws = stats.sample_num_atoms(1000, rng=np.random.default_rng(0))
    assert set(draws.tolist()) <= {1, 2, 3, 5, 8}
    with pytest.raises(ValueError, match="unknown"):
        DatasetStats.from_dict({**stats.to_dict(), "extra": 1})
