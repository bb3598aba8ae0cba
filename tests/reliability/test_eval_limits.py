"""Structures over a resource limit (``core.limits``) are refused by name before evaluate, relax or predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.limits import StructureLimits
from crystalforge.evaluation.run import evaluate_candidates
from crystalforge.predictors import PredictorEnsemble, PropertyGNNConfig
from crystalforge.predictors.gnn import PropertyGNN
from crystalforge.relax import ASERelaxer, CachedRelaxer
from crystalforge.testing import tiny_crystals

TINY = {c.material_id: c for c in tiny_crystals()}
HUGE_CELL = Crystal([6], [[0.0, 0.0, 0.0]], np.diag([2000.0, 3.0, 3.0]), material_id="c_2000A")  # a > 1000 Å


def test_evaluate_rejects_over_limit_records_and_scores_the_rest() -> None:
    pytest.importorskip("smact")
    samples = [TINY["si_fcc_2"], HUGE_CELL, TINY["nacl_conv_8"], TINY["po_sc_1"]]
    report = evaluate_candidates([Candidate.of(c) for c in samples], reference=None, reference_name=None,
                                 limits=StructureLimits(max_atoms=4), time_limit_s=None)  # fmt: skip
    rows = {r["source"]: r for r in report.per_structure}
    assert rows["c_2000A"]["failure"] == "rejected: a lattice vector of 2000 Å exceeds the limit of 1000 Å"
    assert rows["nacl_conv_8"]["failure"].startswith("rejected: 8 atoms exceed the limit of 4 per structure")
    assert rows["nacl_conv_8"]["material_id"] is None and rows["nacl_conv_8"]["valid"] is False
    assert rows["si_fcc_2"]["valid"] and rows["po_sc_1"]["valid"] and rows["si_fcc_2"]["failure"] is None
    assert report["n"] == 4 and report["validity"] == 50.0  # refused records stay in the denominators
    assert "errors" not in report.protocol


class _MustNotRun(Calculator):
    implemented_properties = ("energy", "forces", "stress")

    def calculate(self, *args, **kwargs) -> None:
        raise AssertionError("the calculator saw a structure over the limit")


def test_relax_refuses_over_limit_structures_before_the_calculator_and_does_not_cache_it(tmp_path) -> None:
    relaxer = CachedRelaxer(ASERelaxer(_MustNotRun, name="never"), tmp_path / "cache.jsonl")
    (result,) = relaxer.relax([HUGE_CELL])
    assert result.failure_kind == "over limit" and result.material_id == "c_2000A"
    assert "lattice vector of 2000 Å" in result.failure
    assert len(relaxer.cache) == 0  # raising the limit later must relax it


def test_predict_refuses_over_limit_structures_and_keeps_the_others() -> None:
    torch.manual_seed(0)
    config = PropertyGNNConfig(properties=("band_gap",), hidden=16, layers=1, radial=8)
    ensemble = PredictorEnsemble([PropertyGNN(config)]).eval()
    crystals = [TINY["si_fcc_2"], TINY["nacl_conv_8"], TINY["po_sc_1"]]
    clean = ensemble.predict_batches([CrystalBatch.collate(crystals)])
    limited = ensemble.predict_batches([CrystalBatch.collate(crystals)], limits=StructureLimits(max_atoms=4))
    assert limited.failures == {1: "over limit: 8 atoms exceed the limit of 4 per structure "
                                   "(raise it with CRYSTALFORGE_MAX_ATOMS if this is intended)"}  # fmt: skip
    assert torch.isnan(limited.mean[1]).all()
    torch.testing.assert_close(limited.mean[[0, 2]], clean.mean[[0, 2]])
