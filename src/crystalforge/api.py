"""The Python API behind the CLI: what notebooks, scripts and tests call.

``load_dataset`` resolves a benchmark name, a reduced protocol or a path; ``read_structures`` /
``write_structures`` handle every structure format, including the crystal text format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from crystalforge.core.crystal import Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.errors import CrystalError
from crystalforge.data.benchmark import load_benchmark
from crystalforge.data.dataset import CrystalDataset
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS, REDUCED
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.data.user import load_user_dataset
from crystalforge.io import files as _files

TEXT_SUFFIXES = (".txt", ".cftxt")
"""File names that hold crystals in the crystal text format (one block per crystal)."""


def load_dataset(
    name: str | Path,
    split: str = "train",
    root: str | Path | None = None,
    *,
    preprocess: PreprocessOptions | None = None,
    properties: str | Path | None = None,
    workers: int | None = None,
    cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> CrystalDataset:
    """A sized, indexable dataset of ``Crystal``.

    ``name``: ``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``, a reduced protocol such as
    ``mp_20_reduced``, or a path to a folder/file of structures or an ASE ``.db`` (then ``split``
    is ignored and ``properties`` may name a CSV property table). ``root`` overrides the data
    directory. Benchmarks are Niggli-reduced by default (``PreprocessOptions``); user data is
    kept as given unless ``preprocess`` says otherwise.
    """
    key = str(name)
    if key in BENCHMARKS or key in REDUCED:
        if properties is not None:
            raise ValueError("properties= applies to user datasets; benchmarks carry their own property columns")
        return load_benchmark(
            key, split, root=root, options=preprocess, workers=workers, use_cache=cache, progress=progress
        )
    path = Path(key).expanduser()
    if path.exists():
        return load_user_dataset(path, properties=properties, options=preprocess, use_cache=cache)
    known = ", ".join(sorted(BENCHMARKS) + sorted(REDUCED))
    raise KeyError(f"unknown dataset {key!r}: not one of {known}, and no such file or folder")


def dataset_stats(dataset: CrystalDataset | Iterable[Crystal]) -> DatasetStats:
    """Statistics (num-atoms histogram, density, lattice moments, element frequencies)."""
    if isinstance(dataset, CrystalDataset):
        return compute_dataset_stats(dataset.arrays)
    return compute_dataset_stats(dataset)


def _is_text(path: Path, fmt: str | None) -> bool:
    return fmt == "text" or (fmt is None and path.suffix.lower() in TEXT_SUFFIXES)


def iter_records(path: str | Path, *, fmt: str | None = None) -> Iterable[_files.Record]:
    """Records from any supported file or folder, the crystal text format included."""
    p = Path(path)
    if _is_text(p, fmt) and p.is_file():
        from crystalforge.representations.tokens import CrystalText

        text_codec = CrystalText()
        blocks = [b for b in p.read_text().split("\n\n") if b.strip()]
        if not blocks:
            yield _files.Record(str(p), error="file is empty")
        for i, block in enumerate(blocks):
            try:
                yield _files.Record(f"{p}:{i}", crystal=text_codec.decode(block))
            except CrystalError as exc:
                yield _files.Record(f"{p}:{i}", error=exc.problem)
        return
    yield from _files.iter_records(p, fmt=fmt)


def read_structures(path: str | Path, *, fmt: str | None = None, skip_bad: bool = False) -> list[Crystal]:
    """All crystals in a file or folder (CIF, POSCAR, extxyz, npz archive, crystal text).

    The first bad record raises ``CrystalError`` naming it, unless ``skip_bad`` (then bad records
    are logged and left out).
    """
    return _files.collect_crystals(iter_records(path, fmt=fmt), skip_bad=skip_bad)


def write_structures(
    crystals: Iterable[Crystal],
    path: str | Path,
    *,
    fmt: str | None = None,
    symmetrize: bool = False,
    symprec: float = _files.DEFAULT_SYMPREC,
) -> Path:
    """Write crystals to ``path`` atomically.

    Formats: ``cif`` (P1, or the symmetrised cell with ``symmetrize``), ``poscar``, ``extxyz``,
    ``npz`` or ``text``; by default from the file name.
    """
    p = Path(path)
    if _is_text(p, fmt):
        from crystalforge.io.atomic import atomic_write
        from crystalforge.representations.tokens import CrystalText

        items = list(crystals)
        if not items:
            raise ValueError(f"{p}: nothing to write (no crystals)")
        codec = CrystalText()
        with atomic_write(p, "w") as handle:
            handle.write("\n\n".join(codec.encode(c).rstrip("\n") for c in items) + "\n")
        return p
    return _files.write_structures(crystals, p, fmt=fmt, symmetrize=symmetrize, symprec=symprec)
