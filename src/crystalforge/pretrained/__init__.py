"""Shipped model weights (``<name>.pt``) and their cards (``index.json``); data only, no model code.

``list_models()`` reads the cards; ``model_path(name)`` is the weights file of a shipped model.
Model code lives in ``crystalforge.generative`` and is chosen by the family each checkpoint records.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

Card = dict[str, Any]
"""A model card: task, family settings, dataset, default sampler, training record, metrics (JSON)."""


def list_models() -> dict[str, Card]:
    """Shipped models: name → card."""
    index = resources.files(__name__).joinpath("index.json")
    cards: dict[str, Card] = json.loads(index.read_text())
    return cards


def model_path(name: str) -> Path | None:
    """The weights file of shipped model ``name`` (None when no shipped model has that name)."""
    card = list_models().get(name)
    if card is None:
        return None
    return Path(str(resources.files(__name__).joinpath(card["file"])))
