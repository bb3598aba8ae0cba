"""The lower convex hull's energy at one composition, as a linear program (any number of elements).

A phase diagram's hull energy at composition ``c`` is the lowest energy per atom of any mixture of
reference entries with the same atomic fractions: minimise ``Σ x_i e_i`` over ``x ≥ 0`` with
``Σ x_i f_i = c`` (``f_i``: entry ``i``'s atomic fractions, ``e_i``: its energy per atom; the
fractions summing to one make ``Σ x_i = 1``). pymatgen's ``PhaseDiagram`` gets the same number from
the facets of a convex hull in ``n - 1`` dimensions, whose cost grows steeply with the number of
elements ``n``: a generated cell of 8 to 14 elements kept it busy for tens of minutes. The linear
program (SciPy's HiGHS) takes milliseconds at any ``n``.
"""

from __future__ import annotations

import numpy as np

LP_FROM_ELEMENTS = 5
"""``ReferenceHull`` uses the linear program for chemical systems of this many elements or more."""


def lower_hull_energy(fractions: np.ndarray, energies: np.ndarray, target: np.ndarray) -> float:
    """Hull energy per atom at ``target`` (``[n_elements]`` atomic fractions).

    Args:
        fractions: ``[n_entries, n_elements]`` atomic fractions of the reference entries.
        energies: ``[n_entries]`` energies per atom, in the hull's treatment.
        target: the composition's atomic fractions, in the same element order.

    Raises:
        ValueError: when no mixture of the entries has the target composition (an element's
            reference is missing) or the solver fails.

    """
    from scipy.optimize import linprog

    result = linprog(energies, A_eq=fractions.T, b_eq=target, bounds=(0, None), method="highs")
    if result.status != 0:
        raise ValueError(f"no mixture of the hull's entries has this composition ({result.message})")
    return float(result.fun)
