"""Where data and caches live.

Data directory, first match wins: the ``root`` argument; ``$CRYSTALFORGE_DATA_DIR``;
``~/.local/share/crystalforge/data`` (``$XDG_DATA_HOME`` respected). Cache directory:
``$CRYSTALFORGE_CACHE_DIR``, else ``~/.cache/crystalforge`` (``$XDG_CACHE_HOME`` respected).
Nothing is downloaded: ``docs/data.md`` says where to get the benchmark files.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CRYSTALFORGE_DATA_DIR"
CACHE_ENV = "CRYSTALFORGE_CACHE_DIR"


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The data directory (not required to exist)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "crystalforge" / "data"


def cache_dir() -> Path:
    """The preprocessing cache directory (created on first write, not here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crystalforge"
