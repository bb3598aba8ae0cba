"""``ASERelaxer``: one generic relaxer over any ASE calculator.

``ASERelaxer`` relaxes positions (and, with ``relax_cell``, the cell through ASE's
``FrechetCellFilter``) with an ASE optimiser until every force (and the filter's stress
gradient) is below ``fmax`` or ``max_steps`` steps were taken. Defaults are CHGNet's own
``StructOptimizer.relax`` defaults (chgnet 0.4.2): FIRE, ``fmax=0.1`` eV/Å, at most 500 steps,
``FrechetCellFilter``. MatterGen's evaluation uses MatterSim with FIRE, ``ExpCellFilter``,
``fmax=0.05`` and no practical step limit; pass those settings to reproduce it.

Nothing here raises for a bad structure: calculator errors, non-finite values, explosions and
timeouts become ``RelaxResult.failure`` reasons; a structure over a resource limit
(``core.limits``) is refused as ``over limit`` and a cell too thin for a neighbour search (a
degenerate generated lattice) as invalid input, both before the calculator sees them. Hitting
``max_steps`` is not a failure; the final structure and energy are returned with ``converged=False``.

Model-specific factories live elsewhere (``relax.chgnet_mlip``); the registry of relaxer names is
``relax.registry``. This module imports with numpy alone (ase is imported when a structure is relaxed).

(About 450 lines: one relaxer, its step and final checks and its worker plumbing are one unit.)
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.limits import StructureLimits
from crystalforge.core.neighbors import MAX_IMAGES, image_counts
from crystalforge.execution import Executor, ExecutorConfig, make_executor
from crystalforge.relax.interfaces import RelaxResult, limit_failure, relaxation_rmsd

if TYPE_CHECKING:  # pragma: no cover
    import ase
    from ase.calculators.calculator import Calculator

__all__ = [
    "DEFAULT_FMAX",
    "DEFAULT_MAX_STEPS",
    "MIN_ENERGY_PER_ATOM",
    "ASERelaxer",
    "CalculatorFactory",
]

CalculatorFactory = Callable[[], "Calculator"]
"""Builds one ASE calculator; must be picklable (a module-level callable) when ``workers > 1``."""

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
CELL_FILTERS = ("FrechetCellFilter", "ExpCellFilter")

DEFAULT_FMAX = 0.1
"""eV/Å; CHGNet's ``StructOptimizer.relax`` default."""
DEFAULT_MAX_STEPS = 500
"""CHGNet's ``StructOptimizer.relax`` default."""
MAX_VOLUME_RATIO = 5.0
"""A relaxation whose cell volume grows or shrinks by more than this factor has exploded."""
MIN_DISTANCE = 0.5
"""Å; two atoms (or an atom and its own image) closer than this after relaxation: explosion."""
MIN_ENERGY_PER_ATOM = -30.0
"""eV/atom; below any physical GGA(+U) energy (CHGNet 0.3.0's most negative per-element
reference energy is about -15.9 eV/atom), so lower values mean the MLIP fell into a hole."""


