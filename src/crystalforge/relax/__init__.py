"""Relaxation of crystals with machine-learned interatomic potentials (MLIPs).

- ``interfaces``: the ``Relaxer`` protocol, ``RelaxResult`` (the relax stage's result) and
  ``relax_candidates`` (the only part evaluation uses).
- ``ase_relaxer``: ``ASERelaxer`` over any ASE calculator.
- ``chgnet_mlip``: CHGNet's calculator factory, ``chgnet_relaxer`` and the static-energy relaxer.
- ``registry``: ``RELAXERS``, ``get_relaxer`` and ``make_relaxer`` (registry lookup + cache).
- ``cache``: ``CachedRelaxer``, a resumable per-structure result cache.

Importing this package imports nothing heavy: every name below is loaded from its module on first
access, and MLIPs only when a calculator is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.relax.ase_relaxer import ASERelaxer
    from crystalforge.relax.cache import CachedRelaxer, ResultCache, structure_key
    from crystalforge.relax.chgnet_mlip import (
        CHGNetStaticRelaxer,
        chgnet_relaxer,
        chgnet_static_energies,
        chgnet_static_relaxer,
    )
    from crystalforge.relax.interfaces import (
        FAILURE_KINDS,
        RELAX_STAGE,
        Relaxer,
        RelaxResult,
        failure_kind,
        relax_candidates,
        relaxation_rmsd,
    )
    from crystalforge.relax.registry import RELAXERS, get_relaxer, make_relaxer

_EXPORTS: dict[str, str] = {
    "FAILURE_KINDS": "interfaces",
    "RELAX_STAGE": "interfaces",
    "RelaxResult": "interfaces",
    "Relaxer": "interfaces",
    "failure_kind": "interfaces",
    "relax_candidates": "interfaces",
    "relaxation_rmsd": "interfaces",
    "ASERelaxer": "ase_relaxer",
    "CHGNetStaticRelaxer": "chgnet_mlip",
    "chgnet_relaxer": "chgnet_mlip",
    "chgnet_static_energies": "chgnet_mlip",
    "chgnet_static_relaxer": "chgnet_mlip",
    "RELAXERS": "registry",
    "get_relaxer": "registry",
    "make_relaxer": "registry",
    "CachedRelaxer": "cache",
    "ResultCache": "cache",
    "structure_key": "cache",
}
"""Public name → the submodule defining it."""

__all__ = [
    "FAILURE_KINDS",
    "RELAXERS",
    "RELAX_STAGE",
    "ASERelaxer",
    "CHGNetStaticRelaxer",
    "CachedRelaxer",
    "RelaxResult",
    "Relaxer",
    "ResultCache",
    "chgnet_relaxer",
    "chgnet_static_energies",
    "chgnet_static_relaxer",
    "failure_kind",
    "get_relaxer",
    "make_relaxer",
    "relax_candidates",
    "relaxation_rmsd",
    "structure_key",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
