"""The ion-substitution table of Hautier et al. (2011), read from pymatgen, and oxidation-state guesses.

*Data mined ionic substitutions for the discovery of new compounds* (Inorg. Chem. 50, 656) fitted
a weight ``λ(a, b)`` to every pair of ionic species seen substituting for each other in the ICSD;
the probability that ``a`` takes the place of ``b`` is ``exp(λ(a, b)) / p(b)``. pymatgen ships the
fitted table inside its wheel (``SubstitutionProbability``, ``lambda.json``: offline). Here it
becomes one array ``weights[new, old] = exp(λ(new, old))`` over the species observed in the table
(pairs never observed get 0, not pymatgen's ``exp(α)`` floor, so only substitutions seen in real
crystals are drawn); drawing a substitute for ``old`` from column ``old`` is drawing from
pymatgen's conditional probability, whose normaliser ``p(old)`` does not depend on ``new``.

Each species also gets a radius for the volume rule: its Shannon ionic radius (pymatgen's
``Species.ionic_radius``), else the element's average ionic radius, else its atomic radius
(``core.elements``), else 1.5 Å.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from crystalforge.core.elements import MAX_Z, element_table, z_to_symbol

__all__ = ["SubstitutionTable", "guess_species", "substitution_table"]

DEFAULT_RADIUS = 1.5
"""Å, for a species without any tabulated radius."""


@dataclass(frozen=True)
class SubstitutionTable:
    """Species ``(Z, oxidation state)``, substitution weights between them and their radii.

    Attributes:
        species: ``S`` species ``(Z, oxidation state)``, sorted.
        weights: ``[S, S]`` ``exp(λ(new, old))`` for observed pairs, 0 elsewhere (column = old).
        radius: ``[S]`` Å, the radius of each species (see the module docstring).

    """

    species: tuple[tuple[int, int], ...]
    weights: np.ndarray
    radius: np.ndarray

    def index(self, species: tuple[int, int]) -> int | None:
        """Row of ``species`` in the table, or None when the table does not know it."""
        return _index_of(self.species).get(species)

    @property
    def atomic_numbers(self) -> np.ndarray:
        """``[S]`` atomic number of each species."""
        return np.array([z for z, _ in self.species], dtype=np.int64)

    @property
    def charges(self) -> np.ndarray:
        """``[S]`` oxidation state of each species."""
        return np.array([q for _, q in self.species], dtype=np.int64)


@lru_cache(maxsize=4)
def _index_of(species: tuple[tuple[int, int], ...]) -> dict[tuple[int, int], int]:
    return {s: i for i, s in enumerate(species)}


def _radius(symbol: str, charge: int) -> float:
    from pymatgen.core import Element, Species

    with warnings.catch_warnings():  # pymatgen warns for every species without a Shannon radius
        warnings.simplefilter("ignore")
        ionic = Species(symbol, charge).ionic_radius
        if ionic:
            return float(ionic)
        average = float(Element(symbol).average_ionic_radius)
    if average > 0:
        return average
    atomic = float(element_table().atomic_radius[Element(symbol).Z])
    return atomic if math.isfinite(atomic) else DEFAULT_RADIUS


@lru_cache(maxsize=1)
def substitution_table() -> SubstitutionTable:
    """The table (built once per process: about a second, mostly pymatgen parsing its JSON)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    table = SubstitutionProbability()  # type: ignore[no-untyped-call]  # pymatgen leaves it untyped
    pairs: Mapping[Any, float] = table.as_dict()["init_args"]["lambda_table"]  # type: ignore[no-untyped-call]
    keyed: dict[tuple[tuple[int, int], tuple[int, int]], float] = {}
    for pair, value in pairs.items():  # {frozenset of one or two pymatgen Species: λ}
        members = [(int(s.Z), int(s.oxi_state)) for s in pair if float(s.oxi_state).is_integer()]
        if len(members) != len(pair) or not all(1 <= z <= MAX_Z for z, _ in members):
            continue
        a, b = members if len(members) == 2 else (members[0], members[0])
        keyed[(a, b)] = keyed[(b, a)] = float(value)
    species = tuple(sorted({s for pair in keyed for s in pair}))
    index = {s: i for i, s in enumerate(species)}
    weights = np.zeros((len(species), len(species)))
    for (a, b), value in keyed.items():
        weights[index[a], index[b]] = math.exp(value)
    radius = np.array([_radius(z_to_symbol(z), q) for z, q in species])
    weights.setflags(write=False)
    radius.setflags(write=False)
    return SubstitutionTable(species, weights, radius)


def guess_species(elements: Sequence[int], counts: Sequence[int]) -> tuple[int, ...] | None:
    """Integer oxidation states of ``elements`` (with ``counts``) that the table knows, or None.

    pymatgen's ``Composition.oxi_state_guesses`` (ICSD-frequency ranked) on the reduced formula; the
    first guess with integer states whose species are all in the table wins. None for compositions
    without one (most intermetallics: the table holds ions only).
    """
    g = math.gcd(*(int(c) for c in counts))
    return _guess(tuple(int(z) for z in elements), tuple(int(c) // g for c in counts))


@lru_cache(maxsize=65536)
def _guess(elements: tuple[int, ...], counts: tuple[int, ...]) -> tuple[int, ...] | None:
    from pymatgen.core import Composition

    table = substitution_table()
    symbols = [z_to_symbol(z) for z in elements]
    try:
        guesses = Composition(dict(zip(symbols, counts, strict=True))).oxi_state_guesses(max_sites=-1)
    except ValueError:
        return None
    for guess in guesses:
        states = [float(guess[s]) for s in symbols]
        if all(q.is_integer() for q in states):
            charges = tuple(int(q) for q in states)
            if all(table.index((z, q)) is not None for z, q in zip(elements, charges, strict=True)):
                return charges
    return None
