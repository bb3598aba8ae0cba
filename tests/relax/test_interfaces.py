"""relax_candidates: relaxes the candidates that hold a crystal and attaches the result as stage "relax"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.relax import RelaxResult, relax_candidates


class FakeRelaxer:
    """Energy per atom = -Z of the first atom; records each call."""

    def __init__(self, *, drop_one: bool = False) -> None:
        self.calls: list[list[str | None]] = []
        self.drop_one = drop_one

    @property
    def name(self) -> str:
        return "fake-1"

    @property
    def settings(self) -> dict[str, Any]:
        return {}

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        self.calls.append([c.material_id for c in crystals])
        out = [
            RelaxResult(c, -float(c.atomic_numbers[0]) * c.num_atoms, -float(c.atomic_numbers[0]), converged=True)
            for c in crystals
        ]
        return out[:-1] if self.drop_one else out


def crystal(z: int, name: str) -> Crystal:
    return Crystal([z], [[0, 0, 0]], np.eye(3) * 3.0, material_id=name)


def test_relaxes_crystals_attaches_stage_and_passes_failures_through() -> None:
    rows = [
        Candidate.of(crystal(3, "li")),
        Candidate.failure("gen/2.cif", "malformed CIF", material_id="two"),
        Candidate.of(crystal(11, "na")),
    ]
    relaxer = FakeRelaxer()
    out = relax_candidates(relaxer, rows)
    assert relaxer.calls == [["li", "na"]]  # one call with every structure
    assert len(out) == 3 and out[1] is rows[1]
    assert out[0].stages["relax"].energy_per_atom == -3.0 and out[2].stages["relax"].energy_per_atom == -11.0
    assert out[0].crystal is rows[0].crystal and not rows[0].stages  # the input candidates are unchanged


def test_no_crystal_means_no_call_and_a_miscount_is_an_error() -> None:
    relaxer = FakeRelaxer()
    failed = [Candidate.failure("x", "bad")]
    assert relax_candidates(relaxer, failed) == failed and relaxer.calls == []
    with pytest.raises(RuntimeError, match="1 results for 2 structures"):
        relax_candidates(FakeRelaxer(drop_one=True), [Candidate.of(crystal(3, "a")), Candidate.of(crystal(4, "b"))])
