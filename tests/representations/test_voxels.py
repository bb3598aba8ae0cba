from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from pymatgen.analysis.structure_matcher import StructureMatcher
from scipy.optimize import linear_sum_assignment

from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.periodic import min_image_cart, wrap_frac
from crystalforge.representations.base import Representation
from crystalforge.representations.voxels import VoxelGrid, VoxelRepresentation
from crystalforge.testing import crystals, tiny_crystals

TOLERANCE = 0.05  # Å, periodic Cartesian distance between matched atoms
TINY = tiny_crystals()
TINY_IDS = [c.material_id for c in TINY]
GRID_FOR = {"po_sc_1": 32, "si_fcc_2": 32, "nacl_conv_8": 48, "triclinic_5": 32, "edge_3": 32}


def matched_distances(decoded: Crystal, original: Crystal) -> np.ndarray:
    """Distances [n] of the best one-to-one matching of atoms of equal Z (inf where none exists)."""
    assert decoded.num_atoms == original.num_atoms
    diff = original.frac_coords[:, None, :] - decoded.frac_coords[None, :, :]
    _, dist = min_image_cart(diff.reshape(-1, 3), original.lattice)
    dist = dist.reshape(original.num_atoms, decoded.num_atoms)
    cost = np.where(original.atomic_numbers[:, None] == decoded.atomic_numbers[None, :], dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols]


def assert_recovered(decoded: Crystal, original: Crystal, *, tol: float = TOLERANCE) -> None:
    assert sorted(decoded.atomic_numbers.tolist()) == sorted(original.atomic_numbers.tolist())
    np.testing.assert_array_equal(decoded.lattice, original.lattice)
    assert matched_distances(decoded, original).max() <= tol


def test_is_a_lossy_representation():
    rep = VoxelRepresentation()
    assert isinstance(rep, Representation)
    assert rep.name == "voxels"
    assert rep.lossless is False
    assert (rep.grid_size, rep.sigma) == (32, 0.35)


def test_grid_layout():
    rep = VoxelRepresentation(grid_size=20)
    grid = rep.encode(TINY[0])  # one Po atom at the origin of a 3.359 Å cube
    assert grid.grid_size == 20
    assert grid.density.shape == grid.z_density.shape == (20, 20, 20)
    assert grid.density.dtype == grid.z_density.dtype == np.float32
    assert not grid.density.flags.writeable
    np.testing.assert_array_equal(grid.lattice, TINY[0].lattice)
    assert np.unravel_index(grid.density.argmax(), grid.density.shape) == (0, 0, 0)
    assert grid.density[0, 0, 0] == pytest.approx(1.0, abs=1e-6)  # own images are > 9σ away
    np.testing.assert_allclose(grid.z_density, 84 * grid.density, rtol=1e-6)
    # periodic Gaussian in the real metric: the point one voxel along a is 3.359/20 Å away
    expected = np.exp(-((3.359 / 20) ** 2) / (2 * 0.35**2))
    assert grid.density[1, 0, 0] == pytest.approx(expected, rel=1e-6)
    assert grid.density[-1, 0, 0] == pytest.approx(expected, rel=1e-6)


def test_periodic_images_overlap_in_small_cells():
    # a 1.2 Å cell: every grid point sees many images, so the density is nearly flat but periodic
    crystal = Crystal([1], [[0.3, 0.3, 0.3]], np.eye(3) * 1.2)
    grid = VoxelRepresentation(grid_size=12).encode(crystal)
    points = np.arange(12) / 12
    d = points[:, None] - 0.3 + np.arange(-5, 6)[None, :]  # [G, images] along one axis
    along = np.exp(-((d * 1.2) ** 2) / (2 * 0.35**2)).sum(1)  # the Gaussian factorises in a cubic cell
    expected = along[:, None, None] * along[None, :, None] * along[None, None, :]
    np.testing.assert_allclose(grid.density, expected, atol=1e-4)  # tails beyond truncate·σ are dropped


