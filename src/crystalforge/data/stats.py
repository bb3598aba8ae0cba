"""``compute_dataset_stats``: the only code that reads a dataset to get its statistics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from crystalforge.core.crystal import AVOGADRO, Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MAX_Z, element_table
from crystalforge.core.lattice import lattice_to_code, lattice_to_params
from crystalforge.io.archive import CrystalArrays


def compute_dataset_stats(crystals: CrystalArrays | Iterable[Crystal]) -> DatasetStats:
    """Statistics of a set of crystals (vectorised over a ``CrystalArrays`` when given one)."""
    arrays = crystals if isinstance(crystals, CrystalArrays) else CrystalArrays.from_crystals(list(crystals))
    if len(arrays) == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    z = arrays.atomic_numbers.astype(np.int64)
    n = arrays.num_atoms.astype(np.int64)
    owner = np.repeat(np.arange(len(n)), n)
    volume = np.abs(np.linalg.det(arrays.lattice))
    mass = np.bincount(owner, weights=element_table().masses[z], minlength=len(n))
    density = mass / AVOGADRO / (volume * 1e-24)
    vpa = volume / n
    lengths, angles = lattice_to_params(arrays.lattice)
    log_lengths = np.log(lengths)
    code = lattice_to_code(arrays.lattice.astype(np.float64), n)
    pairs = np.unique(np.stack([owner, z], 1), axis=0)
    distinct = np.bincount(pairs[:, 0], minlength=len(n))

    def triple(x: np.ndarray) -> tuple[float, float, float]:
        return (float(x[0]), float(x[1]), float(x[2]))

    properties = _finite_properties(arrays)

    return DatasetStats(
        num_structures=len(n),
        num_atoms_hist=tuple(int(c) for c in np.bincount(n)),
        density_mean=float(density.mean()),
        density_std=float(density.std()),
        volume_per_atom_mean=float(vpa.mean()),
        volume_per_atom_std=float(vpa.std()),
        log_lengths_mean=triple(log_lengths.mean(0)),
        log_lengths_std=triple(log_lengths.std(0)),
        angles_mean=triple(angles.mean(0)),
        angles_std=triple(angles.std(0)),
        element_counts=tuple(int(c) for c in np.bincount(z, minlength=MAX_Z + 1)),
        element_structures=tuple(int(c) for c in np.bincount(pairs[:, 1], minlength=MAX_Z + 1)),
        num_elements_hist=tuple(int(c) for c in np.bincount(distinct)),
        lattice_code_mean=tuple(float(x) for x in code.mean(0)),
        lattice_code_std=tuple(float(x) for x in code.std(0)),
        lattice_code_min=tuple(float(x) for x in code.min(0)),
        lattice_code_max=tuple(float(x) for x in code.max(0)),
        property_moments={k: (float(v.mean()), float(v.std()), len(v)) for k, v in properties.items()},
        property_quantiles={
            k: tuple(float(q) for q in np.percentile(v, np.arange(101))) for k, v in properties.items()
        },
    )


def _finite_properties(arrays: CrystalArrays) -> dict[str, np.ndarray]:
    """Each property's finite values (float64), by sorted name; a property with none is left out."""
    out = {}
    for name, values in sorted(arrays.properties.items()):
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            out[name] = v
    return out
