"""Resource limits reject what would exhaust a machine and pass every benchmark structure."""

from __future__ import annotations

import numpy as np
import pytest

from crystalforge.core import Crystal, CrystalError
from crystalforge.core.limits import MAX_ATOMS_ENV, StructureLimits, check_limits


def _cubic(n: int, a: float) -> Crystal:
    rng = np.random.default_rng(0)
    return Crystal(np.full(n, 6), rng.random((n, 3)), np.eye(3) * a, material_id="x-1")


def test_ordinary_structure_passes() -> None:
    c = _cubic(8, 4.0)
    assert check_limits(c) is c


@pytest.mark.parametrize(
    ("crystal", "words"),
    [
        (_cubic(1001, 30.0), "1001 atoms exceed"),
        (_cubic(1, 2000.0), "lattice vector"),
        (_cubic(64, 1.0), "below 0.5"),
        (_cubic(1, 100.0), "exceeds 100000"),
    ],
)
def test_over_limit_names_record_and_problem(crystal: Crystal, words: str) -> None:
    with pytest.raises(CrystalError, match=words) as info:
        check_limits(crystal)
    assert info.value.source == "x-1"


def test_env_raises_atom_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_ATOMS_ENV, "2000")
    big = _cubic(1500, 40.0)
    assert check_limits(big) is big
    monkeypatch.setenv(MAX_ATOMS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_ATOMS_ENV):
        StructureLimits.from_env()


def test_benchmark_structures_are_within_limits() -> None:
    from crystalforge.testing import tiny_crystals

    for c in tiny_crystals():
        assert StructureLimits().problem(c) is None


def test_flat_cell_is_rejected_even_with_room_per_atom() -> None:
    flat = Crystal([1], [[0, 0, 0]], np.diag([100.0, 100.0, 1e-4]), material_id="flat")
    assert flat.volume / flat.num_atoms >= 0.5  # passes the density limit
    with pytest.raises(CrystalError, match="thick"):
        check_limits(flat)
    sheared = np.array([[3.0, 0, 0], [2.9, 0.4, 0], [0, 0, 3.0]])  # 0.4 Å between planes of the a-b face
    assert "thick" in (StructureLimits().problem(Crystal([6], [[0, 0, 0]], sheared)) or "")


def test_count_problem_matches_problem() -> None:
    limits = StructureLimits(max_atoms=4)
    assert limits.count_problem(4) is None
    assert limits.count_problem(5) == limits.problem(_cubic(5, 10.0)) is not None
