import math

import pytest
import torch

from crystalforge.core.elements import TypeVocabulary
from crystalforge.core.lattice import metric_tensor
from crystalforge.core.periodic import pbc_diff
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.diffusion import AbsorbingD3PM, LatticeDDPM, WrappedNormalDiffusion
from crystalforge.geometry.wrapped_normal import wrapped_normal_score, wrapped_normal_score_variance
from crystalforge.testing import tiny_batch, tiny_crystals
from tests.generative.conftest import F64, gen, make_batch, steps


# ---- WrappedNormalDiffusion ------------------------------------------------------------------------
def test_noise_schedule_and_path_target_is_the_normalised_wrapped_normal_score():
    diff = WrappedNormalDiffusion()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(diff.sigma(t), torch.tensor([0.5, 0.05, 0.005], dtype=F64))
    batch = tiny_batch()
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    path = diff.sample_path(batch.frac_coords, t, batch, generator=gen(0))
    assert bool(((path.x_t >= 0) & (path.x_t < 1)).all())
    sigma = diff.sigma(t)[batch.crystal_idx, None]
    raw = wrapped_normal_score(path.x_t, batch.frac_coords, sigma)
    torch.testing.assert_close(path.target, raw / wrapped_normal_score_variance(sigma).sqrt(), rtol=1e-4, atol=0)
    torch.testing.assert_close(diff.score(path.target, t, batch), raw, rtol=1e-4, atol=0)
    torch.testing.assert_close(diff.prediction_from_score(raw, t, batch), path.target, rtol=1e-4, atol=0)
    assert float(diff.loss(path.target, path, batch).abs().max()) == 0.0
    raw_diff = WrappedNormalDiffusion(parametrization="score")
    raw_path = raw_diff.sample_path(batch.frac_coords, t, batch, generator=gen(0))
    torch.testing.assert_close(raw_path.target, raw)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 1.0])
def test_normalised_target_has_unit_second_moment(t):
    diff = WrappedNormalDiffusion()
    batch = make_batch([1] * 20000)
    x_data = torch.rand(20000, 3, generator=gen(1), dtype=F64)
    path = diff.sample_path(x_data, torch.full((20000,), t, dtype=F64), batch, generator=gen(2))
    assert float(path.target.pow(2).mean()) == pytest.approx(1.0, abs=0.03)


def wrapped_target_prediction(diff, x, mu, s, t, batch):
    """Exact (normalised) score of the marginal WN(μ, s² + σ(t)²) of a WN(μ, s²) target."""
    sigma = diff.sigma(t)[batch.crystal_idx, None]
    score = wrapped_normal_score(x, mu, (s**2 + sigma**2).sqrt())
    return diff.prediction_from_score(score, t, batch)


@pytest.mark.parametrize(
    ("predictor", "corrector"), [("ancestral", False), ("ancestral", True), ("reverse_sde", False)]
)
def test_reverse_sampling_with_the_exact_score_recovers_a_wrapped_normal(predictor, corrector):
    diff = WrappedNormalDiffusion(predictor=predictor, corrector_step_size=1e-4)
    batch = make_batch([3] * 1500)
    mu = torch.tensor([0.3, 0.8, 0.02], dtype=F64)
    s = torch.tensor(0.1, dtype=F64)
    g = gen(3)
    x = diff.sample_prior(batch, generator=g)
    for t, dt in steps(200):
        tt = t.expand(batch.num_crystals)
        if corrector:
            x = diff.correct(x, wrapped_target_prediction(diff, x, mu, s, tt, batch), tt, batch, generator=g)
        x = diff.step(x, wrapped_target_prediction(diff, x, mu, s, tt, batch), tt, dt, batch, generator=g)
    assert bool(((x >= 0) & (x < 1)).all())
    z = torch.exp(2j * math.pi * (x - mu).to(torch.complex128)).mean(0)  # per component
    angle = torch.atan2(z.imag, z.real) / (2 * math.pi)
    torch.testing.assert_close(angle, torch.zeros(3, dtype=F64), atol=0.01, rtol=0)
    concentration = math.exp(-2 * math.pi**2 * float(s) ** 2)  # E cos 2π(x − μ)
    torch.testing.assert_close(z.abs(), torch.full((3,), concentration, dtype=F64), atol=0.015, rtol=0)


