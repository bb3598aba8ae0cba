import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.lattice import (
    code_to_lattice,
    lattice_from_params,
    lattice_to_code,
    lattice_to_params,
    metric_tensor,
    volume,
)
from crystalforge.core.symmetry_ops import random_rotations
from crystalforge.testing import crystals, tiny_crystals


@settings(max_examples=50, deadline=None)
@given(crystals(max_atoms=4))
def test_round_trip_keeps_metric_tensor(c):
    code = lattice_to_code(c.lattice, c.num_atoms)
    back = code_to_lattice(code, c.num_atoms)
    np.testing.assert_allclose(metric_tensor(back), metric_tensor(c.lattice), rtol=1e-10, atol=1e-9)
    assert volume(back) > 0


def test_round_trip_torch_batch_float64_including_obtuse_and_skewed_cells():
    lengths = torch.tensor([[4.1, 5.3, 6.2], [3.0, 3.0, 3.0], [2.5, 9.0, 12.0], [5.0, 5.0, 7.0]], dtype=torch.float64)
    angles = torch.tensor([[100.0, 110.0, 95.0], [60.0, 60.0, 60.0], [150.0, 100.0, 80.0], [90.0, 90.0, 120.0]])
    lat = lattice_from_params(lengths, angles.double())
    rot = random_rotations(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rotated = lat @ rot.transpose(-1, -2)
    n = torch.tensor([1, 7, 20, 3])
    code = lattice_to_code(rotated, n)
    assert code.shape == (4, 6)
    back = code_to_lattice(code, n)
    torch.testing.assert_close(metric_tensor(back), metric_tensor(lat), rtol=1e-11, atol=1e-10)
    assert bool((torch.linalg.det(back) > 0).all())
    torch.testing.assert_close(lattice_to_code(back, n), code, rtol=0, atol=1e-11)


def test_code_entries_are_size_free_log_lengths_and_angle_codes():
    lat = lattice_from_params(np.array([4.0, 5.0, 6.0]), np.array([80.0, 90.0, 120.0]))
    code = lattice_to_code(lat, 8)
    np.testing.assert_allclose(code[:3], np.log([2.0, 2.5, 3.0]))
    np.testing.assert_allclose(code[3:], np.log(np.tan(np.deg2rad([80.0, 90.0, 120.0]) / 2)), atol=1e-12)
    assert abs(code[4]) < 1e-12  # φ(90°) = 0
    # a k-fold supercell stacked along c at the same density keeps the length code of a and b only
    # when a and b are rescaled with N^(1/3): scaling every length by k^(1/3) with N·k atoms is a no-op
    np.testing.assert_allclose(lattice_to_code(lat * 3 ** (1 / 3), 24), code, atol=1e-12)


def test_left_handed_cell_maps_to_its_right_handed_mirror():
    lat = lattice_from_params(np.array([4.0, 5.0, 6.0]), np.array([80.0, 100.0, 110.0]))
    back = code_to_lattice(lattice_to_code(-lat, 2), 2)
    np.testing.assert_allclose(metric_tensor(back), metric_tensor(lat), atol=1e-10)
    assert volume(back) > 0


def test_any_code_gives_a_finite_right_handed_cell():
    g = torch.Generator().manual_seed(1)
    code = 2.0 * torch.randn(5000, 6, generator=g, dtype=torch.float64)
    lat = code_to_lattice(code, torch.randint(1, 30, (5000,), generator=g))
    assert bool(torch.isfinite(lat).all())
    assert bool((torch.linalg.det(lat) > 0).all())


def test_codes_of_real_cells_are_never_altered():
    g = torch.Generator().manual_seed(2)
    code = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    n = torch.full((2000,), 4)
    lat = code_to_lattice(code, n)
    flatness = torch.linalg.det(lat) / torch.linalg.norm(lat, dim=-1).prod(-1)
    good = flatness > 1e-3
    assert int(good.sum()) > 1000  # most random angle triples form cells
    torch.testing.assert_close(lattice_to_code(lat[good], n[good]), code[good], rtol=0, atol=1e-9)


def test_code_to_lattice_is_differentiable():
    code = torch.tensor([[0.1, 0.2, 0.3, 0.1, -0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: code_to_lattice(c, torch.tensor([5])), (code,))


def test_dataset_stats_carry_lattice_code_moments_and_old_dicts_still_load():
    from crystalforge.data.stats import compute_dataset_stats

    xs = tiny_crystals()
    stats = compute_dataset_stats(xs)
    codes = np.stack([lattice_to_code(c.lattice, c.num_atoms) for c in xs])
    np.testing.assert_allclose(stats.lattice_code_mean, codes.mean(0), atol=1e-12)
    np.testing.assert_allclose(stats.lattice_code_std, codes.std(0), atol=1e-12)
    np.testing.assert_array_equal(stats.lattice_code_min, codes.min(0))
    np.testing.assert_array_equal(stats.lattice_code_max, codes.max(0))
    assert DatasetStats.from_dict(stats.to_dict()) == stats
    old = {k: v for k, v in stats.to_dict().items() if not k.startswith("lattice_code")}
    legacy = DatasetStats.from_dict(old)
    assert legacy.lattice_code_mean is None and legacy.lattice_code_std is None
    assert legacy.lattice_code_min is None and legacy.lattice_code_max is None
    mean, std = legacy.lattice_code_moments()
    assert len(mean) == 6 and len(std) == 6 and all(math.isfinite(x) for x in mean + std)
    assert stats.lattice_code_moments() == (stats.lattice_code_mean, stats.lattice_code_std)
    with pytest.raises(ValueError, match="missing"):
        DatasetStats.from_dict({k: v for k, v in old.items() if k != "density_mean"})


@settings(max_examples=20, deadline=None)
@given(st.floats(0.05, 0.3), st.floats(1.0, 8.0))
def test_legacy_moment_estimate_matches_data_for_narrow_distributions(angle_std, size):
    rng = np.random.default_rng(0)
    n = rng.integers(1, 10, 4000)
    lengths = size * n[:, None] ** (1 / 3) * np.exp(0.05 * rng.standard_normal((4000, 3)))
    angles = 90.0 + angle_std * 10 * rng.standard_normal((4000, 3))
    lat = lattice_from_params(lengths, angles)
    code = lattice_to_code(lat, n)
    lp_len, lp_ang = lattice_to_params(lat)
    hist = np.bincount(n)
    stats = DatasetStats(
        num_structures=4000,
        num_atoms_hist=tuple(int(x) for x in hist),
        density_mean=1.0,
        density_std=0.1,
        volume_per_atom_mean=1.0,
        volume_per_atom_std=0.1,
        log_lengths_mean=tuple(np.log(lp_len).mean(0).tolist()),
        log_lengths_std=tuple(np.log(lp_len).std(0).tolist()),
        angles_mean=tuple(lp_ang.mean(0).tolist()),
        angles_std=tuple(lp_ang.std(0).tolist()),
        element_counts=(0,) * 119,
        element_structures=(0,) * 119,
        num_elements_hist=(0,),
    )
    mean, std = stats.lattice_code_moments()
    np.testing.assert_allclose(mean, code.mean(0), atol=0.01)
    np.testing.assert_allclose(np.array(std)[3:], code.std(0)[3:], rtol=0.05)
