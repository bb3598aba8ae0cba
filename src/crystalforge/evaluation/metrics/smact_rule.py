"""CDVAE's SMACT composition rule, with smact 2.2.1's behaviour restorable (``reproduce``).

The counts are reduced by their gcd; the formula is valid if it has one element, if all its
elements are metals (smact's list), or if one oxidation state per element makes the reduced
formula charge neutral and passes the Pauling test (every cation strictly less electronegative
than every anion). Element data (oxidation-state lists, Pauling electronegativities, the metal
list) come from the installed ``smact`` package, imported lazily. ``metrics.validity`` wraps
the verdicts into ``ValidityResult``s (``composition_validity``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal

from crystalforge.core.elements import MAX_Z, symbol_to_z, z_to_symbol

__all__ = [
    "SMACT_221_IR_LOWEST_STATE",
    "SMACT_221_ZR_ELECTRONEGATIVITY",
    "OxidationStateList",
    "reduced_formula",
    "smact_verdict",
]

OxidationStateList = Literal["smact14", "icsd24"]
"""``smact14``: the 2014 SMACT list CDVAE used (smact < 3 default); ``icsd24``: the smact >= 3 default."""

SMACT_221_ZR_ELECTRONEGATIVITY = 0.33
"""Pauling electronegativity of Zr in smact 2.2.1's element table (a typo for 1.33)."""

SMACT_221_IR_LOWEST_STATE = -2
"""Lowest oxidation state of Ir in smact 2.2.1's smact14 list (-3 in later releases)."""


@dataclass(frozen=True)
class _ElementData:
    symbol: str
    states: tuple[int, ...]  # allowed oxidation states, increasing
    electronegativity: float | None  # Pauling; None where smact has none


