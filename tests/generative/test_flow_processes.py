import math

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, TypeVocabulary
from crystalforge.core.lattice import metric_tensor
from crystalforge.core.periodic import pbc_diff
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.flow import LatticeFlow, MaskedTypeFlow, TorusFlow
from crystalforge.generative.interfaces import PathSample
from crystalforge.generative.process_base import FixedField, LatticeStandardizer
from crystalforge.testing import tiny_batch, tiny_crystals
from tests.generative.conftest import F64, gen, make_batch, steps


# ---- TorusFlow -------------------------------------------------------------------------------------
@pytest.mark.parametrize("remove_mean", [False, True])
def test_torus_path_velocity_is_the_finite_difference_of_x_t(remove_mean):
    batch = tiny_batch()
    flow = TorusFlow(remove_mean=remove_mean)
    t = torch.rand(batch.num_crystals, generator=gen(0), dtype=F64) * 0.8 + 0.1
    h = 1e-6
    plus = flow.sample_path(batch.frac_coords, t + h, batch, generator=gen(1))
    minus = flow.sample_path(batch.frac_coords, t - h, batch, generator=gen(1))
    fd = pbc_diff(plus.x_t, minus.x_t) / (2 * h)
    expected = (
        fd
        - (fd.new_zeros(batch.num_crystals, 3).index_add_(0, batch.crystal_idx, fd) / batch.num_atoms[:, None])[
            batch.crystal_idx
        ]
        if remove_mean
        else fd
    )
    torch.testing.assert_close(plus.target, expected, rtol=0, atol=1e-7)
    at_one = flow.sample_path(batch.frac_coords, torch.ones(batch.num_crystals, dtype=F64), batch, generator=gen(2))
    torch.testing.assert_close(
        pbc_diff(at_one.x_t, batch.frac_coords), torch.zeros_like(at_one.x_t), atol=1e-12, rtol=0
    )


def test_torus_targets_are_translation_free_and_loss_vanishes_at_the_target():
    batch = tiny_batch()
    flow = TorusFlow()
    path = flow.sample_path(batch.frac_coords, torch.full((5,), 0.3, dtype=F64), batch, generator=gen(0))
    means = torch.zeros(5, 3, dtype=F64).index_add_(0, batch.crystal_idx, path.target)
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-12, rtol=0)
    assert flow.loss(path.target, path, batch).abs().max() < 1e-24
    # a prediction off by a per-crystal constant drift costs nothing
    drift = torch.randn(5, 3, generator=gen(1), dtype=F64)[batch.crystal_idx]
    assert flow.loss(path.target + drift, path, batch).abs().max() < 1e-24
    loss = flow.loss(torch.zeros_like(path.target), path, batch)
    assert loss.shape == (5,) and bool((loss[1:] > 0).all())
    assert float(loss[0]) == 0.0  # a 1-atom crystal has only a translation: nothing to learn


def point_mass_velocity(x, target, t, batch):
    return pbc_diff(target, x) / (1.0 - t[batch.crystal_idx, None])


@pytest.mark.parametrize("remove_mean", [False, True])
def test_torus_euler_with_the_exact_point_mass_velocity_ends_at_the_target(remove_mean):
    batch = make_batch([5, 1, 12, 3])
    target = torch.rand(batch.frac_coords.shape, generator=gen(0), dtype=F64)
    flow = TorusFlow(remove_mean=remove_mean)
    x = flow.sample_prior(batch, generator=gen(1))
    for t, dt in steps(7):
        tt = t.expand(batch.num_crystals)
        x = flow.step(x, point_mass_velocity(x, target, tt, batch), tt, dt, batch)
    assert bool(((x >= 0) & (x < 1)).all())
    offset = pbc_diff(x, target)
    if remove_mean:  # the same crystal, translated as a whole
        offset = offset - offset[batch.atom_offsets][batch.crystal_idx]
    torch.testing.assert_close(offset, torch.zeros_like(offset), atol=1e-12, rtol=0)


