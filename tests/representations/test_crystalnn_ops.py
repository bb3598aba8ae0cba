"""The array CrystalNN fingerprint against matminer's, site by site, and its order parameters against pymatgen's."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from crystalforge import load_dataset
from crystalforge.core.crystal import Crystal
from crystalforge.representations.crystalnn_ops import CrystalNNOps, _Geometry, ops_preset, order_parameter
from crystalforge.representations.fingerprints import CrystalNNFingerprint
from tests.conftest import shared_data_dir

pytest.importorskip("matminer")

# mp_20 test structures that take each route: 0, 23, 55 a degenerate Voronoi facet; 103, 308 no closed
# cell within 5 Å; 11, 46, 52 tied neighbours the bcc value depends on; 3, 16, 65 an angle at a branch
# threshold; the rest are plain.
MP20_ROWS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16, 23, 46, 52, 55, 65, 103, 308]


@pytest.fixture(scope="module")
def library() -> object:
    from matminer.featurizers.site import CrystalNNFingerprint as MatminerCrystalNN

    return MatminerCrystalNN.from_preset("ops")


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    data_root = shared_data_dir()
    if not (data_root / "mp_20").is_dir():
        pytest.skip(f"benchmark data not found in {data_root} (set CRYSTALFORGE_DATA_DIR)")
    mp20 = load_dataset("mp_20", "test", root=data_root)
    chosen = [mp20[i] for i in MP20_ROWS]
    chosen += [load_dataset("perov_5", "test", root=data_root)[i] for i in range(4)]
    chosen += [load_dataset("carbon_24", "test", root=data_root)[i] for i in range(2)]
    rng = np.random.default_rng(0)
    for c in chosen[:6]:  # what a generator gives: the same crystals, slightly off their symmetric positions
        jitter = rng.normal(0.0, 0.05, c.frac_coords.shape) @ np.linalg.inv(c.lattice)
        chosen.append(
            Crystal(c.atomic_numbers, c.frac_coords + jitter, c.lattice, material_id=f"{c.material_id}-jitter")
        )
    return chosen


def _matminer_sites(library: object, crystal: Crystal) -> np.ndarray:
    structure = crystal.to_pymatgen()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([library.featurize(structure, i) for i in range(len(structure))])  # type: ignore[attr-defined]


def test_every_site_agrees_with_matminer_and_every_route_is_taken(library: object, crystals: list[Crystal]):
    ops = CrystalNNOps(library.cnn)  # type: ignore[attr-defined]
    for crystal in crystals:
        structure = crystal.to_pymatgen()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = ops.structure(structure)
        expected = _matminer_sites(library, crystal)
        assert ours.shape == expected.shape == (crystal.num_atoms, 61)
        gap = float(np.abs(ours - expected).max())
        assert gap <= 1e-6, f"{crystal.material_id}: {gap:.3g} from matminer"
    # every route was exercised, not only the fast path
    assert ops.fallbacks > 0, "no shell went to pymatgen's order parameters"
    assert {
        "arrays",
        "a degenerate facet triangle",
        "no closed Voronoi cell",
        "tied neighbours whose order changes the bcc value",
        "an angle at a branch threshold",
    } <= set(ops.routes), ops.routes


def test_featurizer_implementations_agree_and_have_their_own_cache_keys(crystals: list[Crystal]):
    from crystalforge.evaluation.features import featurizer_token

    arrays, matminer = CrystalNNFingerprint(), CrystalNNFingerprint(implementation="matminer")
    subset = crystals[:8]
    np.testing.assert_allclose(arrays.featurize(subset), matminer.featurize(subset), rtol=0, atol=1e-6)
    assert arrays.labels() == matminer.labels()
    assert featurizer_token(arrays) != featurizer_token(matminer)
    with pytest.raises(ValueError, match="implementation"):
        CrystalNNFingerprint(implementation="fast")


def _shell_sites(bonds: np.ndarray) -> list:
    from pymatgen.core.sites import Site

    return [Site("H", np.zeros(3)), *(Site("H", b) for b in bonds)]


def _pymatgen_value(kind: str, params: dict, bonds: np.ndarray) -> float:
    from pymatgen.analysis.local_env import LocalStructOrderParams

    op = LocalStructOrderParams([kind], parameters=[params or None])
    value = op.get_order_parameters(_shell_sites(bonds), 0, indices_neighs=list(range(1, len(bonds) + 1)))[0]
    return float(value or 0)


@pytest.mark.parametrize("cn", list(range(1, 13)))
def test_each_order_parameter_equals_pymatgens_on_random_shells(cn: int):
    rng = np.random.default_rng(cn)
    for _ in range(3):
        bonds = rng.normal(size=(cn, 3)) * rng.uniform(1.8, 2.6, size=(cn, 1))
        dist = np.linalg.norm(bonds, axis=1)
        geometry = _Geometry(bonds / dist[:, None])
        for motif in ops_preset()[cn]:
            ours = order_parameter(motif, bonds / dist[:, None], dist, geometry)
            theirs = _pymatgen_value(motif.kind, motif.params, bonds)
            assert ours == pytest.approx(theirs, abs=1e-9), (cn, motif.name)


IDEAL = {
    4: np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float),  # tetrahedron
    6: np.vstack([np.eye(3), -np.eye(3)]),  # octahedron
    8: np.array([[x, y, z] for x in (1, -1) for y in (1, -1) for z in (1, -1)], dtype=float),  # cube (bcc)
    12: np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if sorted(map(abs, v)) == [0, 1, 1]], dtype=float),
}


@pytest.mark.parametrize("cn", sorted(IDEAL))
def test_ideal_polyhedra_sit_on_thresholds_and_take_pymatgens_branches(cn: int, library: object):
    ops = CrystalNNOps(library.cnn)  # type: ignore[attr-defined]
    bonds = 2.2 * IDEAL[cn] / np.linalg.norm(IDEAL[cn], axis=1)[:, None]
    values = ops._shell(cn, bonds, None, library=True)  # pymatgen's own neighbours carry no ties
    assert values is not None
    expected = [_pymatgen_value(m.kind, m.params, bonds) for m in ops.preset[cn]]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert ops._shell(cn, bonds, None, library=False) == pytest.approx(expected, abs=1e-12)


def test_an_angle_on_a_threshold_is_left_to_pymatgen(library: object):
    ops = CrystalNNOps(library.cnn)  # type: ignore[attr-defined]
    c, s = np.cos(3 * np.pi / 4), np.sin(3 * np.pi / 4)  # two bonds at 135°, the min_SPP of cn 4's motifs
    bonds = 2.0 * np.array([[1.0, 0.0, 0.0], [c, s, 0.0], [0.0, 0.6, 0.8], [0.0, -0.6, -0.8]])
    assert ops._shell(4, bonds, None, library=False) == "an angle at a branch threshold"  # pymatgen's neighbours decide
    values = ops._shell(4, bonds, None, library=True)  # pymatgen's bonds: its own loop decides
    assert values == [_pymatgen_value(m.kind, m.params, bonds) for m in ops.preset[4]]
    assert ops.fallbacks == 1


def test_motif_values_are_invariant_to_rotation_and_to_the_order_of_neighbours():
    rng = np.random.default_rng(7)
    from scipy.spatial.transform import Rotation

    for cn in (3, 4, 5, 6, 7, 12):
        bonds = rng.normal(size=(cn, 3)) * 2.3
        dist = np.linalg.norm(bonds, axis=1)
        unit = bonds / dist[:, None]
        base = [order_parameter(m, unit, dist, _Geometry(unit)) for m in ops_preset()[cn]]
        rotated = unit @ Rotation.random(random_state=cn).as_matrix().T
        perm = rng.permutation(cn)
        for u, d in ((rotated, dist), (unit[perm], dist[perm])):
            again = [order_parameter(m, u, d, _Geometry(u)) for m in ops_preset()[cn]]
            np.testing.assert_allclose(again, base, rtol=0, atol=1e-9)
