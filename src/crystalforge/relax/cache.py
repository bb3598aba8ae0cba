"""A per-structure result cache that makes long relaxation runs resumable.

Each finished structure is appended to a JSON-lines file as one complete line
(``{"key": ..., "result": {...}}``), flushed and fsync'd, so a run that is killed loses at most
the structure it was working on. On load a truncated last line (the trace of a crash) is
ignored and cut off before anything new is appended.

The key is the SHA-256 of the relaxer's ``name``, its ``settings`` (minus the execution-only
settings in ``EXECUTION_SETTINGS``) and the structure: atomic numbers, fractional coordinates
and lattice rounded to 1e-8. ``material_id`` and properties are not part of the key, so the same
structure under two names is computed once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.interrupt import check_interrupted
from crystalforge.relax.interfaces import Relaxer, RelaxResult, failure_kind

__all__ = ["EXECUTION_SETTINGS", "CachedRelaxer", "ResultCache", "structure_key"]

log = logging.getLogger(__name__)

EXECUTION_SETTINGS = frozenset({"timeout_s", "workers", "torch_threads", "batch_size"})
"""Settings that change how a run executes but not its results; left out of cache keys."""

UNCACHED_FAILURES = frozenset({"timeout", "over limit"})
"""Failure kinds that depend on the machine or its settings, not the structure: retried on the next run."""

_DECIMALS = 8


def _canonical_settings(relaxer_name: str, settings: Mapping[str, Any]) -> str:
    physics = {k: v for k, v in settings.items() if k not in EXECUTION_SETTINGS}
    return json.dumps({"relaxer": relaxer_name, "settings": physics}, sort_keys=True, default=str)


def structure_key(crystal: Crystal, prefix: str = "") -> str:
    """SHA-256 (hex) of ``prefix`` and the structure (Z, frac and lattice rounded to 1e-8)."""
    frac = np.round(crystal.frac_coords, _DECIMALS) % 1.0 + 0.0  # 1.0 → 0.0 and -0.0 → 0.0
    lattice = np.round(crystal.lattice, _DECIMALS) + 0.0
    h = hashlib.sha256()
    h.update(prefix.encode())
    h.update(np.ascontiguousarray(crystal.atomic_numbers, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(frac, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(lattice, dtype="<f8").tobytes())
    return h.hexdigest()


class ResultCache:
    """An append-only JSON-lines store of ``RelaxResult``s by key."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._results: dict[str, RelaxResult] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn write
        if end < len(data):
            log.warning("%s: ignoring a truncated last line (%d bytes)", self.path, len(data) - end)
            with self.path.open("r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        lines = data[:end].decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._results[str(record["key"])] = RelaxResult.from_dict(record["result"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s line %d: unreadable record skipped (%s)", self.path, number, exc)

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: str) -> RelaxResult | None:
        """The stored result, or None."""
        return self._results.get(key)

    def add(self, items: Sequence[tuple[str, RelaxResult]]) -> None:
        """Append results (one line each), then flush and fsync."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"key": key, "result": result.to_dict()}, separators=(",", ":")) + "\n" for key, result in items
        )
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        for key, result in items:
            self._results[key] = result


class CachedRelaxer:
    """Wraps any ``Relaxer`` so that finished structures are stored and never recomputed.

    Structures are relaxed in chunks of ``chunk_size`` and each chunk is appended to the cache
    file as soon as it is done, so an interrupted run resumes where it stopped. Duplicate
    structures within one call are computed once. Results of failure kinds in
    ``UNCACHED_FAILURES`` (timeouts, resource limits) are returned but not stored.

    Args:
        relaxer: the wrapped relaxer.
        path: the JSON-lines cache file (created on first write).
        chunk_size: structures handed to the relaxer per call (large enough to keep its
            workers or batches busy).
        progress: called as ``progress(done, total)`` after each chunk (cached ones count
            as done from the start).

    """

    def __init__(
        self,
        relaxer: Relaxer,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.relaxer = relaxer
        self.cache = ResultCache(path)
        self.chunk_size = chunk_size
        self.progress = progress
        self._prefix = _canonical_settings(relaxer.name, relaxer.settings)

    @property
    def name(self) -> str:
        """The wrapped relaxer's name."""
        return self.relaxer.name

    @property
    def settings(self) -> Mapping[str, Any]:
        """The wrapped relaxer's settings."""
        return self.relaxer.settings

    def key(self, crystal: Crystal) -> str:
        """The cache key of ``crystal`` under this relaxer."""
        return structure_key(crystal, self._prefix)

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        """Cached results where present, the relaxer's for the rest; one per input, in order."""
        items = list(crystals)
        keys = [self.key(c) for c in items]
        todo: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key not in self.cache and key not in todo:
                todo[key] = index
        pending = list(todo.items())
        fresh: dict[str, RelaxResult] = {}
        total = len(set(keys))
        done = total - len(pending)
        if self.progress is not None:
            self.progress(done, total)
        for start in range(0, len(pending), self.chunk_size):
            check_interrupted()
            chunk = pending[start : start + self.chunk_size]
            results = self.relaxer.relax([items[index] for _, index in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"{self.relaxer.name} returned {len(results)} results for {len(chunk)} structures")
            keep = []
            for (key, _), result in zip(chunk, results, strict=True):
                fresh[key] = result
                if failure_kind(result.failure) not in UNCACHED_FAILURES and not _setup_failure(result.failure):
                    keep.append((key, result))
            check_interrupted()  # a failure a library made of a Ctrl-C is not cached
            self.cache.add(keep)
            done += len(chunk)
            if self.progress is not None:
                self.progress(done, total)
        out = []
        for crystal, key in zip(items, keys, strict=True):
            found = fresh.get(key) or self.cache.get(key)
            assert found is not None
            out.append(_with_identity(found, crystal))
        return out

    def close(self) -> None:
        """Close the wrapped relaxer (its worker processes), when it can be closed."""
        close = getattr(self.relaxer, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> CachedRelaxer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_identity(result: RelaxResult, crystal: Crystal) -> RelaxResult:
    """The result labelled with ``crystal``'s material_id and properties (a cached result may carry another's)."""
    ident = crystal.material_id
    relaxed = result.crystal
    if relaxed is not None and (relaxed.material_id != ident or dict(relaxed.properties) != dict(crystal.properties)):
        relaxed = relaxed.replace(material_id=ident, properties=crystal.properties)
    if relaxed is result.crystal and result.material_id == ident:
        return result
    return dataclasses.replace(result, crystal=relaxed, material_id=ident)


def _setup_failure(failure: str | None) -> bool:
    """A failure of the machine set-up (the calculator could not be built), not of the structure."""
    return failure is not None and "cannot build the calculator" in failure
