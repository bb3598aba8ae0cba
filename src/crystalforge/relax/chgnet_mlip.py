"""CHGNet: the calculator factory, the relaxer over it and a batched static-energy evaluator.

Every public factory checks that chgnet is installed when it is *built* and raises
``MissingDependencyError`` (naming the ``crystalforge[relax]`` extra) otherwise, so a missing
MLIP stops a command before any work instead of turning into per-structure failures. The
model itself is loaded lazily, once per process.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.extras import require
from crystalforge.core.versions import distribution_version
from crystalforge.execution import Executor, ExecutorConfig, make_executor
from crystalforge.interrupt import check_interrupted
from crystalforge.relax.ase_relaxer import (
    DEFAULT_FMAX,
    DEFAULT_MAX_STEPS,
    MIN_ENERGY_PER_ATOM,
    ASERelaxer,
    _is_parallel,
)
from crystalforge.relax.interfaces import RelaxResult, limit_failure

if TYPE_CHECKING:  # pragma: no cover
    from ase.calculators.calculator import Calculator
    from chgnet.model import CHGNet

__all__ = [
    "CHGNET_MODEL_VERSION",
    "CHGNetCalculatorFactory",
    "CHGNetStaticRelaxer",
    "chgnet_relaxer",
    "chgnet_static_energies",
    "chgnet_static_relaxer",
    "require_chgnet",
]

CHGNET_MODEL_VERSION = "0.3.0"
"""The CHGNet weights shipped in the chgnet wheel and loaded offline."""


def require_chgnet(feature: str = "relaxation with CHGNet") -> None:
    """Raise ``MissingDependencyError`` (extra ``relax``) unless chgnet can be imported.

    Imports only chgnet's light top-level package (not torch or the model).
    """
    require("chgnet", feature, extra="relax")


def _load_chgnet(device: str) -> CHGNet:
    model = require("chgnet.model", "relaxation with CHGNet", extra="relax")
    with contextlib.redirect_stdout(io.StringIO()):
        return model.CHGNet.load(model_name=CHGNET_MODEL_VERSION, use_device=device, verbose=False)


class CHGNetCalculatorFactory:
    """Picklable factory of ``chgnet.model.dynamics.CHGNetCalculator`` (weights from the wheel).

    Raises:
        MissingDependencyError: at construction, when chgnet is not installed.

    """

    def __init__(self, *, device: str = "cpu", torch_threads: int | None = None) -> None:
        require_chgnet()
        self.device = device
        self.torch_threads = torch_threads

    def __call__(self) -> Calculator:
        """Load CHGNet (quietly) and wrap it in its ASE calculator."""
        import torch
        from chgnet.model.dynamics import CHGNetCalculator

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        model = _load_chgnet(self.device)
        with contextlib.redirect_stdout(io.StringIO()):
            return CHGNetCalculator(model=model, use_device=self.device, on_isolated_atoms="ignore")


def chgnet_relaxer(
    *,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    relax_cell: bool = True,
    optimizer: str = "FIRE",
    static: bool = False,
    timeout_s: float | None = None,
    workers: int | ExecutorConfig = 1,
    torch_threads: int | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> ASERelaxer:
    """An ``ASERelaxer`` over CHGNet 0.3.0 (CPU by default).

    ``torch_threads`` sets torch's intra-op threads in this process (None: torch's default) and
    in each worker (None: 1). Further keyword arguments go to ``ASERelaxer``.

    Raises:
        MissingDependencyError: when chgnet is not installed (before anything is built).

    """
    return ASERelaxer(
        CHGNetCalculatorFactory(device=device, torch_threads=torch_threads),
        name=f"chgnet-{CHGNET_MODEL_VERSION}",
        fmax=fmax,
        max_steps=max_steps,
        relax_cell=relax_cell,
        optimizer=optimizer,
        static=static,
        timeout_s=timeout_s,
        workers=workers,
        torch_threads=torch_threads,
        extra_settings={
            "model": "CHGNet",
            "model_version": CHGNET_MODEL_VERSION,
            "chgnet_package": distribution_version("chgnet"),
            "device": device,
        },
        **kwargs,
    )


def chgnet_static_energies(
    crystals: Sequence[Crystal], *, batch_size: int = 32, model: CHGNet | None = None, device: str = "cpu"
) -> np.ndarray:
    """CHGNet energies per atom (eV/atom) of the given structures, batched, energy head only.

    A batch that fails is retried one structure at a time; a structure that still fails (or
    gives a non-finite energy) gets NaN. ``model`` is a loaded ``CHGNet`` (loaded if None).

    Returns:
        ``[B]`` float64 array of energies per atom.

    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(crystals)
    out = np.full(len(items), np.nan)
    if not items:
        return out
    model = model if model is not None else _load_chgnet(device)
    structures: list[Any] = []
    for crystal in items:
        try:
            structures.append(crystal.to_pymatgen())
        except Exception:  # noqa: BLE001
            structures.append(None)

    def predict(group: list[Any]) -> list[float]:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            preds = model.predict_structure(group, task="e", batch_size=len(group))
        preds = preds if isinstance(preds, list) else [preds]
        return [float(np.asarray(p["e"]).reshape(-1)[0]) for p in preds]

    for start in range(0, len(items), batch_size):
        check_interrupted()
        idx = [k for k in range(start, min(start + batch_size, len(items))) if structures[k] is not None]
        if not idx:
            continue
        try:
            values = predict([structures[k] for k in idx])
            out[idx] = values
        except Exception:  # noqa: BLE001 - retry one by one to isolate the bad structure
            for k in idx:
                try:
                    out[k] = predict([structures[k]])[0]
                except Exception:  # noqa: BLE001
                    check_interrupted()  # not a bad structure: a Ctrl-C a library turned into an error
                    out[k] = np.nan
    out[~np.isfinite(out)] = np.nan
    return out


