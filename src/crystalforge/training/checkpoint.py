"""Checkpoints as plain data: format version, config, dataset statistics, weights, metrics.

No pickled classes and no module paths: ``torch.load(weights_only=True)`` reads them, so modules
can move and a checkpoint from an untrusted source cannot run code. ``read_torch_file`` is the one
reader (model files here, Lightning's resume checkpoint in ``training.resume``): a file that is
empty, truncated, not a PyTorch archive, or whose pickle names anything but tensors and plain
containers (``os.system``, a class) is refused with a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from crystalforge.io.atomic import atomic_write
from crystalforge.io.torch_files import read_torch_file

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
    data = read_torch_file(p)
    if not isinstance(data, dict) or "format_version" not in data:
        raise ValueError(f"{p}: not a crystalforge checkpoint (no format_version)")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{p}: not a crystalforge checkpoint (format_version {version!r} is not a number)")
    if version > FORMAT_VERSION:
        raise ValueError(f"{p}: checkpoint format {version} is newer than this crystalforge reads ({FORMAT_VERSION})")
    weights = data.get("weights")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise ValueError(f"{p}: damaged crystalforge checkpoint (its weights are not a table of named tensors)")
    if not isinstance(data.get("config", {}), dict):
        raise ValueError(f"{p}: damaged crystalforge checkpoint (its config is not a mapping)")
    return data


def checkpoint_family(data: Mapping[str, Any]) -> str:
    """The model family a checkpoint records (format-1 files before families said ``kind: joint``)."""
    family = data.get("family", data.get("kind"))
    if not isinstance(family, str) or not family:
        raise ValueError("checkpoint records no model family")
    return family
