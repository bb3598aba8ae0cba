"""The gradient-boosting baseline: invariant features, a toy fit, uncertainty shapes, files and errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("matminer")
pytest.importorskip("sklearn")

from crystalforge.core.crystal import Crystal
from crystalforge.core.extras import MissingDependencyError
from crystalforge.predictors import baseline
from crystalforge.predictors.baseline import (
    STRUCTURE_FEATURES,
    BaselineConfig,
    GradientBoostingPredictor,
    featurize,
    train_baseline,
)
from crystalforge.testing import tiny_crystals

SMALL = {"min_samples_leaf": 2, "max_iter": 40, "learning_rate": 0.3, "max_leaf_nodes": 8, "early_stopping": False}


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _fe_o(count: int, seed: int) -> list[Crystal]:
    """Fe_a O_b cells with random counts, cell sizes and positions (no two atoms closer than ~1 Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        a, b = (int(v) for v in rng.integers(1, 6, size=2))
        n = a + b
        grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) / 3.0
        frac = grid[rng.choice(len(grid), n, replace=False)] + rng.uniform(-0.03, 0.03, (n, 3))
        lattice = np.diag(rng.uniform(5.0, 7.0, 3)) + rng.uniform(-0.3, 0.3, (3, 3))
        out.append(Crystal(np.array([26] * a + [8] * b), frac, lattice, material_id=f"toy-{i}"))
    return out


def _fe_fraction(crystals: list[Crystal]) -> np.ndarray:
    return np.array([float(np.mean(c.atomic_numbers == 26)) for c in crystals])


