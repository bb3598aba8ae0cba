"""Name resolution: a benchmark name, a reduced protocol, a path or crystals in memory → crystals.

``load_dataset`` gives a ``CrystalDataset``; ``resolve_reference`` and ``resolve_train`` give the
reference and training crystals an evaluation compares against, with the name its report prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from crystalforge.core.crystal import Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.errors import CrystalError
from crystalforge.data.benchmark import load_benchmark
from crystalforge.data.dataset import CrystalDataset
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS, REDUCED, known_datasets
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.data.user import load_user_dataset
from crystalforge.execution import ExecutorConfig

__all__ = ["CSV_SUFFIXES", "dataset_stats", "is_benchmark", "load_dataset", "resolve_reference", "resolve_train"]

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz")
"""File names read as CDVAE-format CSVs (a ``cif`` column, one structure per row)."""

Workers = int | ExecutorConfig | None
"""Parsing workers: a count, an ``ExecutorConfig``, or None for the default."""


def is_benchmark(name: str) -> bool:
    """True for a benchmark (``mp_20``) or reduced-protocol (``mp_20_reduced``) name."""
    return name in BENCHMARKS or name in REDUCED


def load_dataset(
    name: str | Path,
    split: str = "train",
    root: str | Path | None = None,
    *,
    preprocess: PreprocessOptions | None = None,
    properties: str | Path | None = None,
    workers: Workers = None,
    cache: bool = True,
    progress: Callable[[int], object] | None = None,
) -> CrystalDataset:
    """A sized, indexable dataset of ``Crystal``.

    ``name``: ``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``, a reduced protocol such as
    ``mp_20_reduced``, or a path to a folder/file of structures or an ASE ``.db`` (then ``split``
    is ignored and ``properties`` may name a CSV property table). ``root`` overrides the data
    directory. Benchmarks are Niggli-reduced by default (``PreprocessOptions``); user data is
    kept as given unless ``preprocess`` says otherwise.

    Raises:
        KeyError: for a name that is neither a dataset nor an existing path.
        ValueError: for ``properties`` with a benchmark.

    """
    key = str(name)
    if is_benchmark(key):
        if properties is not None:
            raise ValueError("properties= applies to user datasets; benchmarks carry their own property columns")
        return load_benchmark(
            key, split, root=root, options=preprocess, workers=workers, use_cache=cache, progress=progress
        )
    path = Path(key).expanduser()
    if path.exists():
        return load_user_dataset(path, properties=properties, options=preprocess, use_cache=cache)
    raise KeyError(f"unknown dataset {key!r}: not one of {', '.join(known_datasets())}, and no such file or folder")


def dataset_stats(dataset: CrystalDataset | Iterable[Crystal]) -> DatasetStats:
    """Statistics (num-atoms histogram, density, lattice moments, element frequencies)."""
    if isinstance(dataset, CrystalDataset):
        return compute_dataset_stats(dataset.arrays)
    return compute_dataset_stats(dataset)


def resolve_reference(
    reference: str | Path | Sequence[Crystal], split: str, root: str | Path | None, workers: Workers
) -> tuple[list[Crystal], str]:
    """The reference crystals and a name for the report's protocol block.

    ``reference`` is a benchmark name (its ``split`` is read), a CDVAE-format CSV, a structure
    file or folder (unreadable records are logged and skipped), or crystals in memory.

    Raises:
        KeyError: for a name that is neither a dataset nor an existing path.
        CrystalError: when the file holds no readable structure.

    """
    if not isinstance(reference, (str, Path)):
        return list(reference), "<in memory>"
    key = str(reference)
    if is_benchmark(key):
        return list(load_benchmark(key, split, root=root, workers=workers)), f"{key}/{split}"
    path = Path(key).expanduser()
    if not path.exists():
        raise KeyError(f"unknown reference {key!r}: not one of {', '.join(known_datasets())}, and no such file")
    if path.name.lower().endswith(CSV_SUFFIXES):
        from crystalforge.data.dataset import parse_csv

        crystals, failures = parse_csv(path, options=PreprocessOptions.raw(), workers=workers or 1)
        for failure in failures:
            log.warning("reference: skipped %s", failure)
    else:
        from crystalforge.io.files import read_structures

        crystals = read_structures(path, skip_bad=True)
    if not crystals:
        raise CrystalError("the reference holds no readable structure", source=str(path))
    return crystals, path.name


def resolve_train(
    train: str | Path | Sequence[Crystal] | bool | None,
    reference: str | Path | Sequence[Crystal] | None,
    root: str | Path | None,
    workers: Workers,
) -> tuple[list[Crystal] | None, str]:
    """The training set for novelty and its name, or None and the reason there is none.

    ``train`` False skips novelty; a name, path or crystals is resolved like a reference (its
    ``train`` split); None or True takes the reference benchmark's complete train split when
    it is present.
    """
    if train is False:
        return None, "not requested"
    if train is not None and train is not True:
        return resolve_reference(train, "train", root, workers)
    if reference is None:
        return None, "no reference (pass train= for novelty)"
    key = str(reference) if isinstance(reference, (str, Path)) else ""
    if not is_benchmark(key):
        return None, "no training set given (pass train=)"
    try:
        return list(load_benchmark(key, "train", root=root, workers=workers)), f"{key}/train"
    except FileNotFoundError:
        return None, f"{key}/train is not present here (novelty needs the complete training split)"
