"""``train_predictor``: a property-predictor ensemble from a benchmark or a user's own structures.

Data: a benchmark / reduced-protocol name (its ``train`` and ``val`` splits), or a folder/file of
structures with a property table (``properties_table``), split into train and a seeded 10 %
validation holdout. The validation split picks each member's epoch and fits the calibration.
A noise-aware predictor (for gradient guidance) names the generator whose noising it learns
(``noise_from``: a shipped model name or a ``model.pt``).

Writes ``<out>/predictor.pt`` (atomically) and ``<out>/metrics.json`` (validation error and
calibration per property); ``<out>/states/`` holds per-epoch states, so rerunning the same command
resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.threads import torch_threads
from crystalforge.data.resolve import is_benchmark, load_dataset
from crystalforge.io.atomic import atomic_write
from crystalforge.predictors.ensemble import calibration_report
from crystalforge.predictors.gnn import PropertyGNNConfig
from crystalforge.predictors.training import Corrupt, PredictorTrainConfig, fit_ensemble, targets_of

__all__ = ["train_baseline_predictors", "train_predictor", "write_json_atomic"]

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """``path`` replaced in one rename by ``data`` as indented JSON."""
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2)


def _previous_runs(metrics: Path) -> list[dict[str, Any]]:
    """The invocations recorded by earlier runs of the same folder (a resumed run adds its own time)."""
    if not metrics.is_file():
        return []
    try:
        before = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if "runs" in before:
        return list(before["runs"])
    return [{"wall_s": before["wall_s"]}] if "wall_s" in before else []


def _split_user(crystals: list[Crystal], seed: int) -> tuple[list[Crystal], list[Crystal]]:
    if len(crystals) < 10:
        raise ValueError(f"need at least 10 structures with the property to train a predictor, got {len(crystals)}")
    order = np.random.default_rng(seed).permutation(len(crystals))
    n_val = max(1, round(VAL_FRACTION * len(crystals)))
    return [crystals[i] for i in order[n_val:]], [crystals[i] for i in order[:n_val]]


def _with_any(crystals: Sequence[Crystal], properties: Sequence[str]) -> list[Crystal]:
    """Crystals that carry at least one of ``properties`` (the others cannot teach anything)."""
    return [c for c in crystals if any(p in c.properties for p in properties)]


def _corrupt_from(noise_from: str | Path) -> tuple[Corrupt, str]:
    from crystalforge.training.loading import load_model

    net, _, _, _ = load_model(noise_from)
    noise = getattr(net, "noise", None)
    if noise is None:
        raise ValueError(f"{noise_from}: this generator has no noising process (noise-aware training needs one)")
    dtype = next(iter(net.parameters())).dtype

    def corrupt(clean: CrystalBatch, t: Tensor, generator: torch.Generator) -> CrystalBatch:
        noisy: CrystalBatch = noise(clean.to(dtype=dtype), t.to(dtype), generator=generator)
        return noisy.to(dtype=torch.float32)

    return corrupt, str(noise_from)


def train_predictor(
    data: str | Path,
    *,
    properties: Sequence[str],
    out: str | Path,
    properties_table: str | Path | None = None,
    root: str | Path | None = None,
    config: PropertyGNNConfig | None = None,
    settings: PredictorTrainConfig | None = None,
    noise_from: str | Path | None = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
    threads: int | None = None,
    baseline: bool = False,
    split: str = "train",
    seed: int = 0,
) -> Path:
    """Train, calibrate and write ``<out>/predictor.pt``; returns its path (see the module docstring).

    ``threads`` sets torch's CPU threads for the run (restored afterwards). ``baseline=True`` fits
    gradient-boosting baselines on ``split`` instead (``train_baseline_predictors``) and returns ``out``.
    """
    if baseline:
        table, workers = properties_table, threads or 1
        train_baseline_predictors(data, properties=properties, out=out, split=split, properties_table=table, root=root,
                                  seed=seed, threads=workers)  # fmt: skip
        return Path(out)
    with torch_threads(threads):
        return _train(data, properties, out, properties_table, root, config, settings, noise_from, on_epoch)


def _train(
    data: str | Path,
    properties: Sequence[str],
    out: str | Path,
    properties_table: str | Path | None,
    root: str | Path | None,
    config: PropertyGNNConfig | None,
    settings: PredictorTrainConfig | None,
    noise_from: str | Path | None,
    on_epoch: Callable[[int, int, float, float], None] | None,
) -> Path:
    if not properties:
        raise ValueError("name at least one property to predict")
    settings = settings or PredictorTrainConfig()
    base = config or PropertyGNNConfig()
    time_dim = base.time_dim or (32 if noise_from is not None else 0)
    config = PropertyGNNConfig(**{**asdict(base), "properties": tuple(properties), "time_dim": time_dim})
    key = str(data)
    if is_benchmark(key):
        if properties_table is not None:
            raise ValueError("--properties applies to your own structures; benchmarks carry their property columns")
        train, val = list(load_dataset(key, "train", root)), list(load_dataset(key, "val", root))
        source = f"{key} train ({len(train)}), val ({len(val)})"
    else:
        train, val = _split_user(_with_any(load_dataset(key, properties=properties_table), properties), settings.seed)
        source = f"{key} with {properties_table}: train {len(train)}, seeded holdout {len(val)}"
    train, val = _with_any(train, properties), _with_any(val, properties)
    corrupt, noise_name = (None, None) if noise_from is None else _corrupt_from(noise_from)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ensemble = fit_ensemble(
        config, train, val, settings, corrupt=corrupt, work_dir=folder / "states", on_epoch=on_epoch
    )
    wall = time.perf_counter() - started
    runs = [*_previous_runs(folder / "metrics.json"), {"wall_s": round(wall, 1), "threads": torch.get_num_threads()}]
    total = round(sum(float(r["wall_s"]) for r in runs), 1)
    ensemble.record.update(
        data=source, noise_from=noise_name, wall_s=total, runs=runs,
        parameters=sum(p.numel() for p in ensemble.members[0].parameters()),
    )  # fmt: skip
    path = ensemble.save(folder / "predictor.pt")
    metrics: dict[str, Any] = {"data": source, "wall_s": total, "runs": runs, "validation": {}}
    if corrupt is None:
        from crystalforge.predictors.training import predict_crystals

        mean, std = predict_crystals(ensemble, val)
        y = targets_of(val, config.properties, source="val")
        metrics["validation"] = {
            name: calibration_report(mean[:, k], std[:, k], y[:, k]) for k, name in enumerate(config.properties)
        }
    write_json_atomic(metrics, folder / "metrics.json")
    log.info("predictor written to %s (%.0f s)", path, wall)
    return path


def train_baseline_predictors(
    data: str | Path,
    *,
    properties: Sequence[str],
    out: str | Path,
    split: str = "train",
    properties_table: str | Path | None = None,
    root: str | Path | None = None,
    seed: int = 0,
    threads: int | None = 1,
) -> list[Path]:
    """Gradient-boosting baselines, one ``<out>/<property>.gbm`` per property, on one split (e.g. a judge).

    The baseline holds out its own calibration rows; ``<out>/baseline.json`` records the data.
    """
    from crystalforge.predictors.baseline import BaselineConfig, GradientBoostingPredictor, featurize

    if not properties:
        raise ValueError("name at least one property to predict")
    key = str(data)
    crystals = list(
        load_dataset(key, split, root) if is_benchmark(key) else load_dataset(key, properties=properties_table)
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    features, names = featurize(crystals)
    written, record = [], {"data": f"{key} ({split if is_benchmark(key) else 'all'}): {len(crystals)}", "seed": seed}
    for prop in properties:
        y = targets_of(crystals, [prop], source=key)[:, 0]
        keep = np.isfinite(y)
        model = GradientBoostingPredictor(BaselineConfig(seed=seed), workers=1, threads=threads)
        model.fit_features(features[keep], y[keep], names=names)
        written.append(model.save(folder / f"{prop}.gbm"))
        record[prop] = int(keep.sum())
    write_json_atomic(record, folder / "baseline.json")
    return written
