"""Fingerprint arrays for the evaluation metrics, computed by a caller-supplied featurizer and cached on disk.

``crystalforge.evaluation`` never imports the featurizer classes (they live in
``crystalforge.representations``); any object with a ``name`` and a ``featurize(crystals)``
method returning a ``[B, D]`` float64 array (NaN rows for failures) will do (``FeaturizerLike``).

The cache file is addressed by content: ``<featurizer name>-<sha256>.npy`` over the featurizer's
identity (class, ``name`` and public settings such as a scaler, but not ``workers``) and
``crystals_digest(crystals)`` (atomic numbers, fractional coordinates and lattice rounded to 1e-6),
so two names for the same structures (``mp_20`` and ``mp_20_reduced`` test) share one file. Files are written with
``crystalforge.io.atomic.atomic_write``, so concurrent writers never leave a torn file behind.

With ``chunk_size``, a long featurization is resumable: each chunk of crystals is saved as it is
done under ``<stem>.parts/`` and reused by the next call, and the folder is removed once the whole
array is written, so a killed run loses at most one chunk.

With ``time_limit_s``, each crystal is featurized on its own under that limit
(``execution.time_limit.map_with_time_limit``; matminer's CrystalNN can spend minutes on an extremely
skewed cell): a crystal over it gets a NaN row and its reason in ``aborted``, and nothing holding
such a row is cached, so the next run tries it again. The rows of a ``FeaturizerLike`` must not
depend on each other (true of every fingerprint here).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.execution import make_executor
from crystalforge.execution.time_limit import StepAbortedError, map_with_time_limit
from crystalforge.interrupt import check_interrupted
from crystalforge.io.atomic import atomic_write

__all__ = ["FeaturizerLike", "cached_features", "crystals_digest", "featurizer_token"]

logger = logging.getLogger(__name__)

ROUND_DECIMALS = 6
"""Fractional coordinates and lattice entries are rounded to this many decimals before hashing."""

_IGNORED_STATE = frozenset({"workers", "failures"})


@runtime_checkable
class FeaturizerLike(Protocol):
    """What the metrics need of a featurizer: a name and ``featurize`` → ``[B, D]`` float64 (NaN rows on failure)."""

    name: str

    def featurize(self, crystals: Sequence[Crystal]) -> np.ndarray:
        """Features ``[B, D]``; a NaN row for each crystal that could not be featurized."""
        ...


def crystals_digest(crystals: Sequence[Crystal]) -> str:
    """sha256 (hex) of the crystals' atomic numbers, frac coords and lattices rounded to 1e-6, in order."""
    h = hashlib.sha256()
    h.update(f"crystals:{len(crystals)}".encode())
    for crystal in crystals:
        z = np.ascontiguousarray(crystal.atomic_numbers, dtype="<i8")
        frac = np.round(np.asarray(crystal.frac_coords, dtype=np.float64), ROUND_DECIMALS) + 0.0  # -0.0 → 0.0
        lattice = np.round(np.asarray(crystal.lattice, dtype=np.float64), ROUND_DECIMALS) + 0.0
        h.update(len(z).to_bytes(8, "little"))
        h.update(z.tobytes())
        h.update(np.ascontiguousarray(frac, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(lattice, dtype="<f8").tobytes())
    return h.hexdigest()


def _canonical(value: Any) -> str:
    """A stable text form of a setting (arrays by content; unknown objects by type, never by address)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return f"ndarray({data.dtype.str},{data.shape},{hashlib.sha256(data.tobytes()).hexdigest()})"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_canonical(k)}:{_canonical(v)}" for k, v in sorted(value.items(), key=str)) + "}"
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def featurizer_token(featurizer: FeaturizerLike) -> str:
    """Identity of a featurizer for cache keys: class, ``name`` and public settings.

    Public attributes are taken as settings, except ``workers`` and ``failures`` (which never change
    the numbers); keep run-time state in ``_private`` attributes. A featurizer may instead define a
    string attribute ``cache_token`` naming its settings.
    """
    cls = type(featurizer)
    token = getattr(featurizer, "cache_token", None)
    if isinstance(token, str):
        return f"{cls.__module__}.{cls.__qualname__}|name={featurizer.name}|token={token}"
    state = {
        k: v
        for k, v in getattr(featurizer, "__dict__", {}).items()
        if not k.startswith("_") and k not in _IGNORED_STATE
    }
    return f"{cls.__module__}.{cls.__qualname__}|name={featurizer.name}|{_canonical(state)}"


def cached_features(
    featurizer: FeaturizerLike,
    crystals: Sequence[Crystal],
    *,
    cache_dir: Path | None,
    chunk_size: int | None = None,
    time_limit_s: float | None = None,
    aborted: dict[int, str] | None = None,
) -> np.ndarray:
    """``featurizer.featurize(crystals)`` as ``[B, D]`` float64, read from / written to ``cache_dir`` when given.

    Args:
        featurizer: Any object with ``name`` and ``featurize`` (see ``FeaturizerLike``).
        crystals: The structures, in order.
        cache_dir: Folder of ``.npy`` cache files (created if missing); None computes without caching.
        chunk_size: Featurize this many crystals at a time and keep each finished chunk on disk
            until the whole array is written, so an interrupted call resumes (needs ``cache_dir``).
        time_limit_s: Seconds one crystal's features may take (None: no limit, one ``featurize`` call).
        aborted: Filled with ``index → reason`` for each crystal stopped at the time limit.

    Returns:
        The features; NaN rows where featurization failed. A cached file whose shape does not fit
        is ignored and rewritten.

    """
    crystals = list(crystals)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    stopped: dict[int, str] = {} if aborted is None else aborted
    if cache_dir is None:
        return _compute(featurizer, crystals, time_limit_s, stopped)
    digest = hashlib.sha256("\n".join([featurizer_token(featurizer), crystals_digest(crystals)]).encode()).hexdigest()
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", featurizer.name).strip("_.")[:80]
    path = Path(cache_dir) / f"{label}-{digest[:24]}.npy"
    cached = _load(path, len(crystals))
    if cached is not None:
        logger.debug("feature cache hit: %s", path)
        return cached
    parts = path.with_suffix(".parts")
    if chunk_size is None or len(crystals) <= chunk_size:
        features = _compute(featurizer, crystals, time_limit_s, stopped)
    else:
        blocks = []
        for start in range(0, len(crystals), chunk_size):
            check_interrupted()
            chunk = crystals[start : start + chunk_size]
            part = parts / f"{start:08d}.npy"
            block = _load(part, len(chunk))
            if block is None:
                found: dict[int, str] = {}
                block = _compute(featurizer, chunk, time_limit_s, found)
                for i, why in found.items():
                    stopped.setdefault(start + i, why)
                check_interrupted()  # rows made under a swallowed Ctrl-C are not cached
                if not found:
                    with atomic_write(part, "wb") as handle:
                        np.save(handle, block, allow_pickle=False)
            blocks.append(block)
        features = np.concatenate(blocks, axis=0)
    check_interrupted()
    if stopped:  # a later run (another limit, a faster machine) tries the stopped crystals again
        return features
    with atomic_write(path, "wb") as handle:
        np.save(handle, features, allow_pickle=False)
    shutil.rmtree(parts, ignore_errors=True)
    return features


def _load(path: Path, rows: int) -> np.ndarray | None:
    """A cached ``[rows, D]`` array, or None when missing, unreadable or of another shape."""
    if not path.is_file():
        return None
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None
    if cached.ndim != 2 or cached.shape[0] != rows:
        logger.warning("ignoring feature cache %s: shape %s for %d crystals", path, cached.shape, rows)
        return None
    return np.asarray(cached, dtype=np.float64)


def _one_by_one(task: tuple[FeaturizerLike, list[Crystal], float]) -> list[np.ndarray | StepAbortedError]:
    """Rows of ``crystals``, each computed alone under the time limit (built library objects are inherited)."""
    featurizer, crystals, seconds = task
    getattr(featurizer, "impl", None)  # build a lazily built library object once, before the fork
    step = f"{featurizer.name} fingerprint"
    rows = map_with_time_limit(lambda c: featurizer.featurize([c])[0], crystals, seconds=seconds, step=step)
    return [r if isinstance(r, StepAbortedError) else np.asarray(r, dtype=np.float64) for r in rows]


def _limited(
    featurizer: FeaturizerLike, crystals: list[Crystal], seconds: float, aborted: dict[int, str]
) -> np.ndarray:
    """``[B, D]`` with NaN rows where the time limit stopped a crystal, over the featurizer's ``workers``."""
    workers = max(1, min(int(getattr(featurizer, "workers", 1)), len(crystals)))
    size = math.ceil(len(crystals) / workers)
    tasks = [(featurizer, crystals[s : s + size], seconds) for s in range(0, len(crystals), size)]
    getattr(featurizer, "impl", None)  # imports done here are inherited by forked workers, not repeated per chunk
    with make_executor(workers) as executor:
        rows = [r for chunk in executor.map(_one_by_one, tasks) for r in chunk]
    width = next((len(r) for r in rows if not isinstance(r, StepAbortedError)), None)
    if width is None:  # every crystal was stopped: the width of an empty call
        width = np.asarray(featurizer.featurize([])).shape[-1]
    out = np.full((len(crystals), width), np.nan)
    for i, row in enumerate(rows):
        if isinstance(row, StepAbortedError):
            aborted.setdefault(i, str(row))
        else:
            out[i] = row
    return out


def _compute(
    featurizer: FeaturizerLike, crystals: list[Crystal], seconds: float | None, aborted: dict[int, str]
) -> np.ndarray:
    if seconds is None or not crystals:
        features = np.asarray(featurizer.featurize(crystals), dtype=np.float64)
    else:
        features = _limited(featurizer, crystals, seconds, aborted)
    if features.ndim != 2 or features.shape[0] != len(crystals):
        raise ValueError(
            f"featurizer {featurizer.name!r} returned shape {features.shape} for {len(crystals)} crystals, "
            "expected (B, D)"
        )
    return features
