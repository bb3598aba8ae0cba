"""``CandidateStore``: a design run's candidates and every stage's result, in an ASE database.

The store is an ordinary ASE SQLite database (``ase.db.connect``), so ``ase db RUN/candidates.db``
lists it, filters it (``ase db RUN/candidates.db relax=done 'hull_e_above_hull<0.1'``) and serves it
(``ase db ... -w``). One row per candidate:

- the structure as the row's ``Atoms`` (a candidate without a structure is an empty ``Atoms`` with
  its ``error`` kept), and, once a stage replaced it (a relaxation), the first structure in
  ``data["initial"]``;
- header columns: ``cid`` (the key, ``r{round:03d}-{index:06d}``, stable across resumes),
  ``round``, ``source``, ``material_id``, ``error``;
- per stage ``S``: the column ``S`` holding the status (``done``: passed, go on; ``rejected``: ran
  and stops here, its values say why; ``failed``: the stage raised, ``S_error`` says what) and one
  column ``S_<name>`` per scalar value (bool, int, float, text); values a column cannot hold
  (arrays, lists, None, text that reads as a number) go to ``data[S][name]``.

Crash safety: every ``add`` (one batch, with the stage results its candidates already carry) and
every ``record`` is one committed SQLite transaction, so a ``kill -9`` loses at most the item in
flight; reopening the file gives back everything recorded before, and ``pending`` then lists only
the work still to do. A write SQLite refuses (a full disk, a read-only folder) is a ``StoreError``
naming the file and the record, and leaves the store as it was. One process writes (the pipeline's
main process; workers return results to it); any number may read, ``ase db`` included.

Everything goes through ``ase.db`` (no SQL of our own): its key-value columns are what ``ase db``
shows and queries, and its ``data`` blob holds the rest.
"""

from __future__ import annotations

import numbers
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import ase
import ase.db
import numpy as np
from ase.db.core import reserved_keys
from ase.db.row import AtomsRow

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.interrupt import check_interrupted

Status = Literal["done", "rejected", "failed"]
STATUSES: tuple[str, ...] = ("done", "rejected", "failed")
FORMAT = {"crystalforge": "candidates", "format_version": 1}
HEADER = ("cid", "round", "source", "material_id", "error")
_DATA_KEYS = ("crystal", "initial")  # data entries that are not stages
# "material" would own material_id's prefix; "atoms", "delete" and "data" clash with ``update``'s arguments
_RESERVED = {*HEADER, *_DATA_KEYS, "material", "atoms", "delete", "data", "id"}
_STAGE = re.compile(r"^[a-z][a-z0-9]*$")
_DAMAGE = (sqlite3.Error, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError)
"""What ase.db and json raise on a database whose bytes were damaged (a ``StoreError`` is let through)."""
_VALUE = re.compile(r"^[A-Za-z0-9_]+$")


class StoreError(ValueError):
    """A candidate store cannot be opened or written as asked; the message names the file and record."""


def candidate_key(round: int, index: int) -> str:
    """The stable key of generation round ``round``'s candidate number ``index``."""
    return f"r{round:03d}-{index:06d}"


