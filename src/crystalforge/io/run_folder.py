"""The generation run folder, defined once: what ``generate``/``csp`` write and everyone else reads.

Layout of ``<out>/``:

- ``run.json``: the run's settings (model, sampler, seed, chunk size); resuming with others fails.
- ``chunks/chunk_<k>.extxyz``: chunk ``k`` of the jobs, written atomically (empty file: every
  structure of the chunk failed).
- ``failures.csv``: ``name,reason`` for each generated structure that is not a crystal.
- ``samples.extxyz``: every written structure in job order; ``cif/`` (P1) and
  ``cif_symmetrized/`` one CIF per structure.

``RunFolder.candidates()`` reads a finished folder as the candidate table (structures, then one
failed candidate per ``failures.csv`` row), so evaluation counts failures as invalid samples.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crystalforge.core.candidate import Candidate
from crystalforge.io.atomic import atomic_write

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.extxyz"
FAILURES_FILE = "failures.csv"
CHUNK_DIR = "chunks"
CIF_DIR = "cif"
SYMMETRIZED_CIF_DIR = "cif_symmetrized"

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


@dataclass(frozen=True)
class RunFolder:
    """Paths and records of one generation run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def run_file(self) -> Path:
        """The settings record."""
        return self.root / RUN_FILE

    @property
    def samples_file(self) -> Path:
        """All written structures, in job order."""
        return self.root / SAMPLES_FILE

    @property
    def failures_file(self) -> Path:
        """``name,reason`` rows of structures that could not be written."""
        return self.root / FAILURES_FILE

    @property
    def chunk_dir(self) -> Path:
        """Where chunk files live."""
        return self.root / CHUNK_DIR

    def chunk_path(self, k: int) -> Path:
        """The file of chunk ``k``."""
        return self.chunk_dir / f"chunk_{k:05d}.extxyz"

    def has_chunks(self) -> bool:
        """True once any chunk has been written."""
        return any(self.chunk_dir.glob("chunk_*.extxyz"))

    def cif_path(self, name: str, *, symmetrized: bool = False) -> Path:
        """The CIF file of structure ``name`` (P1, or in the symmetrised folder)."""
        return self.root / (SYMMETRIZED_CIF_DIR if symmetrized else CIF_DIR) / f"{name}.cif"

    def is_generation_folder(self) -> bool:
        """True for a folder written by a generation run (it holds ``run.json``)."""
        return self.run_file.is_file()

    # ---- settings ----------------------------------------------------------------------------
    def record_settings(self, settings: Mapping[str, JSONValue], *, resuming: bool) -> None:
        """Write ``run.json``; when resuming (chunks exist), first check the earlier run used these settings."""
        record = json.loads(json.dumps(settings, default=str))  # as it reads back from disk
        if resuming and self.run_file.exists():
            try:
                before = json.loads(self.run_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{self.run_file}: unreadable run record ({exc}); use a new output folder") from None
            if before != record:
                diff = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
                shown = "; ".join(f"{k}: {before.get(k)!r} before, {record.get(k)!r} now" for k in diff)
                raise ValueError(
                    f"{self.root} holds a run with other settings ({shown}); "
                    "resume with the same settings or use a new --out"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_file) as fh:
            json.dump(record, fh, indent=1, sort_keys=True)

    def settings(self) -> dict[str, JSONValue]:
        """The recorded settings (``ValueError`` when there are none)."""
        try:
            data = json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.run_file}: no readable run record ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.run_file}: the run record is not a JSON object")
        return data

    # ---- failures ----------------------------------------------------------------------------
    def failures(self) -> list[Candidate]:
        """One failed candidate per ``failures.csv`` row (source ``failures.csv: <name>``)."""
        if not self.failures_file.exists():
            return []
        with self.failures_file.open(newline="") as handle:
            rows = [row for row in list(csv.reader(handle))[1:] if row]
        return [
            Candidate.failure(f"{FAILURES_FILE}: {row[0]}", f"generation failed: {row[1]}", material_id=row[0])
            for row in rows
        ]

    def failed_names(self) -> set[str]:
        """Job names listed in ``failures.csv``."""
        return {c.ident for c in self.failures()}

    def append_failures(self, failed: Sequence[tuple[str, str]]) -> None:
        """Add ``(name, reason)`` rows (the csv module quotes reasons with commas)."""
        if not failed:
            return
        new = not self.failures_file.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        with self.failures_file.open("a", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if new:
                writer.writerow(["name", "reason"])
            writer.writerows(failed)
