"""``DatasetStats``: the dataset statistics models take as a value (never by loading data).

Computed by ``crystalforge.data.stats.compute_dataset_stats``; stored in checkpoints as plain
data via ``to_dict``/``from_dict``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DatasetStats:
    """Summary statistics of a set of crystals.

    Lattice moments are over the cells as stored (Niggli-reduced for the benchmarks' default
    preprocessing). ``element_counts[z]`` counts atoms of element z; ``element_structures[z]``
    counts structures containing z.
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
        return hist / hist.sum()

    def sample_num_atoms(self, n: int, *, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` atom counts from the empirical distribution."""
        p = self.num_atoms_distribution()
        return rng.choice(len(p), size=n, p=p).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStats:
        """Inverse of ``to_dict``; unknown or missing keys are errors."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(
                f"DatasetStats keys differ: missing {sorted(names - set(data))}, unknown {sorted(set(data) - names)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
