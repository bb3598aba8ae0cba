"""Candidate: one type for "a crystal or why there is none"; CandidateTable views."""

from __future__ import annotations

import pytest

from crystalforge.core.candidate import Candidate, CandidateTable
from crystalforge.core.extras import MissingDependencyError, require
from crystalforge.testing import tiny_crystals


def test_candidate_holds_a_crystal_or_an_error():
    c = tiny_crystals()[1]
    ok = Candidate.of(c, "x.cif")
    assert ok.ok and ok.ident == c.material_id and ok.source == "x.cif"
    bad = Candidate.failure("y.cif:3", "lattice is degenerate", material_id="mp-1")
    assert not bad.ok and bad.ident == "mp-1" and str(bad) == "y.cif:3: lattice is degenerate"
    assert Candidate.failure("z.cif", "empty").ident == "z.cif"  # no id: the source names it
    with pytest.raises(ValueError, match="either a crystal or an error"):
        Candidate("both", crystal=c, error="no")
    with pytest.raises(ValueError, match="either a crystal or an error"):
        Candidate("neither")
    failed = ok.with_stage("relax", {"energy": -1.0}).failed("relaxation exploded")
    assert failed.crystal is None and failed.ident == c.material_id and failed.stages == {"relax": {"energy": -1.0}}


def test_candidate_table_views():
    cs = tiny_crystals()[:3]
    table = CandidateTable([Candidate.of(cs[0]), Candidate.failure("f", "bad"), Candidate.of(cs[2]).with_stage("s", 1)])
    assert len(table) == 3 and table.crystals == [cs[0], cs[2]]
    assert [c.source for c in table.failures] == ["f"]
    assert table.stage("s") == [None, None, 1]
    assert isinstance(table[1:], CandidateTable) and len(table + CandidateTable([Candidate.failure("g", "x")])) == 4


def test_require_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lightning", None)
    with pytest.raises(MissingDependencyError, match=r"training needs .*lightning.*crystalforge\[train\]"):
        require("lightning", "training")
    assert require("json", "reading").dumps([]) == "[]"
