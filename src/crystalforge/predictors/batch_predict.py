"""Predictions for a list of crystals, batched: the arrays the screens use, or the full ``Prediction``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.predictors.ensemble import Prediction, PredictorEnsemble


def predict_all(ensemble: PredictorEnsemble, crystals: Sequence[Crystal], *, batch_size: int = 256) -> Prediction:
    """``ensemble.predict_batches`` over ``crystals``: NaN rows for failures, their reasons in ``failures``."""
    dtype = next(ensemble.parameters()).dtype
    batches = (
        CrystalBatch.collate(list(crystals[i : i + batch_size]), dtype=dtype)
        for i in range(0, len(crystals), batch_size)
    )
    return ensemble.predict_batches(batches)


def predict_crystals(
    ensemble: PredictorEnsemble, crystals: Sequence[Crystal], *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Clean-structure predictions ``(mean, std)`` ``[n, P]`` as float64 arrays (a noise-aware one at t = 1)."""
    prediction = predict_all(ensemble, crystals, batch_size=batch_size)
    return prediction.mean.double().numpy(), prediction.std.double().numpy()
