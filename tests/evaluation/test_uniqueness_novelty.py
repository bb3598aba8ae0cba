"""Uniqueness and novelty on hand-built cases, the shared reduction, and the pymatgen shortcut."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.metrics import structure_matcher
from crystalforge.evaluation.metrics.csp import csp_match
from crystalforge.evaluation.metrics.novelty import TrainingSet, novel_unique_rate, novelty
from crystalforge.evaluation.metrics.structure_matcher import MatcherSettings, StructureSet
from crystalforge.evaluation.metrics.uniqueness import uniqueness
from crystalforge.execution import ExecutorConfig
from tests.evaluation.structures import TINY, doubled, perturbed, strained, transformed, triclinic


# ---- uniqueness and novelty -------------------------------------------------------------------------
def test_uniqueness_of_duplicates() -> None:
    a, b = triclinic(), TINY["nacl_conv_8"]
    result = uniqueness([a, transformed(a, seed=1), b, perturbed(a, 1e-3, seed=2)])
    assert result.unique_rate == 50.0 and result.num_unique == 2
    assert result.unique.tolist() == [True, False, True, False]
    assert [s.representative for s in result.structures] == [0, 0, 2, 0]
    assert result.structures[1].reason == "duplicate of 0"


def test_uniqueness_none_entries_and_clusters() -> None:
    a = triclinic()
    far = doubled(a)  # same formula, different structure: its own cluster
    result = uniqueness([None, a, far, transformed(far, seed=3), None, transformed(a, seed=4, repeats=(1, 1, 2))])
    assert result.num_structures == 6 and result.num_unique == 2
    assert result.unique_rate == pytest.approx(100 * 2 / 6)
    assert [s.representative for s in result.structures] == [None, 1, 2, 2, None, 1]
    assert result.structures[0].reason == "no structure" and not result.structures[0].unique
    assert math.isnan(uniqueness([]).unique_rate)


def test_csp_tolerances_are_too_loose_for_uniqueness() -> None:
    """Why uniqueness defaults to pymatgen's tolerances: CSP's merge different structures."""
    a = triclinic()
    scrambled = [a.replace(frac_coords=np.random.default_rng(seed).random((5, 3))) for seed in range(8)]
    loose = uniqueness([a, *scrambled], ltol=0.3, stol=0.5, angle_tol=10)
    strict = uniqueness([a, *scrambled])
    assert loose.num_unique == 7 and strict.num_unique == 9
    # get_rms_dist, the CSP criterion (RMS < stol, not max < stol as in fit), is looser still
    result = csp_match({"triclinic_5": scrambled}, [a])
    assert all(p.matched for p in result.predictions)


def test_uniqueness_defaults_are_pymatgen_defaults() -> None:
    p = uniqueness([triclinic()]).protocol
    sm = StructureMatcher()
    assert (p["ltol"], p["stol"], p["angle_tol"]) == (sm.ltol, sm.stol, sm.angle_tol)


def test_novelty_against_training_set() -> None:
    a, b, c = triclinic(), TINY["nacl_conv_8"], TINY["si_fcc_2"]
    train = [a.replace(material_id="mp-A"), c.replace(material_id="mp-C")]
    generated = [transformed(a, seed=1), b, None, doubled(c)]
    result = novelty(generated, train)
    assert result.novel.tolist() == [False, True, False, True]
    assert result.novel_rate == 50.0
    assert result.structures[0].matched_id == "mp-A" and result.structures[0].matched_index == 0
    assert result.structures[2].reason == "no structure"
    assert result.structures[3].reason.startswith("novel: fits none of 1 training structures")
    # a prepared training set gives the same answer and keeps its reduced cells
    prepared = TrainingSet(train)
    assert novelty(generated, prepared).structures == result.structures
    assert prepared.num_reduced() == 2
    unique = uniqueness(generated)
    assert novel_unique_rate(unique, result) == 50.0


def test_fit_and_reduction_errors_count_as_no_match(monkeypatch: pytest.MonkeyPatch) -> None:
    from pymatgen.core import Structure

    a = triclinic()
    crystals = [a, transformed(a, seed=1)]

    def boom(self: StructureMatcher, *args: object, **kwargs: object) -> bool:
        raise RuntimeError("fit failed")

    with monkeypatch.context() as m:
        m.setattr(StructureMatcher, "fit", boom)
        u = uniqueness(crystals)
        n = novelty(crystals, [a.replace(material_id="mp-A")])
    assert u.unique.tolist() == [True, True] and u.num_errors == 1
    assert "1 comparison(s) raised" in u.structures[1].reason and "fit failed" in u.structures[1].reason
    assert n.novel.tolist() == [True, True] and n.num_errors == 2

    def no_primitive(self: Structure, *args: object, **kwargs: object) -> Structure:
        raise ValueError("no primitive cell")

    with monkeypatch.context() as m:
        m.setattr(Structure, "get_primitive_structure", no_primitive)
        u = uniqueness(crystals)
        n = novelty(crystals, [a.replace(material_id="mp-A")])
    assert u.unique.tolist() == [True, True] and "cell reduction failed" in u.structures[0].reason
    assert n.novel.tolist() == [True, True] and n.protocol["training_reduction_errors"] == 1


def test_training_set_rejects_none() -> None:
    with pytest.raises(ValueError, match="None"):
        TrainingSet([triclinic(), None])  # type: ignore[list-item]


# ---- the reduction shortcut and the process pool ----------------------------------------------------
def test_pre_reduction_matches_pymatgen() -> None:
    """Reducing once then ``fit(skip_structure_reduction=True)`` equals plain ``fit``."""
    crystals = [
        *TINY.values(),
        transformed(TINY["nacl_conv_8"], seed=1, repeats=(2, 1, 1)),
        strained(triclinic()),
        doubled(triclinic()),
    ]
    for c in crystals:
        mine = structure_matcher.reduce_cell(c, True)
        assert not isinstance(mine, str)
        theirs = StructureMatcher._get_reduced_structure(c.to_pymatgen(), True, True)
        np.testing.assert_array_equal(mine[0], [s.specie.Z for s in theirs])
        np.testing.assert_allclose(mine[1], theirs.frac_coords, atol=1e-12)
        np.testing.assert_allclose(mine[2], theirs.lattice.matrix, atol=1e-12)
    sm = MatcherSettings(0.2, 0.3, 5.0).matcher()
    pairs = [(crystals[i], crystals[j]) for i in range(len(crystals)) for j in range(len(crystals))]
    pairs += [(triclinic(), transformed(triclinic(), seed=9)), (TINY["nacl_conv_8"], crystals[5])]
    for x, y in pairs:
        rx, ry = structure_matcher.reduce_cell(x, True), structure_matcher.reduce_cell(y, True)
        fast = structure_matcher.fit(sm, structure_matcher.to_structure(rx), structure_matcher.to_structure(ry))  # type: ignore[arg-type]
        assert fast == sm.fit(x.to_pymatgen(), y.to_pymatgen())


def test_workers_and_executor_configs_give_identical_results() -> None:
    refs = [TINY["si_fcc_2"], TINY["nacl_conv_8"], triclinic(), TINY["edge_3"]]
    crystals = [
        *refs,
        perturbed(refs[1], 0.1, seed=2),
        transformed(refs[1], seed=3, repeats=(1, 2, 1)),
        strained(refs[2]),
        perturbed(refs[2], 0.15, seed=4),
        None,
        transformed(refs[2], seed=5),
    ]
    serial = uniqueness(crystals, workers=1).structures
    assert uniqueness(crystals, workers=2).structures == serial
    assert uniqueness(crystals, workers=ExecutorConfig(workers=2)).structures == serial
    train = [r.replace(material_id=f"mp-{i}") for i, r in enumerate(refs[:3])]
    serial_novelty = novelty(crystals, train, workers=1).structures
    assert novelty(crystals, train, workers=2).structures == serial_novelty
    assert novelty(crystals, train, workers=ExecutorConfig(workers=2)).structures == serial_novelty
    with pytest.raises(ValueError, match="workers"):
        uniqueness(crystals, workers=0)


def test_uniqueness_and_novelty_share_one_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = triclinic(), TINY["nacl_conv_8"]
    crystals = [a, transformed(a, seed=1), b, None]
    train = [a.replace(material_id="mp-A"), b.replace(material_id="mp-B")]
    expected_u, expected_n = uniqueness(crystals).structures, novelty(crystals, train).structures
    reduced: list[Crystal] = []
    real = structure_matcher.reduce_cell

    def counting(crystal: Crystal, primitive_cell: bool) -> object:
        reduced.append(crystal)
        return real(crystal, primitive_cell)

    monkeypatch.setattr(structure_matcher, "reduce_cell", counting)
    shared = StructureSet(crystals)
    assert list(shared.groups.values()) == [[0, 1], [2]]  # grouped once, by reduced formula
    assert uniqueness(shared).structures == expected_u
    assert len(reduced) == 2  # only the formula two structures share needs pymatgen
    assert novelty(shared, train).structures == expected_n
    # novelty reduced only the NaCl sample and the two training cells: the triclinic pair was kept
    assert len(reduced) == 2 + 1 + 2 and shared.num_reduced() == 3
