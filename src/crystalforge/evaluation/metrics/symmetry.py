"""Space groups of generated crystals (spglib): per-structure number and symbol, symmetric rate, distribution.

spglib's ``get_symmetry_dataset`` is called on the cell as given (lattice rows, fractional
coordinates, atomic numbers), which is what pymatgen's ``SpacegroupAnalyzer`` passes to it, so the
numbers equal ``SpacegroupAnalyzer(structure, symprec, angle_tolerance).get_space_group_number()``.

Tolerances: the default ``symprec=0.1`` Å, ``angle_tolerance=5``° is MatterGen's
(``DefaultSpaceGroupAnalyzer``). pymatgen's own default is ``symprec=0.01``; DiffCSP++ finds space
groups of its training data with ``symprec=0.01`` (pymatgen, then pyxtal at ``tol=0.01``). Report the
tolerances with any number: the symmetric rate of generated crystals depends strongly on them.

A crystal spglib cannot analyse (overlapping atoms at ``symprec``, a degenerate cell) gets number
None and a reason; it is left out of the rate and counted in ``n_failed``. Nothing is raised. So
does a crystal whose analysis runs past the per-structure time limit (``aborted``).
``SymmetryMetric`` is the suite adapter; ``workers`` may be an ``ExecutorConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.space_groups import CRYSTAL_SYSTEMS, crystal_system
from crystalforge.evaluation.metrics.base import MetricResult, parsed, table_columns
from crystalforge.execution import ExecutorConfig, make_executor
from crystalforge.execution.time_limit import StepAbortedError, map_with_time_limit

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = [
    "DEFAULT_ANGLE_TOLERANCE",
    "DEFAULT_SYMPREC",
    "SpaceGroupResult",
    "SymmetryMetric",
    "SymmetryReport",
    "crystal_system",
    "space_group",
    "symmetry_report",
]

DEFAULT_SYMPREC = 0.1
"""spglib distance tolerance (Å); MatterGen's choice."""

DEFAULT_ANGLE_TOLERANCE = 5.0
"""spglib angle tolerance (degrees); MatterGen's choice and pymatgen's default."""

_MIN_PER_WORKER = 256
SYMMETRY_STEP = "spglib symmetry analysis"  # the step named in a time-out reason


@dataclass(frozen=True)
class SpaceGroupResult:
    """Space group of one crystal, or None with the reason spglib gave."""

    number: int | None  # 1..230
    symbol: str | None  # Hermann–Mauguin short symbol, e.g. "Fm-3m"
    crystal_system: str | None
    reason: str  # "ok" or why no space group was found
    aborted: bool = False  # the analysis was stopped (over the time limit)