class CandidateStore:
    """The run's candidate database (see the module docstring for the schema).

    Args:
        path: the ``.db`` file; created (with its parent folder) when missing, reopened otherwise.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix != ".db":
            raise StoreError(f"{self.path}: a candidate store is a .db file (so that `ase db` can read it)")
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # No ASE lock file: it is made with O_EXCL and waited for without a time limit, so a kill -9
        # inside a write left it behind and the resumed run waited forever. SQLite's own locks,
        # which the kernel drops with the process, already serialise writers.
        self._db = ase.db.connect(str(self.path), type="db", append=True, use_lock_file=False)
        try:
            meta = self._db.metadata  # reading first creates the tables (a write before would be forgotten)
            if fresh or (not meta and self._db.count() == 0):  # also: killed between the tables and this
                self._db.metadata = meta = dict(FORMAT)
        except sqlite3.OperationalError as exc:  # locked, read-only, full disk
            raise StoreError(f"{self.path}: cannot open or write the candidate store ({exc})") from None
        except _DAMAGE as exc:
            raise StoreError(f"{self.path}: not a crystalforge candidate store ({type(exc).__name__}: {exc})") from None
        if meta.get("crystalforge") != "candidates":
            raise StoreError(f"{self.path}: an ASE database, but not a crystalforge candidate store")
        if meta.get("format_version") != FORMAT["format_version"]:
            raise StoreError(f"{self.path}: unsupported store format version {meta.get('format_version')!r}")
        with self._reading("its records"):
            self._ids = {str(row.cid): int(row.id) for row in self._db.select(include_data=False)}

    def __len__(self) -> int:
        return len(self._ids)

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Damaged bytes inside the database (flipped, spliced) become a ``StoreError`` naming the file."""
        try:
            yield
        except StoreError:
            raise
        except _DAMAGE as exc:
            raise StoreError(
                f"{self.path}: damaged candidate store: cannot read {what} ({type(exc).__name__}: {exc})"
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __repr__(self) -> str:
        return f"CandidateStore({str(self.path)!r}, {len(self)} candidates)"

    @property
    def keys(self) -> list[str]:
        """Every candidate's key, in the order they were added."""
        return list(self._ids)

    # ---- writing ------------------------------------------------------------------------------
    def add(self, candidates: Sequence[Candidate], *, round: int, start: int = 0) -> list[str]:
        """Store candidates ``start, start+1, ...`` of generation round ``round``; return their keys.

        Idempotent: a key already stored is left as it is (the first write wins), so a resumed run
        may add its regenerated batch again. A candidate's ``stages`` (each ``{"status": ..., **values}``,
        as ``candidates()`` gives them back) are stored with it. The batch is one transaction (all rows
        or none).
        """
        check_interrupted()  # results made under a swallowed Ctrl-C are not stored
        keys = [candidate_key(round, start + i) for i in range(len(candidates))]
        new: dict[str, int] = {}
        try:
            with self._db:
                for key, candidate in zip(keys, candidates, strict=True):
                    if key in self._ids or key in new:
                        continue
                    columns, data = _header(key, round, candidate)
                    for stage, result in candidate.stages.items():
                        stage_columns, blobs = _stage_result(stage, result, f"{self.path}: record {key!r}")
                        columns.update(stage_columns)
                        data[stage] = blobs
                    atoms = candidate.crystal.to_ase() if candidate.crystal is not None else ase.Atoms()
                    atoms.info.clear()
                    new[key] = int(self._db.write(atoms, key_value_pairs=columns, data=data))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write records {keys[0]}..{keys[-1]} ({exc})") from None
        self._ids.update(new)
        return keys

    def record(
        self,
        stage: str,
        key: str,
        values: Mapping[str, object] | None = None,
        *,
        status: Status = "done",
        crystal: Crystal | None = None,
    ) -> None:
        """Record stage ``stage``'s result for candidate ``key`` (replacing an earlier one), committed at once.

        ``values`` are the stage's results (``{"e_above_hull": 0.03}``); ``crystal``, when given,
        becomes the candidate's structure (a relaxed one), the first structure being kept as
        ``data["initial"]``.
        """
        check_interrupted()  # a failure a library made of a Ctrl-C is not stored as the stage's result
        where = f"{self.path}: record {key!r}, stage {stage!r}"
        _check_stage(stage, where)
        if "status" in (values or {}):
            raise StoreError(f"{where}: 'status' is the stage's status, not a value name")
        row_id = self._row_id(key)
        columns, blobs = _stage_result(stage, {**(values or {}), "status": status}, where)
        try:
            row = self._db.get(id=row_id)
            stale = [k for k in row.key_value_pairs if k == stage or k.startswith(f"{stage}_")]
            data: dict[str, Any] = {stage: blobs}
            atoms = None
            if crystal is not None:
                atoms = crystal.to_ase()
                atoms.info.clear()
                if "initial" not in row.data and row.natoms:
                    data["initial"] = _arrays(row.toatoms())
            self._db.update(row_id, atoms=atoms, delete_keys=stale, data=data, **columns)
        except sqlite3.OperationalError as exc:  # locked, read-only, full disk
            raise StoreError(f"{where}: cannot write ({exc})") from None
        except _DAMAGE as exc:
            raise StoreError(f"{where}: damaged candidate store ({type(exc).__name__}: {exc})") from None

    def fail(self, stage: str, key: str, error: str) -> None:
        """Record that stage ``stage`` raised ``error`` on candidate ``key``."""
        self.record(stage, key, {"error": error}, status="failed")

    # ---- reading ------------------------------------------------------------------------------
    def pending(self, stage: str, *, after: Sequence[str] = (), upto_round: int | None = None) -> list[str]:
        """Keys of candidates with a structure, no ``stage`` result yet, and ``done`` in every stage of ``after``.

        ``upto_round``: only candidates of generation rounds ``<= upto_round`` (None: every round).
        """
        for name in (stage, *after):
            _check_stage(name, f"{self.path}: pending({stage!r})")
        with self._reading("its records"):
            return [
                str(row.cid)
                for row in self._db.select(include_data=False)
                if row.natoms
                and (upto_round is None or int(row.round) <= upto_round)
                and stage not in row.key_value_pairs
                and all(row.key_value_pairs.get(s) == "done" for s in after)
            ]

    def status(self, stage: str, key: str) -> str | None:
        """Candidate ``key``'s status for ``stage`` (None when not recorded yet)."""
        _check_stage(stage, f"{self.path}: status({stage!r})")
        with self._reading(f"record {key!r}"):
            value = self._db.get(id=self._row_id(key)).key_value_pairs.get(stage)
        return None if value is None else str(value)

    def candidates(self, keys: Sequence[str] | None = None) -> list[Candidate]:
        """The candidates ``keys`` (default: all), each with ``stages[S] = {"status": ..., **values}``."""
        wanted = self.keys if keys is None else list(keys)
        for key in wanted:
            self._row_id(key)
        picked = set(wanted)
        with self._reading("its records"):
            found = {str(row.cid): _candidate(row) for row in self._db.select() if row.cid in picked}
        return [found[key] for key in wanted]

    def initial_crystals(self, keys: Sequence[str]) -> list[Crystal]:
        """The as-generated structures of ``keys`` (``data["initial"]`` once a stage replaced one)."""
        wanted = {self._row_id(key) for key in keys}
        found: dict[str, Crystal] = {}
        with self._reading("its records"):
            for row in self._db.select():
                if row.id in wanted and row.natoms:
                    first = row.data.get("initial")
                    found[str(row.cid)] = (
                        Crystal(first["atomic_numbers"], first["frac_coords"], first["lattice"]) if first is not None
                        else Crystal(row.numbers, row.toatoms().get_scaled_positions(wrap=False), row.cell)
                    )  # fmt: skip
        return [found[key] for key in keys]

    def table(self) -> list[dict[str, object]]:
        """One flat dict per candidate (the ``ase db`` columns plus ``data``'s values): the funnel's source."""
        with self._reading("its records"):
            return [_flat(row) for row in self._db.select()]

    def funnel(self, stages: Sequence[str]) -> dict[str, int]:
        """For each stage in order: how many candidates are ``done`` in it and in every stage before it."""
        for name in stages:
            _check_stage(name, f"{self.path}: funnel")
        counts = dict.fromkeys(stages, 0)
        with self._reading("its records"):
            for row in self._db.select(include_data=False):
                for name in stages:
                    if row.key_value_pairs.get(name) != "done":
                        break
                    counts[name] += 1
        return counts

    def _row_id(self, key: str) -> int:
        try:
            return self._ids[key]
        except KeyError:
            raise StoreError(f"{self.path}: no candidate {key!r}") from None


# ---- the row layout ------------------------------------------------------------------------------
def _check_stage(stage: str, where: str) -> None:
    if not isinstance(stage, str) or not _STAGE.match(stage) or stage in _RESERVED or stage in reserved_keys:
        raise StoreError(
            f"{where}: bad stage name {stage!r}: use lowercase letters and digits, starting with a letter "
            "(it names a column and prefixes its values, as in relax_energy_per_atom), "
            f"and none of {sorted(_RESERVED)} or ASE's reserved keys"
        )


def _is_column(value: object) -> bool:
    """Whether an ASE key-value column can hold ``value`` (numbers, bools, text that does not read as one)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return bool(-(2**63) <= int(value) < 2**63)  # SQLite's integers
    if isinstance(value, (bool, np.bool_, numbers.Real)):
        return True
    if isinstance(value, str):
        if value in ("True", "False", ""):
            return False
        try:
            float(value)
        except ValueError:
            return True
        return False
    return False


def _plain(value: object) -> object:
    """NumPy scalars as Python ones (ASE's columns are typed by Python type)."""
    return value.item() if isinstance(value, np.generic) else value


def _stage_result(stage: str, result: object, where: str) -> tuple[dict[str, object], dict[str, object]]:
    """A stage result ``{"status": ..., **values}`` as (columns: the status and ``S_<name>``, ``data[S]``)."""
    _check_stage(stage, where)
    status = result.get("status") if isinstance(result, Mapping) else None
    if not isinstance(result, Mapping) or status not in STATUSES:
        raise StoreError(f"{where}: status must be one of {STATUSES}, got {status!r} (stage {stage!r})")
    columns, blobs = _split(stage, {k: v for k, v in result.items() if k != "status"}, where)
    return {stage: status, **columns}, blobs


def _split(stage: str, values: Mapping[str, object], where: str) -> tuple[dict[str, object], dict[str, object]]:
    """A stage's values as (columns ``S_<name>``, ``data[S]`` entries)."""
    columns: dict[str, object] = {}
    blobs: dict[str, object] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not _VALUE.match(name):
            raise StoreError(f"{where}: bad value name {name!r}: use letters, digits and underscores")
        if _is_column(value):
            columns[f"{stage}_{name}"] = _plain(value)
        else:
            blobs[name] = value
    return columns, blobs


def _header(key: str, round: int, candidate: Candidate) -> tuple[dict[str, object], dict[str, object]]:
    """A new row's columns and data: the key, round and the candidate's record."""
    fields = {"source": candidate.source, "material_id": candidate.material_id, "error": candidate.error}
    columns: dict[str, object] = {"cid": key, "round": int(round)}
    kept: dict[str, object] = {}
    for name, value in fields.items():
        if value is None:
            continue
        (columns if _is_column(value) else kept)[name] = value
    crystal = candidate.crystal
    if crystal is not None:
        kept.update(crystal_id=crystal.material_id, properties=dict(crystal.properties))
    return columns, {"crystal": kept} if kept else {}


def _arrays(atoms: ase.Atoms) -> dict[str, np.ndarray]:
    """A structure as plain arrays (for ``data["initial"]``)."""
    return {
        "atomic_numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "frac_coords": atoms.get_scaled_positions(wrap=False),
        "lattice": np.asarray(atoms.cell.array, dtype=np.float64),
    }


def _stage_names(row: AtomsRow) -> Iterator[str]:
    """The stages recorded on a row: status columns (no underscore, not a header column)."""
    for name, value in row.key_value_pairs.items():
        if "_" not in name and name not in HEADER and value in STATUSES:
            yield name


def _flat(row: AtomsRow) -> dict[str, object]:
    """A row as one flat dict: header, formula, natoms, every stage's status and values."""
    out: dict[str, object] = {name: None for name in ("source", "material_id", "error")}
    out.update(formula=row.formula, natoms=int(row.natoms))
    out.update(row.key_value_pairs)
    data: Mapping[str, Any] = row.data
    out.update({k: v for k, v in data.get("crystal", {}).items() if k in HEADER})
    for stage, blobs in data.items():
        if stage not in _DATA_KEYS and isinstance(blobs, Mapping):
            out.update({f"{stage}_{name}": value for name, value in blobs.items()})
    return out


def _candidate(row: AtomsRow) -> Candidate:
    """A row as a ``Candidate`` whose ``stages`` hold each stage's status and values."""
    flat = _flat(row)
    kept: Mapping[str, Any] = row.data.get("crystal", {})
    stages = {}
    for stage in _stage_names(row):
        prefix = f"{stage}_"
        values = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        stages[stage] = {"status": flat[stage], **values}
    source = str(flat["source"])
    material_id = None if flat["material_id"] is None else str(flat["material_id"])
    if not row.natoms:
        return Candidate(source, error=str(flat["error"] or "no structure"), material_id=material_id, stages=stages)
    atoms = row.toatoms()
    properties = {str(k): float(v) for k, v in kept.get("properties", {}).items()}
    crystal = Crystal(
        atoms.numbers,
        atoms.get_scaled_positions(wrap=False),
        atoms.cell.array,
        properties=properties,
        material_id=kept.get("crystal_id"),
    )
    return Candidate(source, crystal=crystal, material_id=material_id, stages=stages)
