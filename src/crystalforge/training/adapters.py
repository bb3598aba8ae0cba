"""Starting a run from trained weights: ``init_from`` with new layers, and freezing what is asked.

MatterGen's fine-tuning route: a trained unconditional model gets property layers it did not have
(a ``Conditioner``, whose output starts at zero, so the fine-tuned model begins exactly as the
shipped one) and is trained on a labelled set. ``init_from`` (a ``model.pt`` or a shipped name)
loads every weight the new model shares with it; keys only the new model has are the added layers
and start from their initialisation; a key only the old model has, or one whose shape differs, is
an error (the configs disagree). The new model is built in the base model's frame: its type
vocabulary (unless the config names elements) and its lattice standardisation come from the base
checkpoint, not from the fine-tuning data, so the loaded weights mean what they meant
(``inherit_base``); sizes and property statistics come from the fine-tuning data.

``freeze`` stops training of parameters by name: ``pretrained`` means every weight that came from
``init_from`` (train the added layers only), any other entry is a glob on parameter names
(``backbone.layers.*``). A pattern that matches nothing is an error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.pretrained import model_path
from crystalforge.training.checkpoint import load_checkpoint

__all__ = ["apply_freeze", "inherit_base", "init_weights", "pretrained_names", "resolve_init"]

C = TypeVar("C")

LATTICE_FRAME = (
    "density_mean", "density_std", "volume_per_atom_mean", "volume_per_atom_std", "log_lengths_mean",
    "log_lengths_std", "angles_mean", "angles_std", "lattice_code_mean", "lattice_code_std",
)  # fmt: skip
"""The statistics a trained model's lattice outputs are standardised by: kept from the base model."""

log = logging.getLogger(__name__)


def resolve_init(init_from: str) -> Path:
    """The checkpoint file ``init_from`` names: a path, else a shipped model's file."""
    path = Path(init_from)
    if path.is_file():
        return path
    shipped = model_path(init_from)
    if shipped is None:
        raise FileNotFoundError(f"init_from {init_from!r}: neither a file nor a shipped model (crystalforge models)")
    return shipped


def init_weights(model: nn.Module, init_from: str, *, load: bool = True) -> tuple[str, ...]:
    """Load ``init_from``'s weights into ``model`` (see the module docstring); returns the new keys.

    ``load=False`` (a resumed run, whose own checkpoint holds the weights) only reads which keys
    came from ``init_from``, so ``freeze=["pretrained"]`` means the same on resume.
    """
    path = resolve_init(init_from)
    weights = load_checkpoint(path)["weights"]
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        raise ValueError(
            f"init_from {init_from}: it has weights this model config does not ({unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}): the configs differ beyond added layers"
        )
    wrong = sorted(k for k, v in weights.items() if tuple(v.shape) != tuple(own[k].shape))
    if wrong:
        shapes = ", ".join(f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise ValueError(f"init_from {init_from}: weights do not fit this model config ({shapes})")
    new = sorted(set(own) - set(weights))
    if load:
        model.load_state_dict(weights, strict=False)
        if new:
            log.info("init_from %s: %d new weight tensors start from their initialisation", init_from, len(new))
    return tuple(new)


def apply_freeze(model: nn.Module, freeze: Sequence[str], pretrained: Sequence[str] = ()) -> int:
    """Stop gradients for the parameters ``freeze`` names; returns how many parameters were frozen.

    ``pretrained``: the weight names that came from ``init_from`` (what ``"pretrained"`` means).
    """
    if not freeze:
        return 0
    loaded = set(pretrained)
    if "pretrained" in freeze and not loaded:
        raise ValueError("freeze: 'pretrained' needs init_from (there are no pretrained weights to freeze)")
    named = dict(model.named_parameters())
    chosen: set[str] = set()
    for pattern in freeze:
        hits = {n for n in named if n in loaded} if pattern == "pretrained" else set(fnmatch.filter(named, pattern))
        if not hits:
            raise ValueError(f"freeze: {pattern!r} matches no parameter (names look like {next(iter(named), '')!r})")
        chosen |= hits
    trainable = sum(p.numel() for n, p in named.items() if p.requires_grad and n not in chosen)
    if trainable == 0:
        raise ValueError("freeze: every parameter is frozen; nothing would train")
    count = 0
    for name in chosen:
        named[name].requires_grad_(False)
        count += named[name].numel()
    log.info("froze %d parameters; %d train", count, trainable)
    return count


def pretrained_names(model: nn.Module, new: Sequence[str]) -> list[str]:
    """Parameter names of ``model`` that came from ``init_from`` (all but the ``new`` keys)."""
    added = set(new)
    return [n for n, _ in model.named_parameters() if n not in added]


def inherit_base(init_from: str, stats: DatasetStats, model_config: C) -> tuple[DatasetStats, C]:
    """The fine-tuning data's statistics and model config, in the base checkpoint's frame.

    The lattice statistics come from the base model's checkpoint; the lattice code's range is the
    union of the base's and the new data's (None when the base has none, as a model trained before
    the range existed: a small fine-tuning set alone would narrow the diffusion sampler's clip). A
    config without ``elements`` takes the base model's vocabulary. Everything else (sizes, property
    moments) stays the new data's.
    """
    base = load_checkpoint(resolve_init(init_from))
    base_stats = base.get("dataset_stats")
    if isinstance(base_stats, Mapping):
        frame = DatasetStats.from_dict(dict(base_stats))
        stats = dataclasses.replace(stats, **{name: getattr(frame, name) for name in LATTICE_FRAME})
        low, high = _union(frame, stats)
        stats = dataclasses.replace(stats, lattice_code_min=low, lattice_code_max=high)
    base_model: Any = (base.get("config") or {}).get("model") or {}
    elements = base_model.get("elements") if isinstance(base_model, Mapping) else None
    if elements and dataclasses.is_dataclass(model_config) and not getattr(model_config, "elements", True):
        model_config = dataclasses.replace(model_config, elements=tuple(int(z) for z in elements))  # type: ignore[type-var]
    return stats, model_config


def _union(base: DatasetStats, new: DatasetStats) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The lattice code's range over both datasets (None, None when either lacks it)."""
    if None in (base.lattice_code_min, base.lattice_code_max, new.lattice_code_min, new.lattice_code_max):
        return None, None
    low = tuple(min(a, b) for a, b in zip(base.lattice_code_min or (), new.lattice_code_min or (), strict=True))
    high = tuple(max(a, b) for a, b in zip(base.lattice_code_max or (), new.lattice_code_max or (), strict=True))
    return low, high
