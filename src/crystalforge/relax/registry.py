"""Relaxers by name: ``RELAXERS``, ``get_relaxer`` and ``make_relaxer`` (what the API and CLI call).

A name's factory is looked up and built here; an unknown name is a ``KeyError`` listing the known
ones, and a relaxer whose MLIP is not installed raises ``MissingDependencyError`` when it is built,
before any structure is touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crystalforge.execution import ExecutorConfig
from crystalforge.relax.ase_relaxer import ASERelaxer
from crystalforge.relax.cache import CachedRelaxer
from crystalforge.relax.chgnet_mlip import CHGNetStaticRelaxer, chgnet_relaxer, chgnet_static_relaxer

__all__ = ["RELAXERS", "RegisteredRelaxer", "get_relaxer", "make_relaxer"]

RegisteredRelaxer = ASERelaxer | CHGNetStaticRelaxer
"""What the registered factories build: ``Relaxer``s that also ``close()`` their workers."""

CACHE_CHUNK = 16
"""Structures per cache write for parallel or batched relaxers (enough to keep workers busy)."""

RELAXERS: dict[str, Callable[..., RegisteredRelaxer]] = {
    "chgnet": chgnet_relaxer,
    "chgnet-static": chgnet_static_relaxer,
}
"""Relaxer name → factory taking keyword settings."""


def get_relaxer(name: str, **kwargs: Any) -> RegisteredRelaxer:
    """The relaxer registered as ``name``, built with ``kwargs`` (close it, or use it in ``with``).

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
        MissingDependencyError: when the relaxer's MLIP is not installed.

    """
    try:
        factory = RELAXERS[name]
    except KeyError:
        raise KeyError(f"unknown relaxer {name!r} (known: {', '.join(sorted(RELAXERS))})") from None
    return factory(**kwargs)


def make_relaxer(
    name: str,
    *,
    workers: int | ExecutorConfig = 1,
    cache_file: str | os.PathLike[str] | None = None,
) -> RegisteredRelaxer | CachedRelaxer:
    """The relaxer ``name`` with default settings, wrapped in a ``CachedRelaxer`` when ``cache_file`` is given.

    The result is a ``Relaxer`` that also has ``close()`` (and works in a ``with`` block) to stop
    its workers.

    Args:
        name: a key of ``RELAXERS`` (``"chgnet"``, ``"chgnet-static"``).
        workers: worker count or ``ExecutorConfig`` for the relaxer's parallel work.
        cache_file: JSON-lines result cache (created on first write) that makes the run resumable.

    Raises:
        KeyError: for an unknown name.
        MissingDependencyError: when the relaxer's MLIP is not installed (before any work).

    """
    relaxer = get_relaxer(name, workers=workers)
    if cache_file is None:
        return relaxer
    # a serial ASE relaxer gains nothing from larger calls: each structure is saved as it finishes
    serial = isinstance(relaxer, ASERelaxer) and not ExecutorConfig.of(workers).parallel
    return CachedRelaxer(relaxer, Path(cache_file), chunk_size=1 if serial else CACHE_CHUNK)