def test_last_predictor_step_is_noise_free_and_corrector_is_seeded():
    diff = WrappedNormalDiffusion()
    batch = make_batch([4, 2])
    x = torch.rand(6, 3, generator=gen(0), dtype=F64)
    pred = torch.randn(6, 3, generator=gen(1), dtype=F64)
    t = torch.full((2,), 0.99, dtype=F64)
    a = diff.step(x, pred, t, 0.01, batch, generator=gen(2))
    b = diff.step(x, pred, t, 0.01, batch, generator=gen(3))
    torch.testing.assert_close(a, b)  # σ' = 0: deterministic
    expected = x + diff.sigma(t)[batch.crystal_idx, None] ** 2 * diff.score(pred, t, batch)
    torch.testing.assert_close(pbc_diff(a, expected), torch.zeros_like(a), atol=1e-12, rtol=0)
    c1 = diff.correct(x, pred, t, batch, generator=gen(4))
    c2 = diff.correct(x, pred, t, batch, generator=gen(4))
    assert torch.equal(c1, c2) and diff.has_corrector
    assert torch.equal(diff.correct(x, pred, t, batch, step_size=0.0), x)


def test_wrapped_normal_diffusion_rejects_unknown_options():
    with pytest.raises(ValueError, match="parametrization"):
        WrappedNormalDiffusion(parametrization="eps")
    with pytest.raises(ValueError, match="predictor"):
        WrappedNormalDiffusion(predictor="heun")


# ---- LatticeDDPM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lattice_ddpm_schedule_endpoints_and_parametrisation_round_trip(schedule):
    ddpm = LatticeDDPM(schedule=schedule)
    a = ddpm.alpha_bar(torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    assert float(a[0]) < 1e-4 and float(a[2]) == 1.0 and 0 < float(a[1]) < 1
    assert bool((ddpm.alpha_bar(torch.linspace(0, 1, 101, dtype=F64)).diff() >= 0).all())
    batch = tiny_batch()
    x_data = ddpm.encode(batch)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.99], dtype=F64)
    path = ddpm.sample_path(x_data, t, batch, generator=gen(0))
    torch.testing.assert_close(ddpm.noise_from_data(path.x_t, x_data, t, batch), path.target)
    torch.testing.assert_close(ddpm.data_from_noise(path.x_t, path.target, t, batch), x_data)
    assert float(ddpm.loss(path.target, path, batch).abs().max()) == 0.0
    assert ddpm.loss(torch.zeros_like(path.target), path, batch).shape == (5,)


