"""The ``Relaxer`` protocol and its per-structure ``RelaxResult``.

A relaxer turns crystals into relaxed crystals with an energy. Implementations never raise for
a bad structure: every input gets one ``RelaxResult`` in order, and a structure that could not
be relaxed carries a ``failure`` reason (``"<kind>: <details>"``, kinds in ``FAILURE_KINDS``)
instead of an exception. Evaluation code depends on this module only, never on an MLIP.

``relax_candidates`` runs a relaxer over ``Candidate``s and attaches each ``RelaxResult`` as the
candidate's ``"relax"`` stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.limits import StructureLimits
from crystalforge.core.periodic import frac_to_cart, pbc_diff

__all__ = [
    "FAILURE_KINDS",
    "RELAX_STAGE",
    "RelaxResult",
    "Relaxer",
    "failure_kind",
    "limit_failure",
    "relax_candidates",
    "relaxation_rmsd",
]

RELAX_STAGE = "relax"
"""The stage name under which a ``RelaxResult`` is attached to a ``Candidate``."""

FAILURE_KINDS = ("calculator error", "non-finite", "explosion", "timeout", "invalid input", "over limit")
"""Categories of ``RelaxResult.failure``; the reason string starts with one of them and a colon.

- ``calculator error``: the calculator raised (message included).
- ``non-finite``: NaN or infinite energy, forces or stress.
- ``explosion``: the cell volume changed by more than the allowed factor, two atoms came closer
  than the allowed distance, or the energy per atom fell below the physical floor.
- ``timeout``: the per-structure wall-time budget ran out (checked between optimiser steps).
- ``invalid input``: the structure could not be handed to the calculator at all.
- ``over limit``: the structure is over a resource limit (``core.limits``) and was refused
  before any work (raise the limit, e.g. ``CRYSTALFORGE_MAX_ATOMS``, to relax it).

