"""Shared helpers for the benchmark scripts: data directory and machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$CRYSTALFORGE_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("CRYSTALFORGE_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "mp_20").is_dir():
        raise SystemExit(f"benchmark data not found in {root}; set CRYSTALFORGE_DATA_DIR")
    return root


def machine() -> str:
    """One line describing this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