def test_torus_euler_with_the_exact_mixture_velocity_recovers_the_mixture_weights():
    # data: each atom sits at centre c_k with probability π_k; the conditional path from a uniform
    # x_prior to c is uniform on the box |pbc_diff(x, c)|_∞ ≤ (1 − t)/2, so the marginal velocity is
    # Σ_k w_k(x) logmap(x, c_k)/(1 − t) with w_k ∝ π_k·1[x in box_k].
    centres = torch.tensor([[0.2, 0.2, 0.2], [0.7, 0.6, 0.9]], dtype=F64)
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    batch = make_batch([1] * 4000)
    flow = TorusFlow(remove_mean=False)
    x = flow.sample_prior(batch, generator=gen(2))
    for t, dt in steps(50):
        logs = pbc_diff(centres[None], x[:, None])  # [N, 2, 3]
        ratio = logs.abs().amax(-1) / ((1 - t) / 2)  # ≤ 1 inside box_k
        inside = ratio <= 1
        # Euler can step just outside every box near an edge: fall back to the nearest box
        nearest = torch.nn.functional.one_hot(ratio.argmin(-1), 2).bool()
        w = weights * torch.where(inside.any(-1, keepdim=True), inside, nearest)
        w = w / w.sum(-1, keepdim=True)
        v = (w[..., None] * logs).sum(1) / (1 - t)
        x = flow.step(x, v, t.expand(batch.num_crystals), dt, batch)
    dist = pbc_diff(x[:, None], centres[None]).norm(dim=-1)  # [N, 2]
    on_centre = dist.min(-1).values < 1e-9
    assert float(on_centre.double().mean()) > 0.99, float(on_centre.double().mean())  # Euler errors only at edges
    freq = (dist.argmin(-1) == 0).double().mean()
    assert float(freq) == pytest.approx(0.3, abs=0.03)


def test_torus_anti_annealing_scales_the_velocity():
    batch = make_batch([2, 3])
    flow = TorusFlow(remove_mean=False, anti_annealing=2.0)
    x = torch.full((5, 3), 0.5, dtype=F64)
    v = torch.full((5, 3), 0.1, dtype=F64)
    t = torch.tensor([0.25, 0.5], dtype=F64)
    out = flow.step(x, v, t, 0.1, batch)
    torch.testing.assert_close(out[0], torch.full((3,), 0.5 + 0.1 * 0.1 * 1.5, dtype=F64))
    torch.testing.assert_close(out[-1], torch.full((3,), 0.5 + 0.1 * 0.1 * 2.0, dtype=F64))
    plain = flow.step(x, v, t, 0.1, batch, anti_annealing=0.0)
    torch.testing.assert_close(plain, x + 0.01)


def test_torus_prior_is_seeded_uniform_and_matches_the_template():
    batch = make_batch([3, 4], dtype=torch.float32)
    flow = TorusFlow()
    a, b = flow.sample_prior(batch, generator=gen(5)), flow.sample_prior(batch, generator=gen(5))
    assert torch.equal(a, b) and a.shape == (7, 3) and a.dtype == torch.float32
    assert torch.equal(flow.decode(flow.encode(batch), batch), batch.frac_coords)


# ---- LatticeFlow -----------------------------------------------------------------------------------
def test_lattice_standardizer_round_trip_and_data_informed_moments():
    stats = compute_dataset_stats(tiny_crystals())
    batch = tiny_batch()
    flow = LatticeFlow(stats)
    z = flow.encode(batch)
    assert z.shape == (5, 6)
    torch.testing.assert_close(z.mean(0), torch.zeros(6, dtype=F64), atol=1e-12, rtol=0)  # the data's own moments
    back = flow.decode(z, batch)
    torch.testing.assert_close(metric_tensor(back), metric_tensor(batch.lattice), rtol=1e-10, atol=1e-10)
    identity = LatticeStandardizer()
    torch.testing.assert_close(identity.decode(identity.encode(batch.lattice, batch.num_atoms), batch.num_atoms), back)
    with pytest.raises(ValueError, match="6 entries"):
        LatticeStandardizer((0.0,) * 5)