A relaxation that stops at ``max_steps`` without meeting ``fmax`` is *not* a failure: it keeps
its final structure and energy with ``converged=False`` (see ``docs/metrics.md``).
"""


def failure_kind(failure: str | None) -> str | None:
    """The category (one of ``FAILURE_KINDS``) of a failure reason, or None for a success."""
    if failure is None:
        return None
    head = failure.split(":", 1)[0].strip()
    return head if head in FAILURE_KINDS else "calculator error"


def limit_failure(crystal: Crystal, limits: StructureLimits | None = None) -> RelaxResult | None:
    """A failed result ``over limit: <problem>`` when ``crystal`` is over ``limits``, else None.

    ``limits`` None: ``StructureLimits.from_env()``.
    """
    why = (limits or StructureLimits.from_env()).problem(crystal)
    return None if why is None else RelaxResult.failed(f"over limit: {why}", material_id=crystal.material_id)


@dataclass(frozen=True, eq=False)
class RelaxResult:
    """The outcome of relaxing one crystal: the result of the relaxation *stage*.

    A relaxation stage attaches it to its ``Candidate`` with
    ``candidate.with_stage("relax", result)`` (see ``relax_candidates``); the candidate keeps the
    unrelaxed input, the result holds the relaxed structure and energies.

    Attributes:
        crystal: the relaxed structure (same atom order as the input), or None after a failure.
        energy: total energy of ``crystal`` (eV), NaN after a failure.
        energy_per_atom: ``energy / num_atoms`` (eV/atom), NaN after a failure.
        initial_energy_per_atom: energy per atom of the unrelaxed input (eV/atom), NaN if the
            first evaluation failed.
        rmsd: root-mean-square displacement (Å) from the input to the relaxed structure, as
            defined by ``relaxation_rmsd``; NaN after a failure, 0 for a static evaluation.
        steps: optimiser steps taken (0 for a static evaluation).
        converged: True when the largest force (and stress, with a cell filter) fell below
            ``fmax`` within ``max_steps``; True for a static evaluation.
        failure: None on success, else ``"<kind>: <details>"`` with a kind from ``FAILURE_KINDS``.
        wall_time_s: seconds spent on this structure (0 when it came from a cache of unknown cost).
        material_id: the input's ``material_id`` (kept even when ``crystal`` is None).
        max_force: largest atomic force norm (eV/Å) at the final structure, NaN if unknown.

    """

    crystal: Crystal | None
    energy: float
    energy_per_atom: float
    initial_energy_per_atom: float = math.nan
    rmsd: float = math.nan
    steps: int = 0
    converged: bool = False
    failure: str | None = None
    wall_time_s: float = 0.0
    material_id: str | None = None
    max_force: float = math.nan

    @property
    def ok(self) -> bool:
        """True when the relaxation produced a structure and an energy (converged or not)."""
        return self.failure is None and self.crystal is not None and math.isfinite(self.energy_per_atom)

    @property
    def failure_kind(self) -> str | None:
        """The failure category, or None."""
        return failure_kind(self.failure)

    @classmethod
    def failed(
        cls,
        reason: str,
        *,
        material_id: str | None = None,
        initial_energy_per_atom: float = math.nan,
        steps: int = 0,
        wall_time_s: float = 0.0,
    ) -> RelaxResult:
        """A failed result: no structure, NaN energies, ``failure=reason``."""
        return cls(
            crystal=None,
            energy=math.nan,
            energy_per_atom=math.nan,
            initial_energy_per_atom=initial_energy_per_atom,
            rmsd=math.nan,
            steps=steps,
            converged=False,
            failure=reason,
            wall_time_s=wall_time_s,
            material_id=material_id,
        )

    # ---- plain-data round trip (for caches and reports) ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN becomes None); ``from_dict`` inverts it exactly."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        crystal = None
        if self.crystal is not None:
            crystal = {
                "atomic_numbers": self.crystal.atomic_numbers.tolist(),
                "frac_coords": self.crystal.frac_coords.tolist(),
                "lattice": self.crystal.lattice.tolist(),
                "material_id": self.crystal.material_id,
            }
        return {
            "crystal": crystal,
            "energy": num(self.energy),
            "energy_per_atom": num(self.energy_per_atom),
            "initial_energy_per_atom": num(self.initial_energy_per_atom),
            "rmsd": num(self.rmsd),
            "steps": int(self.steps),
            "converged": bool(self.converged),
            "failure": self.failure,
            "wall_time_s": float(self.wall_time_s),
            "material_id": self.material_id,
            "max_force": num(self.max_force),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelaxResult:
        """Inverse of ``to_dict``."""

        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        raw = data.get("crystal")
        crystal = None
        if raw is not None:
            crystal = Crystal(
                np.asarray(raw["atomic_numbers"], dtype=np.int64),
                np.asarray(raw["frac_coords"], dtype=np.float64),
                np.asarray(raw["lattice"], dtype=np.float64),
                material_id=raw.get("material_id"),
            )
        return cls(
            crystal=crystal,
            energy=num(data.get("energy")),
            energy_per_atom=num(data.get("energy_per_atom")),
            initial_energy_per_atom=num(data.get("initial_energy_per_atom")),
            rmsd=num(data.get("rmsd")),
            steps=int(data.get("steps", 0)),
            converged=bool(data.get("converged", False)),
            failure=data.get("failure"),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            material_id=data.get("material_id"),
            max_force=num(data.get("max_force")),
        )


@runtime_checkable
class Relaxer(Protocol):
    """Relaxes crystals with some energy model.

    ``name`` identifies the model (``"chgnet-0.3.0"``); ``settings`` is plain JSON-ready data
    that, together with ``name``, fully determines the results (it is written to the protocol
    block of every report and is part of the result-cache key).
    """

    @property
    def name(self) -> str:
        """Model name and version, e.g. ``"chgnet-0.3.0"``."""
        ...

    @property
    def settings(self) -> Mapping[str, Any]:
        """Every setting that affects the results (optimiser, fmax, steps, filter, ...)."""
        ...

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        """One result per input, in order; never raises for a bad structure."""
        ...


def relaxation_rmsd(initial: Crystal, relaxed: Crystal, *, remove_drift: bool = True) -> float:
    """Root-mean-square atomic displacement (Å) between an input and its relaxed structure.

    Atoms keep their identity through a relaxation, so no matching is needed: the fractional
    displacement of each atom is taken to the minimum image (each component in [-1/2, 1/2)),
    optionally minus the mean displacement (a rigid translation of all atoms is no structural
    change), and mapped to Cartesian through the *relaxed* lattice. This measures how far atoms
    moved within the cell, not the cell's own change of shape.

    Args:
        initial: the unrelaxed structure.
        relaxed: the relaxed structure, same atoms in the same order.
        remove_drift: subtract the mean fractional displacement first.

    Returns:
        The RMSD in Å.

    Raises:
        ValueError: if the two structures do not have the same atoms in the same order.

    """
    if initial.num_atoms != relaxed.num_atoms or not np.array_equal(initial.atomic_numbers, relaxed.atomic_numbers):
        raise ValueError("relaxation_rmsd needs the same atoms in the same order")
    diff = pbc_diff(relaxed.frac_coords, initial.frac_coords)  # [n, 3]
    if remove_drift:
        diff = pbc_diff(diff, diff.mean(axis=0, keepdims=True))
    cart = frac_to_cart(diff, relaxed.lattice)
    return float(np.sqrt(np.mean(np.sum(cart * cart, axis=1))))


def relax_candidates(relaxer: Relaxer, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Relax the candidates that hold a crystal and attach each result as stage ``"relax"``.

    The relaxer gets all structures in one call (so its workers or batches stay busy).
    Candidates without a crystal pass through untouched; the order is kept.

    Raises:
        RuntimeError: if the relaxer returns a different number of results than it was given.

    """
    items = list(candidates)
    todo: list[int] = []
    crystals: list[Crystal] = []
    for k, candidate in enumerate(items):
        if candidate.crystal is not None:
            todo.append(k)
            crystals.append(candidate.crystal)
    results = relaxer.relax(crystals) if crystals else []
    if len(results) != len(todo):
        raise RuntimeError(f"{relaxer.name} returned {len(results)} results for {len(todo)} structures")
    out = list(items)
    for k, result in zip(todo, results, strict=True):
        out[k] = items[k].with_stage(RELAX_STAGE, result)
    return out
