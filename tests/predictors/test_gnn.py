"""The GNN predictor: invariances, smoothness at the cutoff, ensemble uncertainty, checkpoints, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.symmetry_ops import supercell
from crystalforge.predictors import PredictorEnsemble, PredictorTrainConfig, PropertyGNN, PropertyGNNConfig
from crystalforge.predictors.ensemble import calibration_report
from crystalforge.predictors.gnn import _period_and_group, element_descriptors
from crystalforge.predictors.training import fit_ensemble, predict_crystals, targets_of
from crystalforge.testing import (
    assert_cell_choice_invariant,
    assert_periodic_translation_invariant,
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    tiny_batch,
    tiny_crystals,
)

CONFIG = PropertyGNNConfig(properties=("a", "b"), hidden=16, layers=2, radial=8, cutoff=4.0)


def _net(config: PropertyGNNConfig = CONFIG) -> PropertyGNN:
    torch.manual_seed(0)
    return PropertyGNN(config).double().eval()


def _outputs(net: PropertyGNN):
    def fn(batch: CrystalBatch) -> dict[str, torch.Tensor]:
        mean, log_var = net(batch)
        return {"mean": mean, "log_var": log_var}

    return fn


def test_invariances():
    net, batch = _net(), tiny_batch()
    fn = _outputs(net)
    assert_permutation_equivariant(fn, batch, levels={"mean": "crystal", "log_var": "crystal"})
    assert_rotation_equivariant(fn, batch)
    assert_periodic_translation_invariant(fn, batch)
    assert_cell_choice_invariant(fn, batch)


def test_supercell_gives_the_same_intensive_prediction():
    net, batch = _net(), tiny_batch()
    one = batch.index_select([1])
    torch.testing.assert_close(net(supercell(one, (2, 1, 1)))[0], net(one)[0])


def test_prediction_is_continuous_as_a_neighbour_crosses_the_cutoff():
    net = _net()
    lattice = torch.eye(3, dtype=torch.float64) * 12.0

    def at(d: float) -> torch.Tensor:
        batch = CrystalBatch(
            atomic_numbers=torch.tensor([8, 26]),
            frac_coords=torch.tensor([[0.0, 0, 0], [d / 12.0, 0, 0]], dtype=torch.float64),
            lattice=lattice[None], num_atoms=torch.tensor([2]),
        )  # fmt: skip
        return net(batch)[0]

    cut = CONFIG.cutoff
    torch.testing.assert_close(at(cut - 1e-6), at(cut + 1e-6), atol=1e-6, rtol=0)
    assert not torch.allclose(at(cut - 1.0), at(cut + 1.0))  # the neighbour does matter inside


def test_gradients_reach_coordinates_and_lattice():
    net, batch = _net(), tiny_batch()
    frac = batch.frac_coords.clone().requires_grad_(True)
    lattice = batch.lattice.clone().requires_grad_(True)
    mean, _ = net(batch.replace(frac_coords=frac, lattice=lattice))
    grad_frac, grad_lattice = torch.autograd.grad(mean[:, 0].sum(), [frac, lattice])
    assert torch.isfinite(grad_frac).all() and grad_lattice.abs().sum() > 0


def test_time_conditioned_variant_needs_and_reads_t():
    net = _net(PropertyGNNConfig(properties=("a",), hidden=16, layers=1, radial=8, time_dim=8))
    batch = tiny_batch()
    with pytest.raises(ValueError, match="noise-aware"):
        net(batch)
    t0, t1 = torch.zeros(batch.num_crystals, dtype=torch.float64), torch.ones(batch.num_crystals, dtype=torch.float64)
    assert not torch.allclose(net(batch, t0)[0], net(batch, t1)[0])


def test_unrevealed_types_are_accepted():
    batch = tiny_batch()
    masked = batch.replace(atomic_numbers=torch.zeros_like(batch.atomic_numbers))
    assert torch.isfinite(_net()(masked)[0]).all()


def test_element_descriptors():
    assert _period_and_group(1) == (1, 1) and _period_and_group(2) == (1, 18)
    assert _period_and_group(8) == (2, 16) and _period_and_group(26) == (4, 8)
    assert _period_and_group(57) == (6, 3) and _period_and_group(79) == (6, 11) and _period_and_group(118) == (7, 18)
    table = element_descriptors()
    assert not table[0].any() and np.isfinite(table).all()
    assert (table[1:, :7].sum(1) == 1).all() and (table[1:, 7:25].sum(1) == 1).all()


def test_ensemble_variance_adds_disagreement_and_calibration_scales_it():
    members = [_net(), _net()]
    with torch.no_grad():
        for p in members[1].parameters():
            p.add_(0.05)
    ensemble = PredictorEnsemble(members).double()
    batch = tiny_batch()
    mean, std = ensemble(batch)
    m0, s0 = members[0].predict(batch)
    m1, s1 = members[1].predict(batch)
    expected = torch.sqrt((s0**2 + s1**2) / 2 + ((m0 - m1) / 2) ** 2)
    torch.testing.assert_close(std, expected)
    torch.testing.assert_close(mean, (m0 + m1) / 2)
    target = mean + 3.0 * std  # every z-score is 3 → the factor is 3
    ensemble.calibrate(mean.detach(), std.detach(), target.detach(), method="z2")
    torch.testing.assert_close(ensemble.calibration, torch.full((2,), 3.0, dtype=torch.float64))


def test_area_calibration_recovers_the_scale_and_resists_heavy_tails():
    ensemble = PredictorEnsemble([_net(PropertyGNNConfig(properties=("a",), hidden=8, layers=1, radial=4))]).double()
    gen = torch.Generator().manual_seed(0)
    n = 4000
    mean, std = torch.zeros(n, 1, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)
    gaussian = 3.0 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    assert abs(float(ensemble.calibrate(mean, std, gaussian)[0]) - 3.0) < 0.15
    tails = gaussian / 3.0
    tails[:200] *= 30.0  # 5 % gross misses
    area_scale = float(ensemble.calibrate(mean, std, tails)[0])
    z2_scale = float(ensemble.calibrate(mean, std, tails, method="z2")[0])
    assert z2_scale > 5.0 and area_scale < 1.5
    inside = float(((tails.abs() / area_scale) <= 1.0).double().mean())
    assert 0.6 < inside < 0.76
    with pytest.raises(ValueError, match="area"):
        ensemble.calibrate(mean, std, tails, method="median")


def test_checkpoint_round_trip_and_foreign_files(tmp_path):
    ensemble = PredictorEnsemble([_net(), _net()], record={"data": "x"})
    ensemble.calibration.fill_(1.7)
    path = ensemble.save(tmp_path / "p.pt")
    loaded = PredictorEnsemble.load(path).double()
    batch = tiny_batch()
    torch.testing.assert_close(loaded(batch)[1], ensemble(batch)[1])
    assert loaded.record == {"data": "x"} and loaded.properties == ("a", "b")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        PredictorEnsemble.load(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a crystalforge predictor"):
        PredictorEnsemble.load(tmp_path / "other.pt")


def test_calibration_report_on_a_perfectly_calibrated_gaussian():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=20_000)
    std = rng.uniform(0.5, 2.0, size=mean.size)
    target = mean + std * rng.normal(size=mean.size)
    r = calibration_report(mean, std, target)
    assert abs(r["coverage_1sigma"] - 0.6827) < 0.01 and abs(r["coverage_2sigma"] - 0.9545) < 0.01
    assert r["miscalibration_area"] < 0.01
    over = calibration_report(mean, std / 3, target)  # overconfident: the area grows
    assert over["coverage_1sigma"] < 0.35 and over["miscalibration_area"] > 0.2


def _labelled(n: int) -> list:
    """Copies of the tiny crystals with a property that depends on the volume per atom."""
    out = []
    base = tiny_crystals()
    rng = np.random.default_rng(1)
    for i in range(n):
        c = base[i % len(base)]
        scale = rng.uniform(0.9, 1.2)
        crystal = c.replace(lattice=c.lattice * scale, properties={})
        out.append(crystal.replace(properties={"a": crystal.volume / crystal.num_atoms / 10.0, "b": math.nan}))
    return out


def test_training_learns_and_resumes(tmp_path):
    data = _labelled(60)
    config = PropertyGNNConfig(properties=("a",), hidden=16, layers=1, radial=8, cutoff=4.0)
    settings = PredictorTrainConfig(members=2, epochs=8, batch_size=16, lr=5e-3)
    ensemble = fit_ensemble(config, data[:48], data[48:], settings, work_dir=tmp_path / "w")
    mean, std = predict_crystals(ensemble, data[48:])
    y = targets_of(data[48:], ("a",))
    baseline = np.abs(y - y.mean()).mean()
    assert np.abs(mean - y).mean() < 0.8 * baseline and (std > 0).all()
    assert len(ensemble.record["histories"]) == 2 and ensemble.record["train_structures"] == 48
    again = fit_ensemble(config, data[:48], data[48:], settings, work_dir=tmp_path / "w")  # resumes: no epochs left
    np.testing.assert_allclose(predict_crystals(again, data[48:])[0], mean, rtol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        fit_ensemble(config, data[:48], data[48:], PredictorTrainConfig(members=2, epochs=9), work_dir=tmp_path / "w")


def test_bad_targets_are_named():
    data = _labelled(4)
    bad = data[0].replace(properties={"a": math.inf}, material_id="broken-1")
    with pytest.raises(ValueError, match="broken-1"):
        targets_of([bad, *data[1:]], ("a",))
    with pytest.raises(ValueError, match="no crystal has property 'zz'"):
        targets_of(data, ("zz",))
    with pytest.raises(ValueError, match="noise-aware"):
        fit_ensemble(PropertyGNNConfig(properties=("a",), time_dim=4), data, data)


def test_degenerate_cells_get_nan_and_the_rest_is_unchanged():
    net, batch = _net(), tiny_batch()
    flat = batch.lattice[1].clone()
    flat[2] = flat[0] + flat[1] + 1e-4 * flat[2]  # nearly coplanar third vector
    bad = batch.replace(lattice=torch.stack([batch.lattice[0], flat, *batch.lattice[2:]]))
    mean, _ = net(bad)
    assert torch.isnan(mean[1]).all()
    keep = [i for i in range(batch.num_crystals) if i != 1]
    torch.testing.assert_close(mean[keep], net(batch)[0][keep])
    frac = bad.frac_coords.clone().requires_grad_(True)
    out, _ = net(bad.replace(frac_coords=frac))
    (grad,) = torch.autograd.grad(out[keep].sum(), frac)
    assert torch.isfinite(grad).all()


def test_one_hot_type_weights_reproduce_the_prediction():
    net, batch = _net(), tiny_batch()
    onehot = torch.nn.functional.one_hot(batch.atomic_numbers, 119).double()
    torch.testing.assert_close(net(batch, type_weights=onehot)[0], net(batch)[0])


def test_noise_aware_training_skips_unscorable_noised_crystals():
    data = _labelled(32)
    seen: list[float] = []

    def corrupt(clean, t, generator):
        flat = clean.lattice.clone()
        flat[0, 2] = flat[0, 0] + flat[0, 1] + 1e-4 * flat[0, 2]  # first crystal of every batch: a flat cell
        return clean.replace(lattice=flat)

    config = PropertyGNNConfig(properties=("a",), hidden=8, layers=1, radial=4, cutoff=4.0, time_dim=4)
    ensemble = fit_ensemble(config, data[:24], data[24:], PredictorTrainConfig(members=1, epochs=2, batch_size=8),
                            corrupt=corrupt, on_epoch=lambda m, e, loss, val: seen.append(loss))  # fmt: skip
    assert all(math.isfinite(v) for v in seen) and len(seen) == 2
    assert all(torch.isfinite(p).all() for p in ensemble.parameters())
