"""Space-group numbers and crystal systems: the table both conditioning and evaluation read."""

from __future__ import annotations

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
"""The seven crystal systems, in the order of the space-group numbers they cover."""

CATEGORIES = {"space_group": 230, "crystal_system": len(CRYSTAL_SYSTEMS)}
"""Categorical conditions a model can embed, and their number of classes."""

SPACE_GROUP_COLUMNS = ("space_group", "spacegroup.number")
"""Property names a space-group number is read from, in order."""

_LAST_NUMBER = (2, 15, 74, 142, 167, 194, 230)
"""The highest international space-group number of each crystal system."""


def crystal_system_index(number: int) -> int:
    """Index into ``CRYSTAL_SYSTEMS`` of an international space-group number (1..230)."""
    if not 1 <= number <= 230:
        raise ValueError(f"space group number must be in 1..230, got {number}")
    return next(i for i, last in enumerate(_LAST_NUMBER) if number <= last)


def crystal_system(number: int) -> str:
    """Crystal system of an international space-group number (1..230)."""
    return CRYSTAL_SYSTEMS[crystal_system_index(number)]


def space_group_boundaries() -> tuple[int, ...]:
    """The last space-group number of each crystal system (for vectorised lookups)."""
    return _LAST_NUMBER
