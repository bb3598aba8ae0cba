import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalforge.core.lattice import lattice_from_params, lattice_to_params, metric_tensor, plane_spacings, volume
from crystalforge.core.periodic import cart_to_frac, frac_to_cart, min_image_cart, pbc_diff, wrap_frac
from crystalforge.testing import crystals

params = st.tuples(
    st.lists(st.floats(2.0, 15.0), min_size=3, max_size=3),
    st.lists(st.floats(60.0, 120.0), min_size=3, max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(params)
def test_params_round_trip(p):
    lengths, angles = np.array(p[0]), np.array(p[1])
    try:
        lat = lattice_from_params(lengths, angles)
    except ValueError:
        return
    l2, a2 = lattice_to_params(lat)
    np.testing.assert_allclose(l2, lengths, rtol=1e-10)
    np.testing.assert_allclose(a2, angles, atol=1e-8)
    assert volume(lat) > 0


@settings(max_examples=40, deadline=None)
@given(crystals(max_atoms=3))
def test_matrix_params_matrix_agrees_up_to_rotation(c):
    lengths, angles = lattice_to_params(c.lattice)
    rebuilt = lattice_from_params(lengths, angles)
    np.testing.assert_allclose(metric_tensor(rebuilt), metric_tensor(c.lattice), atol=1e-8)


def test_torch_and_numpy_agree():
    lat = np.array([[4.0, 0.1, 0.2], [0.3, 5.0, 0.1], [0.2, 0.4, 6.0]])
    ln, an = lattice_to_params(lat)
    lt, at = lattice_to_params(torch.tensor(lat))
    np.testing.assert_allclose(lt.numpy(), ln)
    np.testing.assert_allclose(at.numpy(), an)
    np.testing.assert_allclose(lattice_from_params(lt, at).numpy(), lattice_from_params(ln, an))


def test_impossible_angles_raise():
    with pytest.raises(ValueError, match="positive volume"):
        lattice_from_params(np.array([3.0, 3.0, 3.0]), np.array([170.0, 10.0, 10.0]))


def test_plane_spacings_of_orthorhombic_cell():
    np.testing.assert_allclose(plane_spacings(np.diag([2.0, 3.0, 4.0])), [2.0, 3.0, 4.0])


@settings(max_examples=50, deadline=None)
@given(crystals(max_atoms=4))
def test_frac_cart_round_trip_has_no_wrap(c):
    f = c.frac_coords + np.array([1.0, -2.0, 3.0])  # outside [0, 1) on purpose
    back = cart_to_frac(frac_to_cart(f, c.lattice), c.lattice)
    np.testing.assert_allclose(back, f, atol=1e-9)


def test_wrap_frac_edges():
    x = np.array([-1e-18, 0.0, 1.0, 2.5, -0.25, 1 - 1e-17])
    w = wrap_frac(x)
    assert ((w >= 0) & (w < 1)).all()
    np.testing.assert_allclose(w, [0.0, 0.0, 0.0, 0.5, 0.75, 0.0], atol=1e-15)
    wt = wrap_frac(torch.tensor(x))
    assert bool(((wt >= 0) & (wt < 1)).all())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.lists(st.integers(-3, 3), min_size=3, max_size=3))
def test_pbc_diff_range_and_image_shift_invariance(d, k):
    a = np.array(d)
    b = np.zeros(3)
    out = pbc_diff(a, b)
    assert ((out >= -0.5) & (out < 0.5)).all()
    np.testing.assert_allclose(pbc_diff(a + np.array(k), b), out, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(crystals(max_atoms=2))
def test_min_image_matches_brute_force(c):
    lattice = c.lattice
    diff = np.array([0.37, -0.81, 0.55])
    _, d = min_image_cart(diff, lattice)
    grid = np.array([[i, j, k] for i in range(-3, 4) for j in range(-3, 4) for k in range(-3, 4)])
    brute = np.linalg.norm((diff + grid) @ lattice, axis=1).min()
    # 27-image search is exact for reduced cells; random cells may need a slightly longer search
    assert d >= brute - 1e-9
    reduced = c.to_pymatgen().get_reduced_structure().lattice.matrix
    _, d_red = min_image_cart(diff @ lattice @ np.linalg.inv(reduced), reduced)
    assert d_red == pytest.approx(brute, abs=1e-8)
