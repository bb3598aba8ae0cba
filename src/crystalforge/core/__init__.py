"""Core types and periodic geometry. Imports nothing else from crystalforge."""

from __future__ import annotations

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import z_to_symbol
from crystalforge.core.errors import CrystalError

__all__ = ["Candidate", "Crystal", "CrystalBatch", "CrystalError", "DatasetStats", "z_to_symbol"]