@pytest.fixture(autouse=True)
def _one_thread():
    """scikit-learn's OpenMP threads spin; on a busy machine they make these tiny fits 50x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    train, test = _fe_o(90, 1), _fe_o(30, 2)
    x_train, names = featurize(train)
    x_test, _ = featurize(test)
    return x_train, _fe_fraction(train), x_test, _fe_fraction(test), names


# ---- features ---------------------------------------------------------------------------------
def test_feature_shape_names_and_values():
    crystals = tiny_crystals()
    x, names = featurize(crystals)
    assert x.shape == (len(crystals), len(names)) and x.dtype == np.float64
    assert names[-len(STRUCTURE_FEATURES) :] == list(STRUCTURE_FEATURES)
    assert len(names) == 132 + len(STRUCTURE_FEATURES)
    structure = dict(zip(names, x[0], strict=True))  # simple cubic Po, a = 3.359 Å
    assert structure["num_atoms"] == 1
    assert structure["volume_per_atom"] == pytest.approx(3.359**3)
    assert structure["nn_distance_min"] == pytest.approx(3.359)
    assert structure["coordination_mean"] == 6
    assert [structure[f"lattice_minimum_{k}"] for k in (1, 2, 3)] == pytest.approx([3.359] * 3)
    assert [structure[f"plane_spacing_{k}"] for k in (1, 2, 3)] == pytest.approx([3.359] * 3)
    si = dict(zip(names, x[1], strict=True))  # diamond Si: 4 neighbours at a·√3/4
    assert si["nn_distance_mean"] == pytest.approx(5.431 * np.sqrt(3) / 4)
    assert si["coordination_mean"] == 4
    assert si["density"] == pytest.approx(2.329, abs=1e-3)
    assert si["lattice_minimum_3"] == pytest.approx(5.431 / np.sqrt(2))  # fcc: 12 shortest vectors a/√2
    assert si["plane_spacing_1"] == pytest.approx(5.431 / np.sqrt(3))  # (111) planes
    assert np.isfinite(x[:, -len(STRUCTURE_FEATURES) :]).all()


def test_features_are_invariant_to_permutation_rotation_translation_and_cell_choice():
    crystals = tiny_crystals()
    rng = np.random.default_rng(0)
    basis = np.array([[1, 1, 0], [0, 1, 0], [1, -1, 1]])  # det 1: another cell of the same lattice
    moved = []
    for i, c in enumerate(crystals):
        perm = rng.permutation(c.num_atoms)
        frac = c.frac_coords[perm] + rng.uniform(-2.0, 2.0, 3)  # periodic translation (wrapped)
        lattice = c.lattice @ _rotation(i).T
        if i % 2:
            frac, lattice = frac @ np.linalg.inv(basis), basis @ lattice
        moved.append(Crystal(c.atomic_numbers[perm], frac, lattice))
    x, _ = featurize(crystals)
    y, _ = featurize(moved)
    np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9)


def test_identical_compositions_share_magpie_rows_and_empty_input():
    si = tiny_crystals()[1]
    doubled = Crystal(np.array([14] * 4), np.vstack([si.frac_coords / 2, si.frac_coords / 2 + 0.5]), si.lattice * 2)
    x, names = featurize([si, doubled])
    np.testing.assert_array_equal(x[0, :132], x[1, :132])  # Si2 and Si4: one reduced composition
    empty, _ = featurize([])
    assert empty.shape == (0, len(names))


def test_missing_matminer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matminer", None)  # as if the descriptors extra were not installed
    with pytest.raises(MissingDependencyError, match=r"crystalforge\[descriptors\]") as info:
        featurize(tiny_crystals())
    assert info.value.module == "matminer" and "gradient-boosting baseline" in str(info.value)


# ---- fitting and uncertainty --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["quantile", "bootstrap"])
def test_fit_learns_a_function_of_composition(toy, method):
    x_train, y_train, x_test, y_test, names = toy
    model = GradientBoostingPredictor(BaselineConfig(method=method, members=3, calibration_fraction=0.0, **SMALL))
    model.fit_features(x_train, y_train, names=names)
    mean, std = model.predict_features(x_test)
    assert mean.shape == std.shape == y_test.shape
    assert (std > 0).all() and np.isfinite(std).all()
    assert np.abs(mean - y_test).mean() < 0.03  # the target spans 1/6..5/6
    assert model.std_scale == 1.0


def test_calibration_scales_the_std_on_a_held_out_fraction(toy):
    x_train, y_train, _, _, names = toy
    noisy = y_train + np.random.default_rng(3).normal(0.0, 0.05, len(y_train))
    model = GradientBoostingPredictor(BaselineConfig(method="bootstrap", members=3, calibration_fraction=0.2, **SMALL))
    model.fit_features(x_train, noisy, names=names)
    raw = model.predict_features(x_train[:5], calibrated=False)[1]
    scaled = model.predict_features(x_train[:5])[1]
    assert model.std_scale > 0 and model.std_offset >= 0 and (model.std_scale, model.std_offset) != (1.0, 0.0)
    np.testing.assert_allclose(scaled, np.sqrt((raw * model.std_scale) ** 2 + model.std_offset**2))


def test_calibration_meets_one_sigma_and_floors_a_collapsed_band():
    rng = np.random.default_rng(0)
    error = np.abs(rng.normal(0.0, 1.0, 4000))
    a, b = baseline._calibration(error, np.full(4000, 0.5))  # raw std too small by 2x, Gaussian errors
    assert a == pytest.approx(2.0, rel=0.08) and b < 0.3
    collapsed = np.where(np.arange(4000) % 3 == 0, 1e-9, 1.0)  # a third of the band collapsed to ~0
    a, b = baseline._calibration(error, collapsed)
    std = np.sqrt((a * collapsed) ** 2 + b * b)
    assert b > 0.1 and np.mean(error <= std) == pytest.approx(baseline.ONE_SIGMA, abs=0.01)
    assert np.mean(error <= 2 * std) == pytest.approx(baseline.TWO_SIGMA, abs=0.03)  # without the floor: 64 %


def test_fit_is_deterministic_given_a_seed(toy):
    x_train, y_train, x_test, _, names = toy
    config = BaselineConfig(method="bootstrap", members=3, seed=7, **SMALL)
    a = GradientBoostingPredictor(config).fit_features(x_train, y_train, names=names).predict_features(x_test)
    b = GradientBoostingPredictor(config).fit_features(x_train, y_train, names=names).predict_features(x_test)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_train_baseline_on_crystals_with_a_property_name():
    toys = _fe_o(40, 4)
    crystals = [c.replace(properties={"fe": v}) for c, v in zip(toys, _fe_fraction(toys), strict=True)]
    model = train_baseline(crystals, "fe", seed=0, threads=1, **SMALL)
    mean, std = model.predict(crystals[:3])
    assert mean.shape == std.shape == (3,) and model.is_fitted
    with pytest.raises(ValueError, match=r"row 0 \(material_id toy-0\) has no 'gap'"):
        train_baseline(crystals, "gap", seed=0)


def test_non_finite_targets_are_rejected_naming_the_row(toy):
    x_train, y_train, *_ = toy
    bad = y_train.copy()
    bad[3], bad[9] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"row 3 .*is nan; 2 row\(s\)"):
        GradientBoostingPredictor().fit_features(x_train, bad)
    crystals = _fe_o(5, 5)
    with pytest.raises(ValueError, match=r"row 1 \(material_id toy-1\) is inf"):
        GradientBoostingPredictor().fit(crystals, [0.1, np.inf, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="expected 5 target values"):
        GradientBoostingPredictor().fit(crystals, [0.1, 0.2])


def test_unfitted_and_wrong_width_are_clear_errors(toy):
    with pytest.raises(RuntimeError, match="not fitted"):
        GradientBoostingPredictor().predict_features(np.zeros((2, 149)))
    x_train, y_train, *_ = toy
    model = GradientBoostingPredictor(BaselineConfig(**SMALL)).fit_features(x_train, y_train)
    with pytest.raises(ValueError, match=r"expected features \[n, 149\]"):
        model.predict_features(x_train[:, :10])
    with pytest.raises(ValueError, match="method must be"):
        BaselineConfig(method="dropout")  # type: ignore[arg-type]


# ---- files ---------------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_predictions(toy, tmp_path):
    x_train, y_train, x_test, _, names = toy
    model = GradientBoostingPredictor(BaselineConfig(calibration_fraction=0.2, **SMALL))
    model.fit_features(x_train, y_train, names=names)
    path = model.save(tmp_path / "sub" / "fe.gbm")
    assert [p.name for p in path.parent.iterdir()] == ["fe.gbm"]  # no temporary file left behind
    loaded = GradientBoostingPredictor.load(path)
    assert loaded.config == model.config and loaded.feature_names == names
    assert (loaded.std_scale, loaded.std_offset) == (model.std_scale, model.std_offset)
    for a, b in zip(model.predict_features(x_test), loaded.predict_features(x_test), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_refuses_another_sklearn_version_and_damaged_files(toy, tmp_path, monkeypatch):
    import sklearn

    x_train, y_train, *_ = toy
    path = GradientBoostingPredictor(BaselineConfig(**SMALL)).fit_features(x_train, y_train).save(tmp_path / "m.gbm")
    data = path.read_bytes()
    (tmp_path / "cut.gbm").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="does not match its checksum"):
        GradientBoostingPredictor.load(tmp_path / "cut.gbm")
    (tmp_path / "other.gbm").write_bytes(b"something else\n")
    with pytest.raises(ValueError, match="not a crystalforge gradient-boosting file"):
        GradientBoostingPredictor.load(tmp_path / "other.gbm")
    monkeypatch.setattr(sklearn, "__version__", "0.0.1")
    with pytest.raises(ValueError, match=r"saved with scikit-learn .* but 0\.0\.1 is installed"):
        GradientBoostingPredictor.load(path)
    with pytest.raises(RuntimeError, match="unfitted"):
        GradientBoostingPredictor().save(tmp_path / "x.gbm")
    assert baseline.FILE_FORMAT == 1


def test_degenerate_cell_gets_nan_structure_features_not_a_crash():
    good = tiny_crystals()[0]
    lattice = good.lattice.copy()
    lattice[2] = lattice[0] + lattice[1] + 1e-4 * lattice[2]
    flat = good.replace(lattice=lattice)
    features, names = featurize([good, flat])
    structure = [names.index(n) for n in STRUCTURE_FEATURES]
    assert np.isfinite(features[0, structure]).all()
    assert np.isnan(features[1, structure]).all()
    assert np.isfinite(features[1, : structure[0]]).any()  # the composition part is still there
