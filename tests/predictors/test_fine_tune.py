"""``fine_tune_heads``: new labels fit, nothing else moves, calibration refitted out of fold, checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalforge.predictors import PredictorEnsemble, PropertyGNN, PropertyGNNConfig
from crystalforge.predictors.training import FineTuneConfig, fine_tune_heads, predict_crystals
from crystalforge.testing import tiny_crystals

CONFIG = PropertyGNNConfig(properties=("a", "b"), hidden=16, layers=2, radial=8, cutoff=4.0)


def _ensemble() -> PredictorEnsemble:
    torch.manual_seed(0)
    ensemble = PredictorEnsemble([PropertyGNN(CONFIG), PropertyGNN(CONFIG)]).eval()
    ensemble.calibration.copy_(torch.tensor([1.3, 0.7]))
    ensemble.record = {"data": "made up"}
    return ensemble


def _crystals(n: int = 20) -> list:
    base = tiny_crystals()
    return [base[i % 5].replace(lattice=base[i % 5].lattice * (0.92 + 0.02 * i)) for i in range(n)]


def _labels(ensemble: PredictorEnsemble, crystals: list) -> np.ndarray:
    """Labels of ``b`` far from the predictions (an offset and a trend), none of ``a``."""
    mean, _ = predict_crystals(ensemble, crystals)
    targets = np.full(mean.shape, np.nan)
    targets[:, 1] = 2.0 + 0.5 * np.array([c.volume / c.num_atoms for c in crystals]) / 10
    return targets


def test_the_labelled_property_is_fitted_and_nothing_else_moves(tmp_path):
    ensemble, crystals = _ensemble(), _crystals()
    targets = _labels(ensemble, crystals)
    before_mean, before_std = predict_crystals(ensemble, crystals)
    tuned = fine_tune_heads(ensemble, crystals, targets, FineTuneConfig(epochs=300))
    mean, std = predict_crystals(tuned, crystals)
    mae_before = np.abs(before_mean[:, 1] - targets[:, 1]).mean()
    mae_after = np.abs(mean[:, 1] - targets[:, 1]).mean()
    assert mae_after < 0.25 * mae_before, (mae_before, mae_after)
    np.testing.assert_array_equal(mean[:, 0], before_mean[:, 0])  # the unlabelled property: bit for bit
    np.testing.assert_array_equal(std[:, 0], before_std[:, 0])
    for old, new in zip(ensemble.gnns(), tuned.gnns(), strict=True):  # the trunk too
        for (name, a), (_, b) in zip(old.named_parameters(), new.named_parameters(), strict=True):
            if not name.startswith("head.2"):
                assert torch.equal(a, b), name
    again, _ = predict_crystals(ensemble, crystals)  # the input ensemble is left as it was
    np.testing.assert_array_equal(again, before_mean)
    assert float(tuned.calibration[0]) == pytest.approx(1.3)  # only b's factor is refitted
    assert float(tuned.calibration[1]) != pytest.approx(0.7) and float(tuned.calibration[1]) > 0
    record = tuned.record["fine_tune"]
    assert tuned.record["data"] == "made up" and record["properties"] == ["b"] and record["pairs"] == 20
    assert record["skipped"] == 0 and set(record["cv_mae"]) == {"b"} and record["settings"]["epochs"] == 300
    assert record["cv_mae"]["b"] < mae_before  # out of fold, the fit still beats the untouched head
    loaded = PredictorEnsemble.load(tuned.save(tmp_path / "tuned.pt"))
    np.testing.assert_allclose(predict_crystals(loaded, crystals)[0], mean, rtol=0, atol=0)
    assert loaded.record["fine_tune"]["calibration"]["b"] == pytest.approx(float(tuned.calibration[1]))


def test_few_labels_keep_the_calibration_and_unsearchable_crystals_are_skipped():
    ensemble, crystals = _ensemble(), _crystals(6)
    flat = crystals[0].replace(lattice=np.diag([4.0, 4.0, 1e-4]))  # too thin to search: NaN prediction
    targets = np.vstack([_labels(ensemble, crystals), [[np.nan, 1.0]]])
    tuned = fine_tune_heads(ensemble, [*crystals, flat], targets, FineTuneConfig(epochs=50))
    record = tuned.record["fine_tune"]
    assert record["pairs"] == 6 and record["skipped"] == 1 and record["cv_mae"] == {}
    torch.testing.assert_close(tuned.calibration, ensemble.calibration)  # fewer than min_calibration labels


def test_bad_targets_and_settings_are_refused():
    ensemble, crystals = _ensemble(), _crystals(4)
    with pytest.raises(ValueError, match=r"targets must be \[4, 2\]"):
        fine_tune_heads(ensemble, crystals, np.zeros((4, 3)), None)
    with pytest.raises(ValueError, match="no finite label"):
        fine_tune_heads(ensemble, crystals, np.full((4, 2), np.nan), None)
    with pytest.raises(ValueError, match="FineTuneConfig"):
        FineTuneConfig(lr=0.0)
