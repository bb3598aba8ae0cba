"""Checkpoints as plain data: format version, config, dataset statistics, weights, metrics.

No pickled classes and no module paths: ``torch.load(weights_only=True)`` reads them, so modules
can move and a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from crystalforge.io.atomic import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    *,
    family: str,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    dataset_stats: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; weights are stored as float32 CPU tensors unless integer."""
    data = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": dict(config),
        "dataset_stats": None if dataset_stats is None else dict(dataset_stats),
        "weights": {
            k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()) for k, v in weights.items()
        },
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    target = Path(path)
    with atomic_write(target, "wb") as handle:
        torch.save(data, handle)
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        raise ValueError(f"{p}: not a crystalforge checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise ValueError(f"{p}: not a crystalforge checkpoint (no format_version)")
    if data["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{p}: checkpoint format {data['format_version']} is newer than this crystalforge reads ({FORMAT_VERSION})"
        )
    return data


def checkpoint_family(data: Mapping[str, Any]) -> str:
    """The model family a checkpoint records (format-1 files before families said ``kind: joint``)."""
    family = data.get("family", data.get("kind"))
    if not isinstance(family, str) or not family:
        raise ValueError("checkpoint records no model family")
    return family
