"""The linear program gives the phase diagram's hull energy, also where the diagram is out of reach."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from pymatgen.core.composition import Composition

from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.hull_lp import LP_FROM_ELEMENTS


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.load()


def test_the_linear_program_equals_the_phase_diagram_on_the_shipped_hull(hull):
    """Every ternary and quaternary system of six common elements, at random compositions and at entries."""
    rng = random.Random(0)
    elements = ["Li", "O", "Fe", "Mn", "P", "S"]
    compared = 0
    for size in (2, 3, 4):
        for system in itertools.combinations(elements, size):
            diagram = hull.phase_diagram(system)
            points = [{e: rng.randint(1, 6) for e in system} for _ in range(4)]
            points += [{e.symbol: n for e, n in entry.composition.items()} for entry in diagram.stable_entries]
            for composition in points:
                if len(composition) < 2:
                    continue
                expected = diagram.get_hull_energy_per_atom(Composition(composition))
                found = hull.lp_hull_energy_per_atom(composition)
                assert found == pytest.approx(expected, abs=1e-6), (system, composition)
                compared += 1
    assert compared > 100


def test_many_element_cells_use_the_linear_program(hull, monkeypatch):
    """A 10-element composition (seen in generated cells) never builds a phase diagram."""
    composition = {e: 1 for e in ["Li", "Na", "K", "Mg", "Ca", "Fe", "Mn", "O", "S", "P"]}
    elemental = np.mean([hull.hull_energy_per_atom({e: 1}) for e in composition])  # the elements' mixture
    monkeypatch.setattr(ReferenceHull, "phase_diagram", lambda self, els: pytest.fail("built a phase diagram"))
    energy = hull.hull_energy_per_atom(composition)
    assert len(composition) >= LP_FROM_ELEMENTS
    assert energy < elemental - 0.5  # an oxide-sulfide-phosphate mixture lies far below the elements


def test_a_composition_without_a_terminal_is_refused(hull):
    assert "Og" not in hull.elements
    with pytest.raises(ValueError, match="no elemental reference for Og"):
        hull.hull_energy_per_atom({"Li": 1, "Na": 1, "K": 1, "Mg": 1, "Og": 1})