@pytest.mark.parametrize("crystal", TINY, ids=TINY_IDS)
def test_tiny_crystals_are_recovered(crystal: Crystal):
    rep = VoxelRepresentation(grid_size=GRID_FOR[crystal.material_id])
    decoded = rep.decode(rep.encode(crystal))
    assert decoded.composition == crystal.composition
    assert_recovered(decoded, crystal)
    matcher = StructureMatcher(stol=0.1, ltol=0.05, angle_tol=1)
    assert matcher.fit(crystal.to_pymatgen(), decoded.to_pymatgen())


@settings(max_examples=25, deadline=None)
@given(crystal=crystals(max_atoms=6, min_distance=1.5, elements=tuple(range(1, 119))))
def test_random_well_separated_crystals_are_recovered(crystal: Crystal):
    rep = VoxelRepresentation(grid_size=48)
    assert_recovered(rep.decode(rep.encode(crystal)), crystal)


@pytest.mark.parametrize("crystal", TINY[2:4], ids=TINY_IDS[2:4])
@pytest.mark.parametrize("shift", [(3, -5, 7), (0, 0, 31)])
def test_decoding_is_invariant_to_whole_voxel_translations(crystal: Crystal, shift: tuple[int, int, int]):
    rep = VoxelRepresentation(grid_size=32)
    moved = crystal.replace(frac_coords=wrap_frac(crystal.frac_coords + np.array(shift) / rep.grid_size))
    grid, moved_grid = rep.encode(crystal), rep.encode(moved)
    np.testing.assert_allclose(moved_grid.density, np.roll(grid.density, shift, axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(moved_grid.z_density, np.roll(grid.z_density, shift, axis=(0, 1, 2)), atol=1e-4)
    decoded, moved_decoded = rep.decode(grid), rep.decode(moved_grid)
    expected = decoded.replace(frac_coords=wrap_frac(decoded.frac_coords + np.array(shift) / rep.grid_size))
    assert_recovered(moved_decoded, expected, tol=1e-6)


def test_sub_voxel_positions():
    # an off-grid atom on a coarse grid: the quadratic fit of log(density) is exact for one Gaussian
    crystal = Crystal([8, 26], [[0.123, 0.456, 0.789], [0.6, 0.1, 0.35]], np.diag([7.0, 8.0, 9.0]))
    rep = VoxelRepresentation(grid_size=24)
    assert matched_distances(rep.decode(rep.encode(crystal)), crystal).max() < 1e-3


def test_close_atoms_merge_declared_loss():
    crystal = Crystal([6, 8], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.55]], np.eye(3) * 5.0)  # 0.25 Å apart < 2σ
    rep = VoxelRepresentation(grid_size=40)
    decoded = rep.decode(rep.encode(crystal))
    assert decoded.num_atoms == 1
    assert decoded.atomic_numbers[0] == 7  # round((6 + 8) / 2)
    np.testing.assert_allclose(decoded.frac_coords[0], [0.5, 0.5, 0.525], atol=2e-3)


def test_empty_grid_raises():
    grid = VoxelGrid(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), np.eye(3) * 4.0)
    with pytest.raises(CrystalError, match="no density peak"):
        VoxelRepresentation(grid_size=8).decode(grid)


def test_bad_arguments():
    with pytest.raises(ValueError, match="grid_size"):
        VoxelRepresentation(grid_size=2)
    with pytest.raises(ValueError, match="sigma"):
        VoxelRepresentation(sigma=0.0)
    with pytest.raises(ValueError, match="threshold"):
        VoxelRepresentation(threshold=1.5)
    with pytest.raises(ValueError, match=r"shape \(G, G, G\)"):
        VoxelGrid(np.zeros((4, 4, 5)), np.zeros((4, 4, 5)), np.eye(3))
    with pytest.raises(ValueError, match="z_density"):
        VoxelGrid(np.zeros((4, 4, 4)), np.zeros((5, 5, 5)), np.eye(3))
