"""NaN/inf in a relaxation or a prediction fails that one structure, by name; the others keep their results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.run import evaluate_candidates
from crystalforge.predictors import PredictorEnsemble, PropertyGNNConfig
from crystalforge.predictors.gnn import PropertyGNN
from crystalforge.relax import ASERelaxer
from crystalforge.testing import tiny_crystals

TINY = {c.material_id: c for c in tiny_crystals()}


class _FaultyCalculator(Calculator):
    """Harmonic pull of every atom towards frac 0.3 along a; NaN for chlorine, NaN after 3 calls for carbon."""

    implemented_properties = ("energy", "forces", "stress")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        numbers = set(self.atoms.numbers.tolist())
        self.calls = getattr(self, "calls", 0) + 1 if 6 in numbers else 0
        d = self.atoms.get_scaled_positions()[:, 0] - 0.3
        energy = -1.0 * len(self.atoms) + 0.5 * float(d @ d)
        forces = np.zeros((len(self.atoms), 3))
        forces[:, 0] = -d
        if 17 in numbers or self.calls > 3:
            energy = math.nan
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": np.zeros(6)}


@pytest.mark.filterwarnings("ignore:relaxer 'faulty' differs from the hull")
def test_nan_in_relaxation_fails_that_structure_only() -> None:
    pytest.importorskip("smact")
    samples = [TINY["po_sc_1"], TINY["nacl_conv_8"], TINY["si_fcc_2"], TINY["edge_3"]]
    relaxer = ASERelaxer(_FaultyCalculator, name="faulty", relax_cell=False, fmax=1e-4, max_steps=50, min_distance=0)
    report = evaluate_candidates([Candidate.of(c) for c in samples], reference=None, reference_name=None,
                                 relaxer=relaxer, time_limit_s=None)  # fmt: skip
    rows = {r["material_id"]: r for r in report.per_structure}
    assert rows["nacl_conv_8"]["relax_failure"] == "non-finite: initial energy is nan"  # NaN from the first call
    assert rows["edge_3"]["relax_failure"] == "non-finite: energy became nan"  # NaN in the middle of the run
    for name in ("nacl_conv_8", "edge_3"):
        assert rows[name]["failure"] == f"relaxation: {rows[name]['relax_failure']}"
        assert rows[name]["stable"] is False
    for name in ("po_sc_1", "si_fcc_2"):  # relaxed as usual
        assert rows[name]["relax_failure"] is None and rows[name]["failure"] is None
        assert math.isfinite(rows[name]["relaxed_energy_per_atom"]) and rows[name]["relax_steps"] > 0
    assert report.details["stability"]["num_relax_failed"] == 2 and "errors" not in report.protocol


# ---- the GNN predictor ------------------------------------------------------------------------------------
@pytest.fixture
def ensemble() -> PredictorEnsemble:
    torch.manual_seed(0)
    config = PropertyGNNConfig(properties=("band_gap",), hidden=16, layers=1, radial=8)
    return PredictorEnsemble([PropertyGNN(config), PropertyGNN(config)]).eval()


def _batches(crystals: list[Crystal], size: int = 3) -> list[CrystalBatch]:
    return [CrystalBatch.collate(crystals[i : i + size]) for i in range(0, len(crystals), size)]


def test_nan_prediction_fails_that_structure_only(ensemble: PredictorEnsemble, monkeypatch) -> None:
    crystals = list(TINY.values())
    clean = ensemble.predict_batches(_batches(crystals))
    assert not clean.failures and torch.isfinite(clean.mean).all()
    real = PropertyGNN.predict

    def nan_for_nacl(self, batch, t=None, *, type_weights=None):  # an injected numerical fault
        mean, std = real(self, batch, t, type_weights=type_weights)
        poisoned = torch.tensor([i == "nacl_conv_8" for i in batch.material_ids])[:, None]
        return torch.where(poisoned, torch.full_like(mean, math.nan), mean), std

    monkeypatch.setattr(PropertyGNN, "predict", nan_for_nacl)
    faulty = ensemble.predict_batches(_batches(crystals))
    k = list(TINY).index("nacl_conv_8")
    assert faulty.failures == {k: "non-finite prediction (NaN or inf)"}
    assert torch.isnan(faulty.mean[k]).all() and torch.isnan(faulty.std[k]).all()
    keep = [i for i in range(len(crystals)) if i != k]
    torch.testing.assert_close(faulty.mean[keep], clean.mean[keep])  # the batch-mates are untouched
    torch.testing.assert_close(faulty.std[keep], clean.std[keep])


def test_a_structure_that_makes_the_forward_pass_raise_is_isolated(ensemble: PredictorEnsemble, monkeypatch) -> None:
    crystals = list(TINY.values())
    clean = ensemble.predict_batches(_batches(crystals, size=5))
    real = PropertyGNN.predict

    def raise_on_carbon(self, batch, t=None, *, type_weights=None):
        if bool((batch.atomic_numbers == 6).any()):
            raise RuntimeError("inf in the radial basis")
        return real(self, batch, t, type_weights=type_weights)

    monkeypatch.setattr(PropertyGNN, "predict", raise_on_carbon)
    faulty = ensemble.predict_batches(_batches(crystals, size=5))
    k = list(TINY).index("edge_3")
    assert faulty.failures == {k: "prediction failed: RuntimeError: inf in the radial basis"}
    keep = [i for i in range(len(crystals)) if i != k]
    torch.testing.assert_close(faulty.mean[keep], clean.mean[keep])
