"""Loading the CDVAE-format benchmarks and their reduced protocols through the cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from crystalforge.data.dataset import CrystalDataset, cached_build, file_digest, parse_csv
from crystalforge.data.paths import data_dir
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS, REDUCED


def default_workers() -> int:
    """Worker processes for parsing: all cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def load_benchmark(
    name: str,
    split: str = "train",
    *,
    root: str | Path | None = None,
    options: PreprocessOptions | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> CrystalDataset:
    """One split of a benchmark (``perov_5``, ``mp_20``, …) or a reduced protocol (``mp_20_reduced``)."""
    opts = options or PreprocessOptions()
    base_dir = data_dir(root)
    reduced = REDUCED.get(name)
    spec = BENCHMARKS.get(reduced.base if reduced else name)
    if spec is None:
        raise KeyError(
            f"unknown dataset {name!r} (known: {', '.join(sorted(BENCHMARKS) + sorted(REDUCED))}, or a path)"
        )
    source_split = reduced.source_split(split) if reduced else split
    path = spec.split_file(base_dir, source_split)
    digest = file_digest(path)
    n_workers = workers or default_workers()

    rows = None
    if reduced is not None:
        import pandas as pd

        ids = pd.read_csv(path, usecols=[spec.id_column])[spec.id_column].astype(str).to_numpy()
        rows = reduced.select(split, ids)

    def build() -> tuple[list, list]:
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

    key = {
        "kind": "benchmark",
        "source_sha256": digest,
        "options": opts.to_dict(),
        "protocol": reduced.describe() if reduced else "standard",
    }
    metadata = {
        "source": f"{spec.name}/{path.name}",
        "source_sha256": digest,
        "preprocess": opts.to_dict(),
        "protocol": reduced.describe() if reduced else "standard",
    }
    return cached_build(name, split, key, build, use_cache=use_cache, metadata=metadata)


def expected_rows(name: str, split: str, *, root: str | Path | None = None) -> int:
    """Rows a split will have, read cheaply from the CSV (no parsing), for progress bars."""
    import pandas as pd

    reduced = REDUCED.get(name)
    spec = BENCHMARKS[reduced.base if reduced else name]
    path = spec.split_file(data_dir(root), reduced.source_split(split) if reduced else split)
    ids = pd.read_csv(path, usecols=[spec.id_column])[spec.id_column].astype(str).to_numpy()
    return len(reduced.select(split, ids)) if reduced else len(ids)
