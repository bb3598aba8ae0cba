"""Samples to evaluate, read from wherever they are, as the candidate table.

``read_samples`` takes a folder of structure files, one file (any structure format, or a
CDVAE-format CSV), a generation run folder, or crystals in memory. Unreadable records stay in the
table as candidates without a structure, so they are counted, never dropped. A generation folder
(``io.run_folder``) gives its samples file followed by one failed candidate per structure listed in
its ``failures.csv`` (generated but not a crystal).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.resolve import CSV_SUFFIXES
from crystalforge.execution import ExecutorConfig
from crystalforge.io.files import iter_records
from crystalforge.io.run_folder import RunFolder

_log = logging.getLogger(__name__)


def read_samples(
    samples: str | Path | Iterable[Crystal], *, fmt: str | None = None, workers: int | ExecutorConfig = 1
) -> list[Candidate]:
    """The samples as candidates, in order (see the module docstring)."""
    if not isinstance(samples, (str, Path)):
        return [Candidate(c.material_id or f"<crystal {i}>", crystal=c) for i, c in enumerate(samples)]
    path = Path(samples).expanduser()
    folder = RunFolder(path)
    if path.is_dir() and folder.is_generation_folder():
        made = folder.samples_file  # absent when every structure failed
        return (_read_file(made, fmt, workers) if made.is_file() else []) + folder.failures()
    parent = RunFolder(path.parent)
    uncounted = parent.failures() if path.is_file() and parent.is_generation_folder() else []
    if uncounted:
        _log.warning(
            "%s: %d structures of this generation run are listed in %s and not counted; evaluate the "
            "folder %s to count them as invalid",
            path,
            len(uncounted),
            parent.failures_file.name,
            path.parent,
        )
    return _read_file(path, fmt, workers)


def _read_file(path: Path, fmt: str | None, workers: int | ExecutorConfig) -> list[Candidate]:
    """The records of one file or folder of structure files, unreadable ones included."""
    if path.is_file() and (fmt == "csv" or path.name.lower().endswith(CSV_SUFFIXES)):
        from crystalforge.data.dataset import parse_csv_rows

        rows = parse_csv_rows(path, options=PreprocessOptions.raw(), workers=workers)
        return [dataclasses.replace(c, source=f"{path.name} row {row}") for row, c in rows]
    return list(iter_records(path, fmt=fmt))
