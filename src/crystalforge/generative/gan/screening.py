"""Composition screening: SMACT charge neutrality with the Pauling electronegativity test.

MatGAN screened its generated formulas for charge neutrality and electronegativity balance with
SMACT (Davies et al. 2019). Here the verdict is smact's own ``smact_validity`` (smact >= 3,
the ``evaluation`` extra): a composition passes when one oxidation state per element (smact's
default ICSD-derived list) makes the reduced formula neutral and every cation is less
electronegative than every anion (Pauling), or when it is a single element or all its elements are
metals (``include_alloys``, the CDVAE convention). Verdicts are cached per reduced formula.

The evaluation protocol's composition validity (``crystalforge.evaluation``) applies the same rule
with the 2014 oxidation-state list that CDVAE pinned; ``benchmarks/matgan_stats.py`` reports both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import lru_cache

from crystalforge.core.elements import z_to_symbol
from crystalforge.core.extras import require

__all__ = ["Formula", "formula_text", "is_charge_neutral", "reduced_formula"]

Formula = tuple[tuple[int, int], ...]
"""A reduced formula: ``((Z, count), ...)`` in increasing Z with the counts divided by their gcd."""


def reduced_formula(composition: Mapping[int, int] | Iterable[int]) -> Formula:
    """The reduced formula of ``{Z: count}`` or of a list of atomic numbers (one per atom).

    Raises ``ValueError`` for an empty composition or a negative count.
    """
    if isinstance(composition, Mapping):
        counts = {int(z): int(c) for z, c in composition.items() if int(c) != 0}
    else:
        counts = {}
        for z in composition:
            counts[int(z)] = counts.get(int(z), 0) + 1
    if any(c < 0 for c in counts.values()):
        raise ValueError(f"composition {dict(counts)} has a negative count")
    if not counts:
        raise ValueError("empty composition (no atoms)")
    g = math.gcd(*counts.values())
    return tuple((z, c // g) for z, c in sorted(counts.items()))


def formula_text(formula: Formula) -> str:
    """``((11, 1), (17, 1))`` → ``"NaCl"`` (in the order given)."""
    return "".join(f"{z_to_symbol(z)}{c if c != 1 else ''}" for z, c in formula)


def is_charge_neutral(composition: Mapping[int, int] | Iterable[int]) -> bool:
    """SMACT's verdict (charge neutral + Pauling test, alloys pass) on a composition's reduced formula.

    Raises ``MissingDependencyError`` naming the ``evaluation`` extra when smact is not installed.
    """
    return _verdict(reduced_formula(composition))


@lru_cache(maxsize=1 << 16)
def _verdict(formula: Formula) -> bool:
    smact_screening = require("smact.screening", "MatGAN composition screening (charge neutrality)")
    try:
        return bool(smact_screening.smact_validity(formula_text(formula), use_pauling_test=True, include_alloys=True))
    except (KeyError, NameError, ValueError, TypeError):
        return False  # smact has no data for one of the elements: no verdict it can back
