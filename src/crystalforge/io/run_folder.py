"""The generation run folder, defined once: what ``generate``/``csp`` write and everyone else reads.

Layout of ``<out>/``:

- ``run.json``: the run's settings (model, sampler, seed, chunk size); resuming with others fails.
- ``chunks/chunk_<k>.extxyz``: chunk ``k`` of the jobs, written atomically (empty file: every
  structure of the chunk failed); then ``chunks/chunk_<k>.json``, its ``ChunkRecord`` (which jobs it
  was made for, what it holds, what failed). The record is written last: a chunk without one (a
  kill between the two writes) is sampled again, with the same seed, so nothing is lost or doubled.
- ``failures.csv``: ``name,reason`` for each generated structure that is not a crystal, gathered
  from the chunk records at the end (absent when nothing failed).
- ``cif/`` (P1) and ``cif_symmetrized/``: one CIF per structure; then ``samples.extxyz``, every
  written structure in job order, last: once it is there, so is everything else.

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
from crystalforge.io.atomic import atomic_write, remove_temporaries

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.extxyz"
FAILURES_FILE = "failures.csv"
CHUNK_DIR = "chunks"
CIF_DIR = "cif"
SYMMETRIZED_CIF_DIR = "cif_symmetrized"

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


@dataclass(frozen=True)
class ChunkRecord:
    """What one chunk file holds: the digest of the jobs it was made for, the names written, the failures.

    The runner reuses a chunk only when its record's ``jobs`` digest is that of the chunk's jobs now,
    whatever the structures hold (a family may choose its own atom counts), and the file holds
    ``written``.
    """

    jobs: str
    written: tuple[str, ...]
    failures: tuple[tuple[str, str], ...] = ()


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

    def chunk_record_path(self, k: int) -> Path:
        """The record of chunk ``k`` (written after its file)."""
        return self.chunk_dir / f"chunk_{k:05d}.json"

    def has_chunks(self) -> bool:
        """True once any chunk has been written."""
        return any(self.chunk_dir.glob("chunk_*.extxyz"))

    def cif_path(self, name: str, *, symmetrized: bool = False) -> Path:
        """The CIF file of structure ``name`` (P1, or in the symmetrised folder)."""
        return self.root / (SYMMETRIZED_CIF_DIR if symmetrized else CIF_DIR) / f"{name}.cif"

    def is_generation_folder(self) -> bool:
        """True for a folder written by a generation run (it holds ``run.json``)."""
        return self.run_file.is_file()

    def remove_temporaries(self) -> int:
        """Clear what writers killed mid-write left behind (before resuming); return how many files."""
        folders = (self.root, self.chunk_dir, self.root / CIF_DIR, self.root / SYMMETRIZED_CIF_DIR)
        return sum(remove_temporaries(f) for f in folders if f.is_dir())

    # ---- chunk records -----------------------------------------------------------------------
    def write_chunk_record(self, k: int, record: ChunkRecord) -> None:
        """Write chunk ``k``'s record (atomically; after the chunk file: the record marks it finished)."""
        data = {"jobs": record.jobs, "written": list(record.written), "failures": [list(f) for f in record.failures]}
        with atomic_write(self.chunk_record_path(k)) as fh:
            json.dump(data, fh, indent=1)

    def chunk_record(self, k: int) -> ChunkRecord | None:
        """Chunk ``k``'s record (None when there is none, or it cannot be read: the chunk is sampled again)."""
        path = self.chunk_record_path(k)
        try:
            data = json.loads(path.read_text())
            return ChunkRecord(
                str(data["jobs"]),
                tuple(str(n) for n in data["written"]),
                tuple((str(name), str(reason)) for name, reason in data["failures"]),
            )
        except (OSError, ValueError, KeyError, TypeError):  # missing, or not a record: not finished
            return None

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
                added = _added_keys(before, record)
                if added and _without(record, added) == before:  # only keys this version added
                    raise ValueError(
                        f"{self.root} was made by an earlier crystalforge (its run record has no "
                        f"{', '.join(added)}): its chunks cannot be mixed with this version's; use a new --out"
                    )
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
        """One failed candidate per ``failures.csv`` row (source ``failures.csv: <name>``).

        A damaged file gives error candidates instead: one naming the file when it cannot be
        decoded, one naming the line for a row without a reason; the other rows are kept.
        """
        if not self.failures_file.exists():
            return []
        try:
            with self.failures_file.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))[1:]
        except (UnicodeDecodeError, csv.Error) as exc:
            return [Candidate(str(self.failures_file), error=f"unreadable ({type(exc).__name__}: {exc})")]
        out = []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 2:
                out.append(
                    Candidate(f"{self.failures_file}:{line}", error="row without a reason (expected name,reason)")
                )
                continue
            out.append(
                Candidate.failure(f"{FAILURES_FILE}: {row[0]}", f"generation failed: {row[1]}", material_id=row[0])
            )
        return out

    def write_failures(self, failed: Sequence[tuple[str, str]]) -> None:
        """Write ``failures.csv`` with these ``(name, reason)`` rows, atomically (none: no file).

        The csv module quotes reasons with commas.
        """
        if not failed:
            self.failures_file.unlink(missing_ok=True)
            return
        with atomic_write(self.failures_file, newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["name", "reason"])
            writer.writerows(failed)


def _added_keys(before: object, now: object, prefix: str = "") -> list[str]:
    """Dotted names of the keys ``now`` has and ``before`` lacks (nested dicts included)."""
    if not isinstance(before, dict) or not isinstance(now, dict):
        return []
    out = [f"{prefix}{k}" for k in now if k not in before]
    for k in now:
        if k in before:
            out += _added_keys(before[k], now[k], f"{prefix}{k}.")
    return out


def _without(record: object, dotted: list[str]) -> object:
    """``record`` with the dotted keys removed (a copy)."""
    if not isinstance(record, dict):
        return record
    nested: dict[str, list[str]] = {}
    for name in dotted:
        head, _, rest = name.partition(".")
        nested.setdefault(head, []).append(rest)
    return {k: _without(v, nested.get(k, [])) for k, v in record.items() if "" not in nested.get(k, [])}
