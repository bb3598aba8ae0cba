"""Core types and periodic geometry. Imports nothing else from crystalforge."""

from __future__ import annotations

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError

__all__ = ["Crystal", "CrystalBatch", "CrystalError"]
