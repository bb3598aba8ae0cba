"""Optional dependencies: one error type and one check, so a missing extra stops a command clearly.

A command that needs an optional package (CHGNet for relaxation, Lightning for training, matminer
for fingerprints, Ray for a cluster) calls ``require`` before doing any work. The error names the
package, what needed it and the pip extra that installs it; the CLI turns it into a non-zero exit,
never into a 0 % figure.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS: dict[str, str] = {
    "chgnet": "relax",
    "lightning": "train",
    "matminer": "descriptors",
    "smact": "evaluation",
    "ray": "ray",
    "pyxtal": "baselines",
}
"""Importable module → the ``crystalforge[...]`` extra that installs it."""


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message says which extra installs it."""

    def __init__(self, module: str, feature: str, extra: str | None = None) -> None:
        self.module = module
        self.feature = feature
        self.extra = extra or EXTRAS.get(module.split(".")[0])
        hint = f'pip install "crystalforge[{self.extra}]"' if self.extra else f"pip install {module}"
        super().__init__(f"{feature} needs the optional package {module!r}, which is not installed: {hint}")


def is_available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, feature: str, *, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming ``feature`` and the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module != exc.name and not module.startswith(exc.name + "."):
            raise  # the package is there but one of its own dependencies is broken: show that error
        raise MissingDependencyError(module, feature, extra) from None
