"""motif_kept / find_motif_layer: ideal nets pass, perturbed and re-described ones too, scrambles fail."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from crystalforge.core.crystal import Crystal
from crystalforge.core.lattice import lattice_from_params
from crystalforge.sampling.constraints import MotifConstraint
from crystalforge.sampling.motif_check import find_motif_layer, motif_kept, motif_stars
from crystalforge.sampling.motifs import MOTIFS, Motif, motif

CASES = [("kagome", 25, 5.4), ("honeycomb", 6, 2.46), ("triangular", 25, 3.0), ("square", 29, 3.0), ("lieb", 29, 5.0)]
SN = 50


def motif_cell(name: str, z: int, a: float, c: float = 6.0, extra: bool = True) -> Crystal:
    """The ideal motif at z = 0 plus (optionally) one Sn atom off the layer."""
    m = motif(name)
    frac = m.frac_coords()
    numbers = [z] * len(frac)
    if extra:
        frac = np.vstack([frac, [0.31, 0.27, 0.5]])
        numbers.append(SN)
    return Crystal(np.array(numbers), frac, lattice_from_params(np.array([a, a, c]), np.array(m.angles)))


def perturbed(crystal: Crystal, sigma: float, shear: float, seed: int) -> Crystal:
    """Gaussian displacements (Å) and a small random strain of the cell, like a mild relaxation."""
    rng = np.random.default_rng(seed)
    strain = np.eye(3) + shear * rng.uniform(-1, 1, size=(3, 3))
    lattice = crystal.lattice @ strain
    cart = crystal.frac_coords @ lattice + rng.normal(0.0, sigma, size=(crystal.num_atoms, 3))
    return Crystal(crystal.atomic_numbers, cart @ np.linalg.inv(lattice), lattice)


def test_ideal_stars():
    assert motif_stars(MOTIFS["kagome"]) == (((60.0, 120.0, 60.0, 120.0), 3),)
    assert motif_stars(MOTIFS["honeycomb"]) == (((120.0, 120.0, 120.0), 2),)
    assert motif_stars(MOTIFS["lieb"]) == (((90.0,) * 4, 1), ((180.0, 180.0), 2))


@pytest.mark.parametrize(("name", "z", "a"), CASES)
def test_ideal_cell_holds_only_its_own_motif(name, z, a):
    crystal = motif_cell(name, z, a)
    found = {other: motif_kept(crystal, other, z) for other in MOTIFS}
    assert found == {other: other == name for other in MOTIFS}
    layer = find_motif_layer(crystal, name, z)
    assert layer is not None
    assert layer.atoms == tuple(range(motif(name).num_sites))
    assert abs(abs(layer.normal[2]) - 1.0) < 1e-9  # the layer is the ab plane
    assert layer.bond_max - layer.bond_min < 1e-9 and layer.angle_error < 1e-6


@pytest.mark.parametrize(("name", "z", "a"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_perturbation_keeps_the_motif(name, z, a, seed):
    crystal = perturbed(motif_cell(name, z, a), sigma=0.02 * a, shear=0.02, seed=seed)
    assert motif_kept(crystal, name, z)


@pytest.mark.parametrize(("name", "z", "a"), CASES)
def test_cell_choice_rotation_and_translation_do_not_matter(name, z, a):
    crystal = perturbed(motif_cell(name, z, a), sigma=0.01 * a, shear=0.01, seed=3)
    rotation = Rotation.from_euler("zyx", [33.0, 51.0, -17.0], degrees=True).as_matrix()
    rotated = Crystal(
        crystal.atomic_numbers, crystal.frac_coords + np.array([0.13, 0.71, 0.29]), crystal.lattice @ rotation.T
    )
    basis = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])  # unimodular: the same lattice, another cell
    other_cell = Crystal(crystal.atomic_numbers, crystal.frac_coords @ np.linalg.inv(basis), basis @ crystal.lattice)
    pymatgen = crystal.to_pymatgen()
    pymatgen.make_supercell([2, 2, 1])
    supercell = Crystal.from_pymatgen(pymatgen)
    for variant in (rotated, other_cell, supercell):
        assert motif_kept(variant, name, z)
    layer = find_motif_layer(supercell, name, z)
    assert layer is not None and len(layer.atoms) == 4 * motif(name).num_sites


@pytest.mark.parametrize(("name", "z", "a"), [case for case in CASES if case[0] in ("kagome", "honeycomb", "lieb")])
@pytest.mark.parametrize("seed", range(5))
def test_scrambled_motif_atoms_fail(name, z, a, seed):
    crystal = motif_cell(name, z, a)
    rng = np.random.default_rng(seed)
    k = motif(name).num_sites
    frac = np.array(crystal.frac_coords)
    frac[:k] = rng.uniform(0.0, 1.0, size=(k, 3))
    assert not motif_kept(Crystal(crystal.atomic_numbers, frac, crystal.lattice), name, z)


def test_extra_atom_inside_the_pattern_breaks_it():
    crystal = motif_cell("kagome", 25, 5.4, extra=False)
    filled = Crystal(np.array([25] * 4), np.vstack([crystal.frac_coords, [0.0, 0.0, 0.0]]), crystal.lattice)
    assert not motif_kept(filled, "kagome:Mn")
    assert motif_kept(filled, "triangular:Mn")  # the hexagon centres complete a triangular net of a/2
    sn_inside = Crystal(np.array([25, 25, 25, SN]), filled.frac_coords, crystal.lattice)
    assert motif_kept(sn_inside, "kagome:Mn")  # another element in the hexagons (Mn3Sn-like) is fine


def test_buckling_beyond_the_tolerance_fails():
    flat = motif_cell("honeycomb", 6, 2.46, c=6.7, extra=False)

    def buckled(dz: float) -> Crystal:  # one sublattice raised by dz Å: bonds tilt by asin(dz / 1.42 Å)
        frac = np.array(flat.frac_coords)
        frac[1, 2] = dz / 6.7
        return Crystal(flat.atomic_numbers, frac, flat.lattice)

    assert motif_kept(buckled(0.1), "honeycomb:C")  # 4°
    assert not motif_kept(buckled(0.4), "honeycomb:C")  # 16°: |bond · n| > 0.2 |bond|
    assert motif_kept(buckled(0.4), "honeycomb:C", tolerance=0.35)


def test_graphite_is_honeycomb_and_sparse_planes_do_not_count():
    graphite = Crystal(
        np.array([6, 6, 6, 6]),
        np.array([[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
        lattice_from_params(np.array([2.46, 2.46, 6.7]), np.array([90.0, 90.0, 120.0])),
    )
    assert motif_kept(graphite, "honeycomb:C")
    assert not motif_kept(graphite, "kagome:C")
    simple_hexagonal = motif_cell("triangular", 25, 5.0, c=6.5, extra=False)
    assert not motif_kept(simple_hexagonal, "square:Mn")  # not 5 x 6.5 Å (a, c), nor a sparse 8.2 x 8.7 Å plane
    assert motif_kept(motif_cell("triangular", 25, 5.0, c=5.5, extra=False), "square:Mn")  # 5 x 5.5 Å is within 20 %
    assert not motif_kept(motif_cell("square", 25, 5.0, c=6.5, extra=False), "triangular:Mn")


def test_spec_forms_and_missing_element():
    crystal = motif_cell("kagome", 25, 5.4)
    constraint = MotifConstraint.parse("kagome:Mn")
    assert motif_kept(crystal, "kagome:Mn")
    assert motif_kept(crystal, ("kagome", "Mn"))
    assert motif_kept(crystal, (MOTIFS["kagome"], 25))
    assert motif_kept(crystal, constraint.motif, constraint.element_z)
    custom = Motif("my-kagome", MOTIFS["kagome"].sites, 120.0)
    assert motif_kept(crystal, custom, "Mn")
    assert not motif_kept(crystal, "kagome:Fe")  # no Fe at all
    assert not motif_kept(crystal, "kagome:Sn")  # one Sn: a triangular net at best


def test_bad_arguments():
    crystal = motif_cell("kagome", 25, 5.4)
    with pytest.raises(ValueError, match="MOTIF:ELEMENT"):
        motif_kept(crystal, "kagome")
    with pytest.raises(ValueError, match="unknown motif"):
        motif_kept(crystal, "hexagonal:Mn")
    with pytest.raises(ValueError, match="tolerance"):
        motif_kept(crystal, "kagome:Mn", tolerance=0.5)
    with pytest.raises(ValueError, match="angle_tolerance"):
        motif_kept(crystal, "kagome:Mn", angle_tolerance=0.0)