def test_lattice_ddpm_uses_data_informed_standardisation():
    stats = compute_dataset_stats(tiny_crystals())
    ddpm = LatticeDDPM(stats)
    batch = tiny_batch()
    z = ddpm.encode(batch)
    torch.testing.assert_close(z.mean(0), torch.zeros(6, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(metric_tensor(ddpm.decode(z, batch)), metric_tensor(batch.lattice), rtol=1e-10, atol=0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ancestral_sampling_with_the_exact_noise_recovers_a_gaussian_target(schedule):
    m = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3, -0.2], dtype=F64)
    s = torch.tensor([0.5, 0.25, 1.5, 1.0, 0.3, 2.0], dtype=F64)
    ddpm = LatticeDDPM(schedule=schedule)
    batch = make_batch([1] * 5000)  # ≤ 32768 elements per op: no intra-op threading overhead
    g = gen(4)
    x = ddpm.sample_prior(batch, generator=g)
    for t, dt in steps(1000):  # ancestral sampling misses Var[x_data | x_t] per step: O(dt) variance deficit
        a = ddpm.alpha_bar(t)
        eps = (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s**2 + 1 - a)  # E[ε | x_t]
        x = ddpm.step(x, eps, t.expand(batch.num_crystals), dt, batch, generator=g)
    assert bool(((x.mean(0) - m).abs() <= 4 * s / len(x) ** 0.5).all()), x.mean(0) - m  # 4 standard errors
    torch.testing.assert_close(x.std(0), s, rtol=0.04, atol=0)


def test_lattice_ddpm_last_step_returns_the_predicted_data():
    ddpm = LatticeDDPM()
    batch = make_batch([1, 2])
    x = torch.randn(2, 6, generator=gen(0), dtype=F64)
    eps = torch.randn(2, 6, generator=gen(1), dtype=F64)
    t = torch.full((2,), 0.98, dtype=F64)
    out = ddpm.step(x, eps, t, 0.02, batch, generator=gen(2))
    torch.testing.assert_close(out, ddpm.data_from_noise(x, eps, t, batch))


def test_lattice_ddpm_keeps_the_predicted_data_in_the_data_range():
    """With the data's code range in the stats, no step leaves it widened by ``data_margin``; without, ±clip only."""
    stats = compute_dataset_stats(tiny_crystals())
    batch = make_batch([1, 2, 3, 4])
    x = torch.randn(4, 6, generator=gen(0), dtype=F64)
    eps = 40.0 * torch.randn(4, 6, generator=gen(1), dtype=F64)  # a wild noise prediction
    t = torch.full((4,), 0.98, dtype=F64)
    ddpm = LatticeDDPM(stats)
    low, high = ddpm.standardizer.bounds(x, 0.5)  # type: ignore[misc]
    out = ddpm.step(x, eps, t, 0.02, batch, generator=gen(2))  # the last step returns x̂_data itself
    assert bool(((out >= low) & (out <= high)).all())
    assert bool(((out == low) | (out == high)).any())  # the prediction was outside: it was clipped
    code = ddpm.standardizer.mean + ddpm.standardizer.std * out  # back to the raw code: inside the data's range
    assert bool((code >= torch.tensor(stats.lattice_code_min, dtype=F64) - 0.5 * ddpm.standardizer.std - 1e-9).all())
    inside, t5 = ddpm.encode(tiny_batch()), torch.full((5,), 0.98, dtype=F64)  # predictions of the data stay
    zero = torch.zeros_like(inside)
    torch.testing.assert_close(ddpm.step(inside, zero, t5, 0.02, tiny_batch()),
                               ddpm.data_from_noise(inside, zero, t5, tiny_batch()), rtol=0, atol=0)  # fmt: skip
    legacy = stats.to_dict()
    legacy.pop("lattice_code_min"), legacy.pop("lattice_code_max")
    old = LatticeDDPM(type(stats).from_dict(legacy))
    assert old.standardizer.bounds(x, 0.5) is None
    unbounded = LatticeDDPM(stats, data_margin=None).step(x, eps, t, 0.02, batch, generator=gen(2))
    torch.testing.assert_close(old.step(x, eps, t, 0.02, batch, generator=gen(2)), unbounded)
    torch.testing.assert_close(unbounded, ddpm.data_from_noise(x, eps, t, batch).clamp(-10, 10))
    with pytest.raises(ValueError, match="data_margin"):
        LatticeDDPM(stats, data_margin=-1.0)


# ---- AbsorbingD3PM ---------------------------------------------------------------------------------
VOCAB = TypeVocabulary((1, 8, 14, 26))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_d3pm_forward_masks_with_the_schedule(schedule):
    d3pm = AbsorbingD3PM(VOCAB, schedule=schedule)
    batch = make_batch([2000] * 3)
    x_data = torch.randint(1, VOCAB.size, (6000,), generator=gen(0))
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    path = d3pm.sample_path(x_data, t, batch, generator=gen(1))
    masked = (path.x_t == 0).double().view(3, 2000).mean(1)
    torch.testing.assert_close(masked, d3pm.mask_probability(t), atol=0.045, rtol=0)  # 4 standard errors


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_d3pm_loss_vanishes_for_a_perfect_prediction_and_uses_the_vb_weight(schedule):
    d3pm = AbsorbingD3PM(VOCAB, schedule=schedule, ce_weight=0.01)
    batch = make_batch([3, 4])
    x_data = torch.randint(1, VOCAB.size, (7,), generator=gen(0))
    t = torch.tensor([0.2, 0.6], dtype=F64)
    path = d3pm.sample_path(x_data, t, batch, generator=gen(1))
    perfect = torch.full((7, VOCAB.size), -1e4, dtype=F64)
    perfect[torch.arange(7), x_data] = 1e4
    assert float(d3pm.loss(perfect, path, batch).abs().max()) < 1e-12
    # the VB weight m'(τ)/m(τ) by finite differences of the mask probability
    h = 1e-6
    dm = (d3pm.mask_probability(t - h) - d3pm.mask_probability(t + h)) / (2 * h)
    w = dm / d3pm.mask_probability(t) + 0.01
    masked = (path.x_t == 0).double()
    ce = math.log(VOCAB.size - 1)
    expected = torch.stack([(masked[:3] * w[0]).mean(), (masked[3:] * w[1]).mean()]) * ce
    torch.testing.assert_close(d3pm.loss(torch.zeros(7, VOCAB.size, dtype=F64), path, batch), expected)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_d3pm_sampler_with_a_fixed_categorical_predictor_draws_its_frequencies(schedule):
    probs = torch.tensor([0.0, 0.4, 0.1, 0.3, 0.2], dtype=F64)
    logits = probs.clamp(min=1e-300).log().expand(6000, 5).clone()
    logits[:, 0] = 50.0
    d3pm = AbsorbingD3PM(VOCAB, schedule=schedule)
    batch = make_batch([3] * 2000)
    x = d3pm.sample_prior(batch)
    g = gen(5)
    for t, dt in steps(20):
        x = d3pm.step(x, logits, t.expand(2000), dt, batch, generator=g)
        revealed = float((x != 0).double().mean())
        assert revealed == pytest.approx(1 - float(d3pm.mask_probability(t + dt)), abs=0.03)
    assert int((x == 0).sum()) == 0
    freq = torch.bincount(x, minlength=5).double() / x.numel()
    torch.testing.assert_close(freq, probs, atol=0.026, rtol=0)  # 4 standard errors of 6000 draws


# ---- the contract every process honours ------------------------------------------------------------
def all_processes():
    from crystalforge.generative.flow import LatticeFlow, MaskedTypeFlow, TorusFlow
    from crystalforge.generative.process_base import FixedField

    vocab = TypeVocabulary.all_elements(100)
    stats = compute_dataset_stats(tiny_crystals())
    return [
        TorusFlow(),
        LatticeFlow(stats),
        MaskedTypeFlow(vocab),
        FixedField("atomic_numbers"),
        WrappedNormalDiffusion(),
        LatticeDDPM(stats),
        AbsorbingD3PM(vocab),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("index", range(7))
def test_every_process_honours_the_field_process_contract(index, dtype):
    process = all_processes()[index]
    batch = tiny_batch(dtype=dtype)
    x_data = process.encode(batch)
    prior = process.sample_prior(batch, generator=gen(0))
    assert prior.shape == x_data.shape and prior.dtype == x_data.dtype
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=dtype)
    path = process.sample_path(x_data, t, batch, generator=gen(1))
    again = process.sample_path(x_data, t, batch, generator=gen(1))
    assert torch.equal(path.x_t, again.x_t) and torch.equal(path.target, again.target)
    assert path.x_t.shape == x_data.shape and path.x_t.dtype == x_data.dtype
    if process.field == "atomic_numbers":
        prediction = torch.randn(len(x_data), 101, generator=gen(2), dtype=dtype)
    else:
        prediction = torch.randn(path.target.shape, generator=gen(2), dtype=dtype)
    loss = process.loss(prediction, path, batch)
    assert loss.shape == (5,) and loss.dtype == dtype and bool(torch.isfinite(loss).all())
    state = batch
    x = prior
    for i in range(4):
        tt = torch.full((5,), i / 4, dtype=dtype)
        x = process.correct(x, prediction, tt, state, generator=gen(3))
        x = process.step(x, prediction, tt, 0.25, state, generator=gen(3))
        assert x.shape == x_data.shape and x.dtype == x_data.dtype
        state = state.replace(**{process.field: process.decode(x, state)})
        state.validate()
    if process.field == "atomic_numbers":
        assert bool((state.atomic_numbers > 0).all())  # nothing left masked at t = 1
