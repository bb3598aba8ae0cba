"""``predict_properties``: a predictor's mean and calibrated std for every record of some structures.

The records come from ``data.samples.read_samples`` (a folder or file of structures, a CDVAE CSV,
a generation run folder, crystals in memory). Records without a structure stay in the table with
their error; nothing is dropped. The table is written as CSV (``.csv``) or JSON (``.json``),
atomically: ``id, source, <property>, <property>_std, ..., error``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crystalforge.core.crystal import Crystal
from crystalforge.data.samples import read_samples
from crystalforge.io.atomic import atomic_write
from crystalforge.predictors.batch_predict import predict_all
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.shipped import load_predictor

__all__ = ["predict_properties", "write_table"]

Row = dict[str, Any]


def predict_properties(
    structures: str | Path | Iterable[Crystal],
    *,
    predictor: str | Path | PredictorEnsemble,
    properties: Sequence[str] | None = None,
    out: str | Path | None = None,
    batch_size: int = 256,
) -> list[Row]:
    """One row per record: predicted ``<property>`` and ``<property>_std`` (blank with ``error`` if unreadable)."""
    model = predictor if isinstance(predictor, PredictorEnsemble) else load_predictor(predictor)
    names = tuple(properties) if properties else model.properties
    missing = [p for p in names if p not in model.properties]
    if missing:
        raise KeyError(f"this predictor does not give {missing} (it gives: {', '.join(model.properties)})")
    records = read_samples(structures)
    if not records:
        raise ValueError(f"{structures}: no structures found")
    readable = [r.crystal for r in records if r.crystal is not None]
    prediction = predict_all(model, readable, batch_size=batch_size) if readable else None
    rows: list[Row] = []
    k = 0
    for record in records:
        row: Row = {"id": record.material_id or record.source, "source": record.source}
        for name in names:
            row[name] = row[f"{name}_std"] = math.nan
        error = record.error or ""
        if record.crystal is not None and prediction is not None:
            for name in names:
                mean, std = prediction.column(name)
                row[name], row[f"{name}_std"] = float(mean[k]), float(std[k])
            error = prediction.failures.get(k, "")
            k += 1
        row["error"] = error
        rows.append(row)
    if out is not None:
        write_table(rows, Path(out))
    return rows


def write_table(rows: list[Row], path: Path) -> None:
    """Write rows as ``.csv`` or ``.json`` (by suffix), atomically; other suffixes are refused."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                           for r in rows], indent=1)  # fmt: skip
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in rows)  # fmt: skip
        text = buffer.getvalue()
    else:
        raise ValueError(f"{path}: write predictions to a .csv or .json file")
    with atomic_write(path, newline="") as handle:
        handle.write(text)
