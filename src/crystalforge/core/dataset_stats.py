"""``DatasetStats``: the dataset statistics models take as a value (never by loading data).

Computed by ``crystalforge.data.stats.compute_dataset_stats``; stored in checkpoints as plain
data via ``to_dict``/``from_dict``.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DatasetStats:
    """Summary statistics of a set of crystals.

    Lattice moments are over the cells as stored (Niggli-reduced for the benchmarks' default
    preprocessing). ``element_counts[z]`` counts atoms of element z; ``element_structures[z]``
    counts structures containing z. ``lattice_code_mean``/``lattice_code_std`` are the moments of
    ``core.lattice.lattice_to_code`` (size-free log-lengths and angle codes) used to standardise the
    lattice for generative processes; statistics saved before they existed load with ``None`` and
    ``lattice_code_moments`` then estimates them from the other moments. ``lattice_code_min``/
    ``lattice_code_max`` bound the code over the data (None when saved before they existed).
    """

    num_structures: int
    num_atoms_hist: tuple[int, ...]  # [max_atoms + 1] counts of structures with n atoms
    density_mean: float  # g/cm³
    density_std: float
    volume_per_atom_mean: float  # Å³/atom
    volume_per_atom_std: float
    log_lengths_mean: tuple[float, float, float]  # ln(Å)
    log_lengths_std: tuple[float, float, float]
    angles_mean: tuple[float, float, float]  # degrees
    angles_std: tuple[float, float, float]
    element_counts: tuple[int, ...]  # [119]
    element_structures: tuple[int, ...]  # [119]
    num_elements_hist: tuple[int, ...]  # [k + 1] structures with k distinct elements
    lattice_code_mean: tuple[float, ...] | None = None  # [6] mean of core.lattice.lattice_to_code
    lattice_code_std: tuple[float, ...] | None = None  # [6] its standard deviation (population)
    lattice_code_min: tuple[float, ...] | None = None  # [6] smallest value of each code entry
    lattice_code_max: tuple[float, ...] | None = None  # [6] largest value of each code entry
    # {property: (mean, std, count)} of every numeric property over the crystals that have it
    property_moments: dict[str, tuple[float, float, int]] | None = None
    # {property: [101] percentiles 0, 1, ..., 100} of every numeric property (None: saved before they existed)
    property_quantiles: dict[str, tuple[float, ...]] | None = None

    @property
    def max_atoms(self) -> int:
        """Largest number of atoms seen."""
        return len(self.num_atoms_hist) - 1

    @property
    def elements(self) -> list[int]:
        """Atomic numbers that occur, sorted."""
        return [z for z, c in enumerate(self.element_counts) if c > 0]

    def num_atoms_distribution(self) -> np.ndarray:
        """Probabilities ``[max_atoms + 1]`` of each number of atoms."""
        hist = np.asarray(self.num_atoms_hist, dtype=np.float64)
        probs: np.ndarray = hist / hist.sum()  # numpy's stubs type ``sum()`` as Any
        return probs

    def sample_num_atoms(self, n: int, *, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` atom counts from the empirical distribution."""
        p = self.num_atoms_distribution()
        return rng.choice(len(p), size=n, p=p).astype(np.int64)

    def lattice_code_moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std ``([6], [6])`` of the lattice code.

        The stored values when present; otherwise a first-order estimate from the older fields:
        ``ln(a/s)`` has mean ``E[ln a] − E[ln N]/3`` and std ``sqrt(std(ln a)² + var(ln N)/9)``
        (correlation neglected), the angle code ``φ(θ) = ln tan(θ/2)`` has mean ``φ(E[θ])`` and std
        ``std(θ)/sin(E[θ])`` (delta method, since ``φ'(θ) = 1/sin θ``).
        """
        if self.lattice_code_mean is not None and self.lattice_code_std is not None:
            return tuple(self.lattice_code_mean), tuple(self.lattice_code_std)
        p = self.num_atoms_distribution()
        n = np.arange(len(p), dtype=np.float64)
        log_n = np.log(np.where(n > 0, n, 1.0))
        mean_log_n = float((p * log_n).sum())
        var_log_n = float((p * (log_n - mean_log_n) ** 2).sum())
        theta = np.deg2rad(np.asarray(self.angles_mean, dtype=np.float64))
        theta_std = np.deg2rad(np.asarray(self.angles_std, dtype=np.float64))
        mean = [m - mean_log_n / 3.0 for m in self.log_lengths_mean]
        mean += np.log(np.tan(theta / 2.0)).tolist()
        std = [float(np.sqrt(s**2 + var_log_n / 9.0)) for s in self.log_lengths_std]
        std += (theta_std / np.sin(theta)).tolist()
        return tuple(float(x) for x in mean), tuple(float(x) for x in std)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStats:
        """Inverse of ``to_dict``; unknown keys and missing keys without a default are errors."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if not required <= set(data) <= names:
            raise ValueError(
                f"DatasetStats keys differ: missing {sorted(required - set(data))}, unknown {sorted(set(data) - names)}"
            )
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        for key in ("property_moments", "property_quantiles"):  # {name: list} → {name: tuple}
            if values.get(key) is not None:
                values[key] = {k: tuple(v) for k, v in values[key].items()}
        return cls(**values)