def reduced_formula(composition: Mapping[str, int] | Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    """((Z, count), ...) in increasing Z with the counts divided by their gcd."""
    counts: dict[int, int] = {}
    for key, value in composition.items():
        if isinstance(key, str):
            try:
                z = symbol_to_z(key)
            except KeyError:
                raise ValueError(f"unknown element symbol {key!r}") from None
        else:
            z = int(key)
            if not 1 <= z <= MAX_Z:
                raise ValueError(f"atomic number {key} is outside 1..{MAX_Z}")
        if not (float(value) == int(value) and int(value) > 0):
            raise ValueError(f"count of {key!r} must be a positive integer, got {value!r}")
        counts[z] = counts.get(z, 0) + int(value)
    if not counts:
        raise ValueError("empty composition")
    g = math.gcd(*counts.values())
    return tuple((z, c // g) for z, c in sorted(counts.items()))


@lru_cache(maxsize=1 << 16)
def smact_verdict(
    formula: tuple[tuple[int, int], ...], list_name: str, pauling_test: bool, reproduce: bool
) -> tuple[bool, str]:
    """(valid, reason) of a reduced formula ``((Z, count), ...)`` under the SMACT rule (cached)."""
    symbols = [z_to_symbol(z) for z, _ in formula]
    counts = [c for _, c in formula]
    label = "".join(f"{s}{c if c > 1 else ''}" for s, c in zip(symbols, counts, strict=True))
    data = [_element_data(s, list_name, reproduce) for s in symbols]
    unknown = [s for s, d in zip(symbols, data, strict=True) if d is None]
    if unknown:
        return (False, f"{label}: smact has no data for {', '.join(unknown)}")
    if len(formula) == 1:
        return (True, f"{label}: single element")
    if all(s in _smact_metals() for s in symbols):
        return (True, f"{label}: all elements are metals")
    known = [d for d in data if d is not None]
    stateless = [d.symbol for d in known if not d.states]
    if stateless:
        return (False, f"{label}: no {list_name} oxidation states for {', '.join(stateless)}")
    enegs = [d.electronegativity for d in known]
    # The Pauling test sees only the sign of each state, so search sign patterns first, then the
    # states with those signs that balance the charge.
    for signs in itertools.product(*(sorted({_sign(s) for s in d.states}, reverse=True) for d in known)):
        if pauling_test and not _pauling_passes(signs, enegs, first_missing_decides=reproduce):
            continue
        options = [[s for s in d.states if _sign(s) == sign] for d, sign in zip(known, signs, strict=True)]
        states = _neutral_states(options, counts)
        if states is not None:
            test = " and passes the Pauling test" if pauling_test else ""
            return (True, f"{label}: charge neutral as {_species(symbols, states)}{test}")
    states = _neutral_states([list(d.states) for d in known], counts) if pauling_test else None
    if states is not None:
        return (
            False,
            f"{label}: charge-neutral assignments (e.g. {_species(symbols, states)}) all fail the Pauling test",
        )
    return (False, f"{label}: no combination of {list_name} oxidation states is charge neutral")


def _sign(state: int) -> int:
    return (state > 0) - (state < 0)


def _species(symbols: Sequence[str], states: Sequence[int]) -> str:
    return " ".join(f"{s}{st:+d}" for s, st in zip(symbols, states, strict=True))


def _pauling_passes(signs: Sequence[int], enegs: Sequence[float | None], *, first_missing_decides: bool) -> bool:
    """Every cation strictly less electronegative than every anion, pair by pair in element order.

    A pair with a missing electronegativity passes when its charges are opposite and fails
    otherwise. With ``first_missing_decides`` (smact 2.2.1 under CDVAE) the first such
    opposite-charge pair ends the test with a pass, before later pairs are looked at.
    """
    for a, b in itertools.combinations(range(len(signs)), 2):
        sa, sb, ea, eb = signs[a], signs[b], enegs[a], enegs[b]
        if ea is None or eb is None:
            if sa * sb >= 0:
                return False
            if first_missing_decides:
                return True
            continue
        if (sa > 0 > sb and ea >= eb) or (sa < 0 < sb and ea <= eb):
            return False
    return True


def _neutral_states(options: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[int, ...] | None:
    """One state per element from ``options`` with ``sum(count * state) == 0``, or None (depth-first)."""
    n = len(options)
    low = [0] * (n + 1)  # smallest / largest charge the elements k.. can still add
    high = [0] * (n + 1)
    for k in range(n - 1, -1, -1):
        low[k] = low[k + 1] + counts[k] * min(options[k])
        high[k] = high[k + 1] + counts[k] * max(options[k])
    dead: set[tuple[int, int]] = set()
    chosen: list[int] = []

    def search(k: int, charge: int) -> bool:
        if k == n:
            return charge == 0
        if not low[k] <= -charge <= high[k] or (k, charge) in dead:
            return False
        for state in options[k]:
            chosen.append(state)
            if search(k + 1, charge + counts[k] * state):
                return True
            chosen.pop()
        dead.add((k, charge))
        return False

    return tuple(chosen) if search(0, 0) else None


@cache
def _element_data(symbol: str, list_name: str, reproduce: bool) -> _ElementData | None:
    """The smact data of one element (with the 2.2.1 values if ``reproduce``), or None if smact lacks it."""
    import smact

    try:
        element = smact.Element(symbol)
    except (KeyError, NameError, ValueError):
        return None
    raw = element.oxidation_states_smact14 if list_name == "smact14" else element.oxidation_states_icsd24
    states = sorted({int(s) for s in raw or ()})
    eneg = element.pauling_eneg
    if reproduce and symbol == "Ir" and list_name == "smact14":
        states = sorted({SMACT_221_IR_LOWEST_STATE if s == -3 else s for s in states})
    if reproduce and symbol == "Zr":
        eneg = SMACT_221_ZR_ELECTRONEGATIVITY
    return _ElementData(symbol, tuple(states), None if eneg is None else float(eneg))


@lru_cache(maxsize=1)
def _smact_metals() -> frozenset[str]:
    import smact

    return frozenset(smact.metals)