def test_lattice_std_is_floored_for_constant_code_entries():
    cubic = [c for c in tiny_crystals() if c.material_id in ("po_sc_1", "nacl_conv_8")]
    stats = compute_dataset_stats(cubic)
    flow = LatticeFlow(stats, min_std=1e-3)
    assert float(flow.standardizer.std[3:].min()) == pytest.approx(1e-3)
    z = flow.encode(CrystalBatch.collate(cubic, dtype=F64))
    assert bool(torch.isfinite(z).all())


def test_lattice_path_velocity_is_the_finite_difference_of_x_t():
    batch = tiny_batch()
    flow = LatticeFlow()
    x_data = flow.encode(batch)
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    h = 1e-6
    plus = flow.sample_path(x_data, t + h, batch, generator=gen(0))
    minus = flow.sample_path(x_data, t - h, batch, generator=gen(0))
    torch.testing.assert_close(plus.target, (plus.x_t - minus.x_t) / (2 * h), rtol=0, atol=1e-7)
    assert flow.loss(plus.target, plus, batch).abs().max() < 1e-24
    assert flow.loss(plus.target + 1.0, plus, batch).shape == (5,)


def test_lattice_euler_with_the_exact_velocity_recovers_a_gaussian_target():
    m = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3, -0.2], dtype=F64)
    s = torch.tensor([0.5, 0.25, 1.5, 1.0, 0.3, 2.0], dtype=F64)
    batch = make_batch([1] * 5000)  # ≤ 32768 elements per op: no intra-op threading overhead
    flow = LatticeFlow()
    x = flow.sample_prior(batch, generator=gen(0))
    for t, dt in steps(200):
        var = (1 - t) ** 2 + t**2 * s**2
        centred = x - t * m
        v = m + t * s**2 * centred / var - (1 - t) * centred / var  # E[x_data − x_prior | x_t]
        x = flow.step(x, v, t, dt, batch)
    assert bool(((x.mean(0) - m).abs() <= 4 * s / len(x) ** 0.5).all()), x.mean(0) - m  # 4 standard errors
    torch.testing.assert_close(x.std(0), s, rtol=0.03, atol=0)
    lat = flow.decode(x[:10], make_batch([1] * 10))
    assert bool((torch.linalg.det(lat) > 0).all())


# ---- MaskedTypeFlow --------------------------------------------------------------------------------
VOCAB = TypeVocabulary((1, 8, 14, 26))


def test_type_encode_decode_round_trip_and_unknown_elements():
    flow = MaskedTypeFlow(VOCAB)
    batch = make_batch([2, 3], z=8)
    classes = flow.encode(batch)
    assert torch.equal(classes, torch.full((5,), 2))
    assert torch.equal(flow.decode(classes, batch), batch.atomic_numbers)
    assert torch.equal(flow.decode(flow.sample_prior(batch), batch), torch.full((5,), MASK_Z))
    with pytest.raises(KeyError, match="not in this vocabulary"):
        flow.encode(make_batch([1], z=92))


def test_type_path_masks_with_probability_one_minus_t():
    flow = MaskedTypeFlow(VOCAB)
    batch = make_batch([1000] * 4)
    x_data = torch.randint(1, VOCAB.size, (4000,), generator=gen(0))
    t = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=F64)
    path = flow.sample_path(x_data, t, batch, generator=gen(1))
    masked = (path.x_t == 0).double().view(4, 1000).mean(1)
    torch.testing.assert_close(masked, 1 - t, atol=0.065, rtol=0)  # 4 standard errors of 1000 draws
    kept = path.x_t != 0
    assert torch.equal(path.x_t[kept], x_data[kept]) and torch.equal(path.target, x_data)


