"""crystalforge: generative inverse design of crystalline materials, in pure PyTorch.

Public names are re-exported lazily so ``import crystalforge`` stays fast and side-effect free.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Crystal": "crystalforge.core.crystal",
    "CrystalBatch": "crystalforge.core.batch",
    "CrystalError": "crystalforge.core.errors",
    "DatasetStats": "crystalforge.core.dataset_stats",
    "load_dataset": "crystalforge.api",
    "read_structures": "crystalforge.api",
    "write_structures": "crystalforge.api",
    "dataset_stats": "crystalforge.api",
    "evaluate": "crystalforge.api",
    "MetricReport": "crystalforge.evaluation.report",
}

__all__ = [
    "Crystal",
    "CrystalBatch",
    "CrystalError",
    "DatasetStats",
    "MetricReport",
    "__version__",
    "dataset_stats",
    "evaluate",
    "load_dataset",
    "read_structures",
    "write_structures",
]

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.api import dataset_stats, evaluate, load_dataset, read_structures, write_structures
    from crystalforge.core.batch import CrystalBatch
    from crystalforge.core.crystal import Crystal
    from crystalforge.core.dataset_stats import DatasetStats
    from crystalforge.core.errors import CrystalError
    from crystalforge.evaluation.report import MetricReport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystalforge' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
