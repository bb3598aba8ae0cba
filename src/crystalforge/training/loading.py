"""Loading a trained model of any family: from a ``model.pt`` or by shipped name.

The checkpoint's recorded family (older checkpoints: ``kind``, always ``"joint"``) chooses the
builder (``crystalforge.registry``), so a checkpoint of a family registered outside the package
loads the same way. A shipped model's card may set the default sampler (steps, anti-annealing).
A model that names other models in its config (e.g. ``matgan``'s ``csp_model``) exposes
``bind_model_loader(load)``; it gets this module's loader, ``name → (model, default sampler)``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from crystalforge.config import from_dict
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.generative.interfaces import GenerativeModel, SamplerConfig
from crystalforge.io.torch_files import one_line
from crystalforge.pretrained import list_models, model_path
from crystalforge.registry import build_model
from crystalforge.training.checkpoint import checkpoint_family, load_checkpoint
from crystalforge.training.config import TrainConfig


class LoadedModel(NamedTuple):
    """A model ready to sample, with what it was trained from and how it samples by default."""

    model: GenerativeModel
    config: TrainConfig
    stats: DatasetStats | None
    sampler: SamplerConfig


def load_checkpoint_model(
    checkpoint: str | Path | dict[str, Any],
) -> tuple[GenerativeModel, TrainConfig, DatasetStats | None]:
    """``(model, config, dataset_stats)`` from a ``model.pt`` written by ``train`` (any family)."""
    data = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    try:  # a damaged or tampered file names itself in one line (what the CLI prints)
        raw = dict(data["config"])
        raw.setdefault("family", checkpoint_family(data))
        config = from_dict(TrainConfig, raw)
        stats_data = data.get("dataset_stats")
        stats = None if stats_data is None else DatasetStats.from_dict(stats_data)
        model = build_model(config.model, stats, family=config.family)
        model.load_state_dict(data["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        problem = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ValueError(f"{source}: cannot build its model ({type(exc).__name__}: {one_line(problem)})") from exc
    model.eval()
    bind = getattr(model, "bind_model_loader", None)
    if callable(bind):  # a model that hands part of its work to other models it names (loaded on its first use)
        bind(_load_by_name)
    return model, config, stats


def _load_by_name(name: str) -> tuple[GenerativeModel, SamplerConfig]:
    """``(model, default sampler)`` of a shipped model name or ``model.pt`` path (``bind_model_loader``)."""
    loaded = load_model(name)
    return loaded.model, loaded.sampler


def load_model(model: str | Path) -> LoadedModel:
    """A shipped model by name (``crystalforge models``) or a ``model.pt`` path, with its default sampler.

    The default sampler is the model's own (``default_sampler()``), overridden by a shipped card's
    ``default_steps``/``default_anti_annealing``.
    """
    card = list_models().get(str(model), {})
    if card.get("kind") == "predictor":
        raise ValueError(f"{model!r} is a shipped property predictor, not a generative model (use it as --predictor)")
    path = model_path(str(model))
    if path is None:
        path = Path(model).expanduser()
        if not path.exists():
            generators = sorted(k for k, c in list_models().items() if c.get("kind") != "predictor")
            raise KeyError(
                f"unknown model {str(model)!r}: not a shipped model ({', '.join(generators) or 'none'}) nor a file"
            )
    net, config, stats = load_checkpoint_model(path)
    default = net.default_sampler()
    sampler = replace(
        default,
        steps=int(card.get("default_steps", default.steps)),
        anti_annealing=card.get("default_anti_annealing", default.anti_annealing),
    )
    return LoadedModel(net, config, stats, sampler)
