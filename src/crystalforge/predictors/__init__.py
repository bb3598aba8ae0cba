"""Property predictors: periodic GNN surrogates with calibrated uncertainty, and a classic baseline.

May import only ``crystalforge.core`` and ``crystalforge.nn``; guidance (``sampling``) and the
design pipeline use predictors, evaluation receives their values.
"""

from crystalforge.predictors.ensemble import Prediction, PredictorEnsemble, calibration_report
from crystalforge.predictors.gnn import PropertyGNN, PropertyGNNConfig
from crystalforge.predictors.training import PredictorTrainConfig, fit_ensemble

__all__ = [
    "Prediction", "PredictorEnsemble", "PredictorTrainConfig", "PropertyGNN", "PropertyGNNConfig",
    "calibration_report", "fit_ensemble",
]  # fmt: skip