@pytest.mark.parametrize("weighting", ["none", "elbo"])
def test_type_loss_vanishes_for_a_perfect_prediction_and_counts_masked_atoms(weighting):
    flow = MaskedTypeFlow(VOCAB, weighting=weighting)
    batch = make_batch([3, 4, 2])
    x_data = torch.randint(1, VOCAB.size, (9,), generator=gen(0))
    path = flow.sample_path(x_data, torch.tensor([0.2, 0.5, 1.0], dtype=F64), batch, generator=gen(1))
    perfect = torch.full((9, VOCAB.size), -1e4, dtype=F64)
    perfect[torch.arange(9), x_data] = 1e4
    perfect[:, 0] = 1e9  # the mask logit is ignored
    loss = flow.loss(perfect, path, batch)
    assert loss.shape == (3,) and float(loss.abs().max()) < 1e-12
    uniform = torch.zeros(9, VOCAB.size, dtype=F64)
    loss = flow.loss(uniform, path, batch)
    assert float(loss[2]) == 0.0  # t = 1: nothing masked
    masked = (path.x_t == 0).double()
    per_atom = masked * math.log(VOCAB.size - 1)
    if weighting == "elbo":
        per_atom = per_atom / (1 - torch.tensor([0.2] * 3 + [0.5] * 4 + [1.0] * 2, dtype=F64)).clamp(min=1e-3)
        expected = torch.stack([per_atom[:3].mean(), per_atom[3:7].mean()])
    else:
        expected = torch.stack([per_atom[:3].sum() / masked[:3].sum(), per_atom[3:7].sum() / masked[3:7].sum()])
    torch.testing.assert_close(loss[:2], expected.nan_to_num(0.0))


@pytest.mark.parametrize("num_steps", [1, 10, 40])
def test_type_sampler_with_a_fixed_categorical_predictor_draws_its_frequencies(num_steps):
    probs = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=F64)
    logits = probs.clamp(min=1e-300).log().expand(6000, 5).clone()
    logits[:, 0] = 50.0  # a predictor that prefers the mask must still never draw it
    flow = MaskedTypeFlow(VOCAB)
    batch = make_batch([6] * 1000)
    x = flow.sample_prior(batch)
    g = gen(3)
    revealed = []
    for t, dt in steps(num_steps):
        x = flow.step(x, logits, t.expand(1000), dt, batch, generator=g)
        revealed.append(float((x != 0).double().mean()))
    assert int((x == 0).sum()) == 0
    freq = torch.bincount(x, minlength=5).double() / x.numel()
    torch.testing.assert_close(freq, probs, atol=0.026, rtol=0)  # 4 standard errors of 6000 draws
    # κ(t) = t: after the step to t the revealed fraction is t
    expected = torch.arange(1, num_steps + 1, dtype=F64) / num_steps
    torch.testing.assert_close(torch.tensor(revealed, dtype=F64), expected, atol=0.03, rtol=0)


def test_type_steps_are_seeded_and_never_remask():
    flow = MaskedTypeFlow(VOCAB)
    batch = make_batch([50])
    logits = torch.randn(50, VOCAB.size, generator=gen(0), dtype=F64)
    x = flow.sample_prior(batch)
    a = flow.step(x, logits, torch.tensor([0.3]), 0.2, batch, generator=gen(1))
    b = flow.step(x, logits, torch.tensor([0.3]), 0.2, batch, generator=gen(1))
    assert torch.equal(a, b)
    c = flow.step(a, logits, torch.tensor([0.5]), 0.2, batch, generator=gen(2))
    assert bool((c[a != 0] == a[a != 0]).all())


# ---- FixedField ------------------------------------------------------------------------------------
def test_fixed_field_keeps_the_template_for_csp():
    batch = tiny_batch()
    fixed = FixedField("atomic_numbers")
    x = fixed.sample_prior(batch)
    assert torch.equal(x, batch.atomic_numbers) and x is not batch.atomic_numbers
    path = fixed.sample_path(fixed.encode(batch), torch.zeros(5), batch)
    assert isinstance(path, PathSample) and torch.equal(path.x_t, batch.atomic_numbers)
    assert torch.equal(fixed.loss(None, path, batch), torch.zeros(5, dtype=F64))
    assert torch.equal(fixed.step(x, None, torch.zeros(5), 0.1, batch), x)
    assert torch.equal(fixed.decode(x, batch), x) and not fixed.has_corrector
