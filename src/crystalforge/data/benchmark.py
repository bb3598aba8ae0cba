"""Loading the CDVAE-format benchmarks and their reduced protocols through the cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.data.dataset import CrystalDataset, cached_build, file_digest, parse_csv
from crystalforge.data.paths import data_dir
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS, REDUCED, BenchmarkSpec, ReducedProtocol, known_datasets
from crystalforge.execution import ExecutorConfig


def default_workers() -> int:
    """Worker processes for parsing: all cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _resolve(
    name: str, split: str, root: str | Path | None
) -> tuple[BenchmarkSpec, ReducedProtocol | None, Path, np.ndarray | None]:
    """The spec, reduced protocol (if any), source CSV and selected row indices of ``name/split``."""
    reduced = REDUCED.get(name)
    spec = BENCHMARKS.get(reduced.base if reduced else name)
    if spec is None:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(known_datasets())}, or a path)")
    path = spec.split_file(data_dir(root), reduced.source_split(split) if reduced else split)
    if reduced is None:
        return spec, None, path, None
    import pandas as pd

    ids = pd.read_csv(path, usecols=[spec.id_column])[spec.id_column].astype(str).to_numpy()
    return spec, reduced, path, reduced.select(split, ids)


def load_benchmark(
    name: str,
    split: str = "train",
    *,
    root: str | Path | None = None,
    options: PreprocessOptions | None = None,
    workers: int | ExecutorConfig | None = None,
    use_cache: bool = True,
    progress: Callable[[int], object] | None = None,
) -> CrystalDataset:
    """One split of a benchmark (``perov_5``, ``mp_20``, …) or a reduced protocol (``mp_20_reduced``).

    ``workers`` (a count or an ``ExecutorConfig``; None: ``default_workers()``) parse the CSV
    when it is not cached yet.
    """
    opts = options or PreprocessOptions()
    spec, reduced, path, rows = _resolve(name, split, root)
    digest = file_digest(path)
    n_workers = workers or default_workers()

    def build() -> tuple[list[Crystal], list[Candidate]]:
        return parse_csv(
            path,
            id_column=spec.id_column,
            cif_column=spec.cif_column,
            options=opts,
            rows=rows,
            workers=n_workers,
            progress=progress,
            label=f"{spec.name}/{path.name}",
        )

    protocol = reduced.describe() if reduced else "standard"
    key = {"kind": "benchmark", "source_sha256": digest, "options": opts.to_dict(), "protocol": protocol}
    metadata = {
        "source": f"{spec.name}/{path.name}",
        "source_sha256": digest,
        "preprocess": opts.to_dict(),
        "protocol": protocol,
    }
    return cached_build(name, split, key, build, use_cache=use_cache, metadata=metadata)


def expected_rows(name: str, split: str, *, root: str | Path | None = None) -> int:
    """Rows a split will have, read cheaply from the CSV (no parsing), for progress bars."""
    import pandas as pd

    spec, _, path, rows = _resolve(name, split, root)
    return len(rows) if rows is not None else len(pd.read_csv(path, usecols=[spec.id_column]))