@dataclass(frozen=True, eq=False)
class SymmetryReport:
    """Per-crystal space groups, the symmetric rate (percent, 0-100) and the space-group distribution.

    ``symmetric_rate`` is the percentage of analysed crystals (spglib succeeded) whose space group
    number is above 1 (not P1); NaN when none was analysed. ``spacegroup_counts`` maps each space
    group number found to its count, in increasing number.
    """

    crystals: tuple[SpaceGroupResult, ...]
    symmetric_rate: float
    n_analysed: int
    n_failed: int
    spacegroup_counts: Mapping[int, int]
    crystal_system_counts: Mapping[str, int]
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar results, the distributions and the protocol (JSON-ready)."""
        return {
            "symmetric_rate": self.symmetric_rate,
            "n_analysed": self.n_analysed,
            "n_failed": self.n_failed,
            "spacegroup_counts": {str(k): v for k, v in self.spacegroup_counts.items()},
            "crystal_system_counts": dict(self.crystal_system_counts),
            "protocol": dict(self.protocol),
        }

    def per_crystal(self) -> list[dict[str, Any]]:
        """One row per crystal, for a per-structure table."""
        return [
            {
                "spacegroup_number": r.number,
                "spacegroup_symbol": r.symbol,
                "crystal_system": r.crystal_system,
                "spacegroup_reason": r.reason,
            }
            for r in self.crystals
        ]


@contextmanager
def _quiet_spglib() -> Iterator[None]:
    # spglib >= 2.5 warns about its OLD_ERROR_HANDLING switch on every call; both failure styles are handled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _check_tolerances(symprec: float, angle_tolerance: float) -> None:
    if not (math.isfinite(symprec) and symprec > 0):
        raise ValueError(f"symprec must be finite and positive, got {symprec}")
    if not (angle_tolerance == -1.0 or (math.isfinite(angle_tolerance) and angle_tolerance > 0)):
        raise ValueError(f"angle_tolerance must be positive (or -1 for spglib's choice), got {angle_tolerance}")


def _analyse(
    cell: tuple[np.ndarray, np.ndarray, np.ndarray], symprec: float, angle_tolerance: float
) -> SpaceGroupResult:
    import spglib

    try:
        with _quiet_spglib():
            dataset = spglib.get_symmetry_dataset(
                cell,  # type: ignore[arg-type]  # spglib's stubs ask for sequences; arrays are what it reads
                symprec=symprec,
                angle_tolerance=angle_tolerance,
            )
            detail = "" if dataset is not None else str(spglib.get_error_message() or "")
    except Exception as exc:  # noqa: BLE001 - any spglib failure becomes a reason, never an exception
        return SpaceGroupResult(None, None, None, f"spglib failed: {type(exc).__name__}: {exc}")
    if dataset is None:
        detail = f" ({detail})" if detail and detail != "no error" else ""
        return SpaceGroupResult(
            None, None, None, f"spglib found no space group{detail}; overlapping atoms or a degenerate cell?"
        )
    number = int(dataset.number)
    return SpaceGroupResult(number, str(dataset.international), crystal_system(number), "ok")


def _cell(crystal: Crystal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.ascontiguousarray(crystal.lattice, dtype=np.float64),
        np.ascontiguousarray(crystal.frac_coords, dtype=np.float64),
        np.ascontiguousarray(crystal.atomic_numbers, dtype=np.intc),
    )


def _analyse_many(
    task: tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], float, float, float | None],
) -> list[SpaceGroupResult]:
    cells, symprec, angle_tolerance, seconds = task
    analyse = partial(_analyse, symprec=symprec, angle_tolerance=angle_tolerance)
    found = map_with_time_limit(analyse, cells, seconds=seconds, step=SYMMETRY_STEP, preload=("spglib",))
    return [SpaceGroupResult(None, None, None, str(r), True) if isinstance(r, StepAbortedError) else r for r in found]


def space_group(
    crystal: Crystal, *, symprec: float = DEFAULT_SYMPREC, angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE
) -> SpaceGroupResult:
    """Space group of one crystal found by spglib (number None with a reason when spglib fails).

    Args:
        crystal: The structure.
        symprec: Distance tolerance in Å.
        angle_tolerance: Angle tolerance in degrees (-1 lets spglib choose).

    Raises:
        ValueError: for a non-positive tolerance.

    """
    _check_tolerances(symprec, angle_tolerance)
    return _analyse(_cell(crystal), symprec, angle_tolerance)


def symmetry_report(
    crystals: Sequence[Crystal],
    *,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    workers: int | ExecutorConfig = 1,
    time_limit_s: float | None = None,
) -> SymmetryReport:
    """Space groups of many crystals, their distribution and the symmetric rate (percent of analysed > P1).

    Args:
        crystals: The structures.
        symprec: Distance tolerance in Å.
        angle_tolerance: Angle tolerance in degrees (-1 lets spglib choose).
        workers: Processes to spread the crystals over (1 = in this process), or an executor config.
        time_limit_s: Seconds one crystal's analysis may take (None: no limit).

    Returns:
        The report with one ``SpaceGroupResult`` per crystal and the protocol block.

    """
    _check_tolerances(symprec, angle_tolerance)
    config = ExecutorConfig.of(workers)
    cells = [_cell(c) for c in crystals]
    n_workers = min(config.workers, max(1, len(cells) // _MIN_PER_WORKER))
    if n_workers == 1:
        results = _analyse_many((cells, symprec, angle_tolerance, time_limit_s))
    else:
        size = math.ceil(len(cells) / (4 * n_workers))
        tasks = [(cells[s : s + size], symprec, angle_tolerance, time_limit_s) for s in range(0, len(cells), size)]
        local = config.ray is None
        with make_executor(dataclasses.replace(config, workers=n_workers) if local else config) as executor:
            results = [r for chunk in executor.map(_analyse_many, tasks) for r in chunk]
    numbers = [r.number for r in results if r.number is not None]
    sg_counts: dict[int, int] = {}
    for n in sorted(numbers):
        sg_counts[n] = sg_counts.get(n, 0) + 1
    cs_counts: dict[str, int] = {name: 0 for name in CRYSTAL_SYSTEMS}
    for r in results:
        if r.crystal_system is not None:
            cs_counts[r.crystal_system] += 1
    import spglib

    protocol = {
        "metric": "symmetry",
        "symprec": float(symprec),
        "angle_tolerance": float(angle_tolerance),
        "symmetric": "space group number > 1, over crystals spglib could analyse",
        "cell": "as given (no primitive or Niggli reduction first)",
        "spglib_version": str(spglib.__version__),
    }
    return SymmetryReport(
        crystals=tuple(results),
        symmetric_rate=100.0 * sum(n > 1 for n in numbers) / len(numbers) if numbers else math.nan,
        n_analysed=len(numbers),
        n_failed=len(results) - len(numbers),
        spacegroup_counts=sg_counts,
        crystal_system_counts=cs_counts,
        protocol=protocol,
    )


# ---- suite adapter ------------------------------------------------------------------------------------
class SymmetryMetric:
    """Space group of each sample and the fraction above P1 (spglib)."""

    name = "symmetry"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """``symmetric_rate`` over the samples spglib could analyse."""
        idx, crystals = parsed(ctx)
        report = symmetry_report(crystals, workers=ctx.workers, time_limit_s=ctx.time_limit_s)
        ctx.note_aborted({i: r.reason for i, r in zip(idx, report.crystals, strict=True) if r.aborted})
        details = {k: v for k, v in report.summary().items() if k not in ("symmetric_rate", "protocol")}
        return MetricResult(
            summary={"symmetric_rate": report.symmetric_rate},
            columns=table_columns(ctx, idx, report.per_crystal()),
            details=details,
            protocol=report.protocol,
        )