class CHGNetStaticRelaxer:
    """A ``Relaxer`` that only evaluates CHGNet energies, batched (for reference hulls).

    Each result's crystal is its input, ``steps=0``, ``rmsd=0``, ``converged=True``; a structure
    CHGNet cannot evaluate gets a ``calculator error`` failure. With ``workers > 1`` the input
    is split into contiguous blocks of ``batch_size`` evaluated by the workers (spawned local
    processes or Ray actors; torch 1 thread each). ``workers`` is a count or an ``ExecutorConfig``.

    Raises:
        MissingDependencyError: at construction, when chgnet is not installed.

    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        workers: int | ExecutorConfig = 1,
        device: str = "cpu",
        min_energy_per_atom: float = MIN_ENERGY_PER_ATOM,
    ) -> None:
        if batch_size < 1 or (isinstance(workers, int) and workers < 1):
            raise ValueError("batch_size and workers must be >= 1")
        require_chgnet()
        self.batch_size = batch_size
        self.execution = ExecutorConfig.of(workers)
        self.workers = self.execution.workers
        self.device = device
        self.min_energy_per_atom = min_energy_per_atom
        self._model: Any = None
        self._executor: Executor | None = None

    @property
    def name(self) -> str:
        """Model name and version."""
        return f"chgnet-{CHGNET_MODEL_VERSION}"

    @property
    def settings(self) -> dict[str, Any]:
        """Static evaluation settings (``batch_size`` and ``workers`` do not change results)."""
        return {
            "mode": "static",
            "task": "energy",
            "min_energy_per_atom": self.min_energy_per_atom,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "model": "CHGNet",
            "model_version": CHGNET_MODEL_VERSION,
            "chgnet_package": distribution_version("chgnet"),
            "device": self.device,
        }

    def energies(self, crystals: Sequence[Crystal]) -> np.ndarray:
        """Energies per atom (eV/atom), NaN where CHGNet failed."""
        items = list(crystals)
        if _is_parallel(self.execution) and len(items) > self.batch_size:
            executor = self._executor
            if executor is None:  # kept for later calls: workers load CHGNet once
                executor = self._executor = make_executor(
                    self.execution,
                    start_method="spawn",
                    initializer=_init_static_worker,
                    initargs=(self.device,),
                )
            blocks = [items[k : k + self.batch_size] for k in range(0, len(items), self.batch_size)]
            parts = executor.map(_static_in_worker, [(block, self.batch_size) for block in blocks])
            return np.concatenate(parts)
        if self._model is None:
            self._model = _load_chgnet(self.device)
        return chgnet_static_energies(items, batch_size=self.batch_size, model=self._model)

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        """Static results, one per input, in order (a structure over a ``core.limits`` limit: ``over limit``)."""
        items = list(crystals)
        refused = [limit_failure(c) for c in items]
        start = time.perf_counter()
        values = np.full(len(items), np.nan)
        todo = [k for k, r in enumerate(refused) if r is None]
        values[todo] = self.energies([items[k] for k in todo])
        per = (time.perf_counter() - start) / max(1, len(items))
        out = []
        for crystal, e, rejected in zip(items, values.tolist(), refused, strict=True):
            if rejected is not None:
                out.append(rejected)
            elif not math.isfinite(e):
                out.append(
                    RelaxResult.failed(
                        "calculator error: CHGNet could not evaluate the structure",
                        material_id=crystal.material_id,
                        wall_time_s=per,
                    )
                )
            elif e < self.min_energy_per_atom:
                out.append(
                    RelaxResult.failed(
                        f"explosion: energy {e:.3f} eV/atom is below {self.min_energy_per_atom:g} eV/atom",
                        material_id=crystal.material_id,
                        initial_energy_per_atom=e,
                        wall_time_s=per,
                    )
                )
            else:
                out.append(
                    RelaxResult(
                        crystal=crystal,
                        energy=e * crystal.num_atoms,
                        energy_per_atom=e,
                        initial_energy_per_atom=e,
                        rmsd=0.0,
                        steps=0,
                        converged=True,
                        wall_time_s=per,
                        material_id=crystal.material_id,
                    )
                )
        return out

    def close(self) -> None:
        """Stop the worker processes (a later parallel call starts them again)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> CHGNetStaticRelaxer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_WORKER_MODEL: Any = None


def _init_static_worker(device: str) -> None:
    global _WORKER_MODEL
    import torch

    torch.set_num_threads(1)
    _WORKER_MODEL = _load_chgnet(device)


def _static_in_worker(args: tuple[list[Crystal], int]) -> np.ndarray:
    crystals, batch_size = args
    return chgnet_static_energies(crystals, batch_size=batch_size, model=_WORKER_MODEL)


def chgnet_static_relaxer(**kwargs: Any) -> CHGNetStaticRelaxer:
    """A batched static CHGNet evaluator (see ``CHGNetStaticRelaxer``)."""
    return CHGNetStaticRelaxer(**kwargs)