class ASERelaxer:
    """Relaxes crystals with an ASE calculator, one structure at a time (or in worker processes).

    Args:
        calculator_factory: builds the calculator (called once per process, lazily).
        name: model name and version for reports and cache keys (``"chgnet-0.3.0"``).
        fmax: force threshold (eV/Å) for convergence.
        max_steps: most optimiser steps per structure.
        relax_cell: relax the cell too, through ``cell_filter``.
        optimizer: ``"FIRE"``, ``"BFGS"`` or ``"LBFGS"``.
        cell_filter: ``"FrechetCellFilter"`` (default) or ``"ExpCellFilter"``.
        static: single-point evaluation only (no relaxation): the result's crystal is the
            input, ``steps=0``, ``rmsd=0``, ``converged=True``.
        timeout_s: wall-time budget per structure, checked between optimiser steps (a single
            calculator call that hangs cannot be interrupted); None for no limit.
        workers: worker count or an ``ExecutorConfig`` (local processes are spawned; each
            worker builds its own calculator and runs torch with ``torch_threads`` threads,
            default 1). 1 runs in this process. The workers are kept for later calls until
            ``close()`` (or the end of a ``with`` block); a script that uses local workers must
            guard its entry point with ``if __name__ == "__main__":``.
        torch_threads: torch intra-op threads inside workers (default 1); in this process the
            factory decides.
        max_volume_ratio: explosion if the final/initial volume ratio leaves
            ``[1/max_volume_ratio, max_volume_ratio]``.
        min_distance: explosion if two atoms end up closer than this (Å).
        min_energy_per_atom: explosion if the energy per atom falls below this (eV/atom).
        extra_settings: further JSON-ready settings to record (model version, device, ...).
        limits: what one structure may cost (None: ``StructureLimits.from_env()``); a structure
            over it fails as ``over limit`` before the calculator runs.

    """

    def __init__(
        self,
        calculator_factory: CalculatorFactory,
        *,
        name: str = "ase",
        fmax: float = DEFAULT_FMAX,
        max_steps: int = DEFAULT_MAX_STEPS,
        relax_cell: bool = True,
        optimizer: str = "FIRE",
        cell_filter: str = "FrechetCellFilter",
        static: bool = False,
        timeout_s: float | None = None,
        workers: int | ExecutorConfig = 1,
        torch_threads: int | None = None,
        max_volume_ratio: float = MAX_VOLUME_RATIO,
        min_distance: float = MIN_DISTANCE,
        min_energy_per_atom: float = MIN_ENERGY_PER_ATOM,
        extra_settings: Mapping[str, Any] | None = None,
        limits: StructureLimits | None = None,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if cell_filter not in CELL_FILTERS:
            raise ValueError(f"cell_filter must be one of {CELL_FILTERS}, got {cell_filter!r}")
        if not (math.isfinite(fmax) and fmax > 0):
            raise ValueError(f"fmax must be positive, got {fmax}")
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        if not max_volume_ratio > 1:
            raise ValueError(f"max_volume_ratio must be > 1, got {max_volume_ratio}")
        execution = ExecutorConfig.of(workers)  # raises ValueError for workers < 1
        self.calculator_factory = calculator_factory
        self._name = name
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.relax_cell = bool(relax_cell)
        self.optimizer = optimizer
        self.cell_filter = cell_filter
        self.static = bool(static)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.execution = execution
        self.workers = execution.workers
        self.torch_threads = torch_threads
        self.max_volume_ratio = float(max_volume_ratio)
        self.min_distance = float(min_distance)
        self.min_energy_per_atom = float(min_energy_per_atom)
        self.extra_settings = dict(extra_settings or {})
        self.limits = limits
        self._calculator: Calculator | None = None
        self._executor: Executor | None = None

    # ---- the Relaxer protocol -----------------------------------------------------------------
    @property
    def name(self) -> str:
        """Model name and version."""
        return self._name

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting that affects results, plus execution settings (``timeout_s``, ``workers``)."""
        out: dict[str, Any] = {"mode": "static" if self.static else "relax"}
        if not self.static:
            out |= {
                "optimizer": self.optimizer,
                "fmax": self.fmax,
                "max_steps": self.max_steps,
                "cell_filter": self.cell_filter if self.relax_cell else None,
                "max_volume_ratio": self.max_volume_ratio,
                "min_distance": self.min_distance,
            }
        out |= {
            "min_energy_per_atom": self.min_energy_per_atom,
            "timeout_s": self.timeout_s,
            "workers": self.workers,
        }
        return out | self.extra_settings

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        """Relax (or evaluate) every crystal; one result per input, in order."""
        items = list(crystals)
        if _is_parallel(self.execution) and len(items) > 1:
            return self._relax_parallel(items)
        return [self.relax_one(c) for c in items]

    # ---- one structure ----------------------------------------------------------------------------
    @property
    def calculator(self) -> Calculator:
        """The calculator of this process, built on first use."""
        if self._calculator is None:
            self._calculator = self.calculator_factory()
        return self._calculator

    def relax_one(self, crystal: Crystal) -> RelaxResult:
        """Relax one crystal; never raises for a bad structure or a failing calculator."""
        start = time.perf_counter()
        ident = crystal.material_id

        def fail(reason: str, *, e0: float = math.nan, steps: int = 0) -> RelaxResult:
            return RelaxResult.failed(
                reason,
                material_id=ident,
                initial_energy_per_atom=e0,
                steps=steps,
                wall_time_s=time.perf_counter() - start,
            )

        try:
            calc = self.calculator
        except Exception as exc:  # noqa: BLE001 - any factory failure is reported, not raised
            return fail(f"calculator error: cannot build the calculator: {type(exc).__name__}: {exc}")
        try:
            atoms = crystal.to_ase()
        except Exception as exc:  # noqa: BLE001
            return fail(f"invalid input: {type(exc).__name__}: {exc}")
        thin = _too_thin(crystal)
        if thin is not None:  # an MLIP's neighbour search would not return (or exhaust memory) on it
            return fail(f"invalid input: {thin}")
        refused = limit_failure(crystal, self.limits)
        if refused is not None:
            return refused
        atoms.calc = calc
        n = len(atoms)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Converting a tensor with requires_grad", category=UserWarning
                )
                e_initial = float(atoms.get_potential_energy())
                forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            return fail(f"calculator error: {type(exc).__name__}: {exc}")
        if not math.isfinite(e_initial):
            return fail(f"non-finite: initial energy is {e_initial}")
        if not np.isfinite(forces).all():
            return fail("non-finite: initial forces contain NaN or inf")
        e0 = e_initial / n
        if e0 < self.min_energy_per_atom:
            return fail(
                f"explosion: initial energy {e0:.3f} eV/atom is below {self.min_energy_per_atom:g} eV/atom", e0=e0
            )
        if self.static:
            return RelaxResult(
                crystal=crystal,
                energy=e_initial,
                energy_per_atom=e0,
                initial_energy_per_atom=e0,
                rmsd=0.0,
                steps=0,
                converged=True,
                wall_time_s=time.perf_counter() - start,
                material_id=ident,
                max_force=float(np.linalg.norm(forces, axis=1).max()),
            )
        return self._optimise(crystal, atoms, e0, start)

    def _optimise(self, crystal: Crystal, atoms: ase.Atoms, e0: float, start: float) -> RelaxResult:
        ident = crystal.material_id
        n = len(atoms)
        v0 = float(abs(atoms.get_volume()))
        steps = 0

        def fail(reason: str) -> RelaxResult:
            return RelaxResult.failed(
                reason,
                material_id=ident,
                initial_energy_per_atom=e0,
                steps=steps,
                wall_time_s=time.perf_counter() - start,
            )

        try:
            optimizer = self._make_optimizer(atoms)
        except Exception as exc:  # noqa: BLE001
            return fail(f"calculator error: cannot set up the optimiser: {type(exc).__name__}: {exc}")
        converged = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for is_converged in optimizer.irun(fmax=self.fmax, steps=self.max_steps):
                    steps = int(optimizer.nsteps)
                    converged = bool(is_converged)
                    problem = self._step_problem(atoms, v0, n)
                    if problem is not None:
                        return fail(problem)
                    if converged:
                        break
                    if self.timeout_s is not None and time.perf_counter() - start > self.timeout_s:
                        return fail(f"timeout: {self.timeout_s:g} s exceeded after {steps} steps")
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            return fail(f"calculator error: {type(exc).__name__}: {exc}")
        if not math.isfinite(energy) or not np.isfinite(forces).all():
            return fail("non-finite: final energy or forces contain NaN or inf")
        try:
            relaxed = Crystal.from_ase(atoms, material_id=ident).replace(properties=crystal.properties)
        except Exception as exc:  # noqa: BLE001 - NaN positions or a collapsed cell
            return fail(f"explosion: relaxed structure is not a valid crystal: {exc}")
        problem = self._final_problem(atoms)
        if problem is not None:
            return fail(problem)
        return RelaxResult(
            crystal=relaxed,
            energy=energy,
            energy_per_atom=energy / n,
            initial_energy_per_atom=e0,
            rmsd=relaxation_rmsd(crystal, relaxed),
            steps=steps,
            converged=converged,
            wall_time_s=time.perf_counter() - start,
            material_id=ident,
            max_force=float(np.linalg.norm(forces, axis=1).max()),
        )

    def _make_optimizer(self, atoms: ase.Atoms) -> Any:
        from ase import optimize
        from ase.filters import ExpCellFilter, FrechetCellFilter

        target: Any = atoms
        if self.relax_cell:
            target = FrechetCellFilter(atoms) if self.cell_filter == "FrechetCellFilter" else ExpCellFilter(atoms)
        cls = {"FIRE": optimize.FIRE, "BFGS": optimize.BFGS, "LBFGS": optimize.LBFGS}[self.optimizer]
        return cls(target, logfile=None)

    def _step_problem(self, atoms: ase.Atoms, v0: float, n: int) -> str | None:
        """A failure reason visible after an optimiser step (cheap checks only), or None."""
        energy = float(atoms.get_potential_energy())  # cached by the calculator, no recomputation
        if not math.isfinite(energy):
            return f"non-finite: energy became {energy}"
        if not np.isfinite(atoms.get_forces()).all():
            return "non-finite: forces contain NaN or inf"
        if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.cell.array).all():
            return "non-finite: positions or cell became NaN or inf"
        ratio = float(abs(atoms.get_volume())) / v0
        if not (1.0 / self.max_volume_ratio <= ratio <= self.max_volume_ratio):
            bound = self.max_volume_ratio
            return f"explosion: cell volume changed by a factor {ratio:.3g} (allowed 1/{bound:g} to {bound:g})"
        if energy / n < self.min_energy_per_atom:
            return f"explosion: energy {energy / n:.3f} eV/atom is below {self.min_energy_per_atom:g} eV/atom"
        return None

    def _final_problem(self, atoms: ase.Atoms) -> str | None:
        """Closest-pair check on the relaxed structure (images included), or None."""
        if self.min_distance <= 0:
            return None
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, self.min_distance, self_interaction=False)
        if len(d) == 0:
            return None
        k = int(np.argmin(d))
        return (
            f"explosion: atoms {int(i[k])} and {int(j[k])} are {float(d[k]):.3f} Å apart after relaxation "
            f"(minimum {self.min_distance:g} Å)"
        )

    # ---- worker processes ---------------------------------------------------------------------------
    def _worker_config(self) -> dict[str, Any]:
        return {
            "calculator_factory": self.calculator_factory,
            "name": self._name,
            "fmax": self.fmax,
            "max_steps": self.max_steps,
            "relax_cell": self.relax_cell,
            "optimizer": self.optimizer,
            "cell_filter": self.cell_filter,
            "static": self.static,
            "timeout_s": self.timeout_s,
            "workers": 1,
            "max_volume_ratio": self.max_volume_ratio,
            "min_distance": self.min_distance,
            "min_energy_per_atom": self.min_energy_per_atom,
            "extra_settings": self.extra_settings,
            "limits": self.limits,
        }

    def _relax_parallel(self, items: list[Crystal]) -> list[RelaxResult]:
        executor = self._executor
        if executor is None:  # kept for later calls: workers load their calculator once
            executor = self._executor = make_executor(
                self.execution,
                start_method="spawn",
                initializer=_init_worker,
                initargs=(self._worker_config(), self.torch_threads or 1),
            )
        return executor.map(_relax_in_worker, items, chunksize=1)

    def close(self) -> None:
        """Stop the worker processes (a later parallel call starts them again)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> ASERelaxer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ASERelaxer({self._name!r}, {self.settings})"


SEARCH_CUTOFF = 6.0
"""Å: the widest neighbour cutoff of the shipped MLIPs (CHGNet's atom graph); a cell too thin to search
at this radius within ``core.neighbors.MAX_IMAGES`` periodic images is refused before the calculator runs."""


def _too_thin(crystal: Crystal) -> str | None:
    """Why a cell cannot be handed to a calculator's neighbour search, or None when it can."""
    batch = CrystalBatch.collate([crystal], dtype=torch.float64)
    images = float(image_counts(batch, SEARCH_CUTOFF)[0])
    if images <= MAX_IMAGES:
        return None
    volume = abs(float(np.linalg.det(crystal.lattice)))
    return (
        f"cell too thin for a {SEARCH_CUTOFF:g} Å neighbour search ({images:.3g} periodic images, more than "
        f"{MAX_IMAGES}; volume {volume:.3g} Å³ for {crystal.num_atoms} atoms)"
    )


def _is_parallel(execution: ExecutorConfig) -> bool:
    """True when work goes to other processes (local workers or a Ray cluster)."""
    return execution.workers > 1 or execution.ray is not None


_WORKER_RELAXER: ASERelaxer | None = None


def _init_worker(config: dict[str, Any], threads: int) -> None:
    global _WORKER_RELAXER
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    _WORKER_RELAXER = ASERelaxer(**config)


def _relax_in_worker(crystal: Crystal) -> RelaxResult:
    assert _WORKER_RELAXER is not None, "worker not initialised"
    return _WORKER_RELAXER.relax_one(crystal)
