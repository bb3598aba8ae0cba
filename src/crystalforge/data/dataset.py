"""``CrystalDataset``: a sized, indexable set of ``Crystal``s over flat arrays, built once and cached.

Building parses every CIF (on an executor's workers), applies the recorded preprocessing, skips
and reports bad rows (as ``Candidate`` failures), and stores the result as a ``CrystalArrays``
archive in the cache directory.
The cache key is the source's content hash plus the preprocessing options and the cache format,
so editing the CSV or changing an option rebuilds it; reloading 10k structures is one ``np.load``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.data.paths import cache_dir
from crystalforge.data.preprocess import PreprocessOptions, preprocess_structure
from crystalforge.execution import ExecutorConfig, make_executor
from crystalforge.interrupt import check_interrupted
from crystalforge.io.archive import CrystalArrays

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the parsing or array layout changes, to invalidate every cache."""
CHUNK_ROWS = 256


@dataclass(frozen=True)
class CrystalDataset(Sequence[Crystal]):
    """Crystals of one dataset split. ``dataset[i]`` builds a ``Crystal`` from the flat arrays.

    ``failures`` holds the records that gave no crystal, as ``Candidate``s without one (printed as
    ``"source: problem"``).
    """

    arrays: CrystalArrays
    name: str
    split: str
    failures: tuple[Candidate, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Crystal:  # type: ignore[override]
        return self.arrays[index]

    def __iter__(self) -> Iterator[Crystal]:
        return iter(self.arrays)

    @property
    def property_names(self) -> list[str]:
        """Names of the per-crystal properties."""
        return sorted(self.arrays.properties)

    @property
    def material_ids(self) -> list[str]:
        """Identifier of each crystal, in order."""
        return [str(i) for i in self.arrays.material_ids]

    def subset(self, indices: Sequence[int] | np.ndarray, *, split: str | None = None) -> CrystalDataset:
        """A dataset of the crystals at ``indices`` (in that order)."""
        sub = self.arrays.select(indices)
        return CrystalDataset(sub, self.name, split or self.split, self.failures, dict(self.metadata))

    def __repr__(self) -> str:
        return (
            f"CrystalDataset({self.name!r}, split={self.split!r}, {len(self)} crystals, "
            f"properties={self.property_names})"
        )


# ---- building from a CDVAE-format CSV -------------------------------------------------------------
def _parse_rows(
    args: tuple[list[tuple[int, str, str, dict[str, float]]], dict[str, Any], str],
) -> list[tuple[int, Candidate]]:
    """Worker: parse CIF rows into ``(row, candidate)``."""
    import warnings

    from pymatgen.core import Structure

    rows, opt_dict, label = args
    options = PreprocessOptions(**opt_dict)
    out: list[tuple[int, Candidate]] = []
    for row, ident, cif, props in rows:
        source = f"{label} row {row} ({ident})"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(cif, fmt="cif")
            structure = preprocess_structure(structure, options)
            crystal = Crystal.from_pymatgen(structure, material_id=ident).replace(properties=props)
            out.append((row, Candidate(source, crystal=crystal, material_id=ident)))
        except CrystalError as exc:
            out.append((row, Candidate.failure(source, exc.problem, material_id=ident)))
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on malformed CIFs
            check_interrupted()  # a Ctrl-C a library turned into an error is not a malformed CIF
            problem = f"malformed CIF: {type(exc).__name__}: {exc}"
            out.append((row, Candidate.failure(source, problem, material_id=ident)))
    return out


def _numeric_columns(frame: Any, skip: set[str]) -> dict[str, np.ndarray]:
    import pandas as pd

    out = {}
    for column in frame.columns:
        if column in skip or str(column).startswith("Unnamed") or str(column) == "":
            continue
        series = frame[column]
        if series.dtype == bool or pd.api.types.is_numeric_dtype(series):
            out[str(column)] = series.to_numpy(dtype=np.float64)
    return out


def parse_csv_rows(
    path: Path,
    *,
    id_column: str = "material_id",
    cif_column: str = "cif",
    options: PreprocessOptions | None = None,
    rows: np.ndarray | None = None,
    workers: int | ExecutorConfig = 1,
    progress: Callable[[int], object] | None = None,
    label: str | None = None,
) -> list[tuple[int, Candidate]]:
    """Parse a CDVAE-format CSV row by row, keeping file order: ``(row, candidate)``.

    Numeric columns become properties. ``rows`` selects row indices (after reading). Every row
    gives one ``Candidate`` whose source names the file, the row and the material id
    (``"mp_20/test.csv row 7 (mp-1234)"``); a bad row's candidate has no crystal and says why.
    ``workers`` (a count or an ``ExecutorConfig``) parse chunks of rows in parallel;
    ``progress`` is called with the number of rows done.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise CrystalError(f"cannot read CSV: {exc}", source=str(path)) from None
    if cif_column not in frame.columns:
        raise CrystalError(f"no {cif_column!r} column (columns: {list(frame.columns)})", source=str(path))
    ids = (
        frame[id_column].astype(str).to_numpy()
        if id_column in frame.columns
        else np.asarray([str(i) for i in range(len(frame))])
    )
    props = _numeric_columns(frame, {id_column, cif_column})
    cifs = frame[cif_column].to_numpy()
    selected = np.arange(len(frame)) if rows is None else np.asarray(rows)
    work = []
    for r in selected.tolist():
        row_props = {k: float(v[r]) for k, v in props.items() if not np.isnan(v[r])}
        work.append((r, str(ids[r]), cifs[r] if isinstance(cifs[r], str) else "", row_props))
    chunks = [work[i : i + CHUNK_ROWS] for i in range(0, len(work), CHUNK_ROWS)]
    label = label or path.name
    opt = (options or PreprocessOptions()).to_dict()
    tasks = [(c, opt, label) for c in chunks]
    config = ExecutorConfig.of(workers)
    if len(chunks) <= 1:
        config = ExecutorConfig(workers=1)
    # a few chunks per worker at a time, so that progress is reported while the workers run
    step = len(tasks) if progress is None else max(1, 2 * config.workers)
    results: list[tuple[int, Candidate]] = []
    executor = make_executor(config)
    try:
        for start in range(0, len(tasks), step):
            for part in executor.map(_parse_rows, tasks[start : start + step]):
                results.extend(part)
                if progress:
                    progress(len(part))
    finally:
        executor.close()
    return results


def parse_csv(path: Path, **kwargs: Any) -> tuple[list[Crystal], list[Candidate]]:
    """Parse a CDVAE-format CSV into crystals (numeric columns become properties).

    Takes the arguments of ``parse_csv_rows``; returns the good crystals in file order and the bad
    rows as ``Candidate`` failures naming the file, the row and the material id.
    """
    results = parse_csv_rows(path, **kwargs)
    crystals = [c.crystal for _, c in results if c.crystal is not None]
    failures = [c for _, c in results if c.crystal is None]
    return crystals, failures


# ---- cache ----------------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """Stable short hash of JSON-compatible ``parts`` (with the cache format)."""
    blob = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached_build(
    name: str,
    split: str,
    key_parts: dict[str, Any],
    build: Callable[[], tuple[list[Crystal], list[Candidate]]],
    *,
    use_cache: bool = True,
    metadata: dict[str, Any] | None = None,
) -> CrystalDataset:
    """Load ``name/split`` from the cache if its key matches, else ``build`` it and store it."""
    key = cache_key(key_parts)
    path = cache_dir() / name / f"{split}-{key}.npz"
    meta = {"name": name, "split": split, "cache_key": key, **(metadata or {})}
    if use_cache and path.is_file():
        try:
            arrays = CrystalArrays.load(path)
            cached = tuple(_failure_from_dict(f) for f in arrays.metadata.get("failures", []))
            return CrystalDataset(arrays, name, split, cached, {**arrays.metadata, "cache_file": str(path)})
        except ValueError as exc:
            log.warning("ignoring unreadable cache %s (%s); rebuilding", path, exc)
    crystals, failures = build()
    if not crystals:
        detail = f"; first problem: {failures[0]}" if failures else ""
        raise CrystalError(f"no usable structures ({len(failures)} bad records){detail}", source=f"{name}/{split}")
    check_interrupted()  # nothing parsed under a swallowed Ctrl-C goes into the cache
    meta["failures"] = [_failure_to_dict(f) for f in failures]
    arrays = CrystalArrays.from_crystals(crystals, metadata=meta)
    if use_cache:
        try:
            arrays.save(path)
            _remove_stale(path)
        except OSError as exc:
            log.warning("could not write cache %s: %s", path, exc)
    for f in failures:
        log.warning("skipped %s", f)
    return CrystalDataset(arrays, name, split, tuple(failures), meta)


def _failure_to_dict(failure: Candidate) -> dict[str, str | None]:
    """The cache's record of a failure (the keys of the archive format 1)."""
    return {"source": failure.source, "problem": failure.error, "material_id": failure.material_id}


def _failure_from_dict(record: dict[str, Any]) -> Candidate:
    """Inverse of ``_failure_to_dict``."""
    return Candidate.failure(str(record["source"]), str(record["problem"]), material_id=record.get("material_id"))


def _remove_stale(current: Path) -> None:
    """Delete older caches of the same split (``<split>-<other key>.npz``)."""
    split = current.name.split("-", 1)[0]
    for other in current.parent.glob(f"{split}-*.npz"):
        if other != current:
            with contextlib.suppress(OSError):
                os.unlink(other)
