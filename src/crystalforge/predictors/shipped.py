"""Predictors by name: the shipped ones (cards of kind ``predictor`` in ``pretrained``) or a file."""

from __future__ import annotations

from pathlib import Path

from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.pretrained import list_models, model_path

__all__ = ["load_predictor", "shipped_predictors"]


def shipped_predictors() -> list[str]:
    """Names of the shipped predictors."""
    return sorted(name for name, card in list_models().items() if card.get("kind") == "predictor")


def load_predictor(predictor: str | Path) -> PredictorEnsemble:
    """A shipped predictor by name, or a ``predictor.pt`` (or a folder holding one) by path."""
    key = str(predictor)
    if key in shipped_predictors():
        path = model_path(key)
        assert path is not None
        return PredictorEnsemble.load(path)
    candidate = Path(key).expanduser()
    if candidate.is_dir():
        candidate = candidate / "predictor.pt"
    if candidate.is_file():
        return PredictorEnsemble.load(candidate)
    known = ", ".join(shipped_predictors()) or "none"
    raise KeyError(f"unknown predictor {key!r}: not a shipped predictor ({known}) and no such file")
