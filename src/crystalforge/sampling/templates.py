"""Sampling templates: ``CrystalBatch``es whose generated fields are placeholders.

A template carries what the sampler must know about shapes and fixed fields: ``num_atoms`` always,
``atomic_numbers`` for CSP (the composition, kept by ``FixedField``) or ``MASK_Z`` for DNG, and
property conditions. Placeholder coordinates are zeros and placeholder lattices the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MASK_Z, symbol_to_z


def parse_formula(formula: str) -> list[int]:
    """Atomic numbers of a formula such as ``"SrTiO3"`` or ``"Li2 Fe P O4"`` (one per atom, in order).

    The formula is taken literally: ``"SrTiO3"`` is a 5-atom cell; write ``"Sr2Ti2O6"`` for 10 atoms.
    """
    from pymatgen.core import Composition

    try:
        comp = Composition(formula)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises several types
        raise ValueError(f"cannot read formula {formula!r}: {exc}") from None
    numbers: list[int] = []
    for element, amount in comp.items():
        if abs(amount - round(amount)) > 1e-6:
            raise ValueError(f"formula {formula!r}: {element} has a non-integer count {amount}")
        try:
            z = symbol_to_z(element.symbol)
        except KeyError:
            raise ValueError(f"cannot read formula {formula!r}: unknown element {element.symbol!r}") from None
        numbers.extend([z] * round(amount))
    if not numbers:
        raise ValueError(f"formula {formula!r} has no atoms")
    return numbers


def template_from_compositions(
    compositions: Sequence[Sequence[int]],
    *,
    dtype: torch.dtype = torch.float32,
    properties: Mapping[str, Sequence[float]] | None = None,
) -> CrystalBatch:
    """CSP template: one crystal per composition (a list of Z, one per atom)."""
    num_atoms = torch.tensor([len(c) for c in compositions], dtype=torch.int64)
    if (num_atoms < 1).any():
        raise ValueError("every composition needs at least one atom")
    z = torch.tensor([v for c in compositions for v in c], dtype=torch.int64)
    return _template(z, num_atoms, dtype, properties)


def template_from_num_atoms(
    num_atoms: Sequence[int] | np.ndarray,
    *,
    dtype: torch.dtype = torch.float32,
    properties: Mapping[str, Sequence[float]] | None = None,
) -> CrystalBatch:
    """DNG template: atom counts given, every type masked."""
    n = torch.as_tensor(np.asarray(num_atoms), dtype=torch.int64)
    if (n < 1).any():
        raise ValueError("num_atoms must be >= 1")
    z = torch.full((int(n.sum()),), MASK_Z, dtype=torch.int64)
    return _template(z, n, dtype, properties)


def template_from_structures(
    crystals: Sequence[Crystal],
    *,
    dtype: torch.dtype = torch.float32,
    properties: Mapping[str, Sequence[float]] | None = None,
) -> CrystalBatch:
    """Refinement template: the crystals themselves (types, coordinates, cell), with ``properties`` as conditions."""
    batch = CrystalBatch.collate(crystals, dtype=dtype)
    props, mask = _conditions(properties, batch.num_crystals, dtype)
    return batch.replace(properties=props, condition_mask=mask)


def _conditions(
    properties: Mapping[str, Sequence[float]] | None, b: int, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-crystal condition values ``[b]`` and their masks (NaN: unconditioned)."""
    props = {k: torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype) for k, v in (properties or {}).items()}
    for key, value in props.items():
        if value.shape != (b,):
            raise ValueError(f"property {key!r} needs {b} values, got {tuple(value.shape)}")
    return props, {k: ~torch.isnan(v) for k, v in props.items()}


def _template(
    z: torch.Tensor, num_atoms: torch.Tensor, dtype: torch.dtype, properties: Mapping[str, Sequence[float]] | None
) -> CrystalBatch:
    b = num_atoms.numel()
    props, mask = _conditions(properties, b, dtype)
    return CrystalBatch(
        atomic_numbers=z,
        frac_coords=torch.zeros(z.numel(), 3, dtype=dtype),
        lattice=torch.eye(3, dtype=dtype).expand(b, 3, 3).clone(),
        num_atoms=num_atoms,
        properties=props,
        condition_mask=mask,
    )
