"""The ``cdvae`` family (CDVAE / Con-CDVAE) and latent optimisation.

What is promised: the encoder's μ is invariant to permutation, rotation and periodic translation;
the heads have the documented shapes and the composition rounding keeps the atom count; KL and the
reparameterisation are the closed forms; a few optimiser steps lower the loss; sampling gives valid
batches whose atom counts follow the num_atoms head (DNG) or the template (CSP); Con-CDVAE's prior
moves z with the condition; latent optimisation moves the predicted property toward the target while
the penalty keeps z near the data; checkpoints round-trip through the registry and the CLI; what the
family cannot do is a clear error.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from crystalforge.cli.main import main
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MASK_Z, TypeVocabulary
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, last_state
from crystalforge.generative.vae import (
    CDVAE,
    CDVAEConfig,
    LatentObjective,
    LatentSearch,
    optimise_latents,
    particle_swarm,
)
from crystalforge.generative.vae.networks import (
    composition_fractions,
    gaussian_kl,
    reparameterise,
    round_composition,
)
from crystalforge.generative.vae.prior import LatentDDPM
from crystalforge.io.files import read_structures, write_structures
from crystalforge.registry import build_model, resolve_config
from crystalforge.sampling.cfg import ClassifierFreeGuidance
from crystalforge.sampling.composition import AllowedElements
from crystalforge.sampling.constraints import FixedLattice
from crystalforge.testing import (
    assert_periodic_translation_invariant,
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    tiny_crystals,
)
from crystalforge.training.loading import load_checkpoint_model

NET = {"hidden": 16, "layers": 1, "fourier_frequencies": 2, "time_dim": 4}
TINY = {"latent_dim": 6, "encoder": NET, "decoder": NET, "head_hidden": 16, "property_dim": 8, "prior_steps": 10}
PLAN = SamplePlan(SamplerConfig(steps=3))


def labelled() -> list[Crystal]:
    """The tiny crystals with a made-up property ``y`` (the volume per atom, a structural quantity)."""
    return [replace(c, properties={"y": c.volume / c.num_atoms}) for c in tiny_crystals()]


def tiny_model(crystals=None, **changes) -> CDVAE:
    crystals = crystals or tiny_crystals()
    stats = compute_dataset_stats(crystals)
    config = resolve_config({**TINY, **changes}, stats, family="cdvae")
    model = build_model(config, stats, family="cdvae")
    assert isinstance(model, CDVAE)
    return model.double()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def masked(batch: CrystalBatch) -> CrystalBatch:
    return batch.replace(atomic_numbers=torch.full_like(batch.atomic_numbers, MASK_Z))


# ---- encoder, heads, KL ----------------------------------------------------------------------------
def test_encoder_mean_is_invariant():
    model = tiny_model()
    batch = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)

    def mu(b):
        return model.encode(b)[0]

    assert_permutation_equivariant(mu, batch)
    assert_rotation_equivariant(mu, batch, kind="scalar")
    assert_periodic_translation_invariant(mu, batch)
    assert mu(batch).shape == (5, 6)


def test_heads_shapes_and_composition_rounding():
    model = tiny_model()
    c = torch.randn(4, 6, dtype=torch.float64)
    k = len(model.config.elements)
    assert model.heads.num_atoms_logits(c).shape == (4, model.config.max_atoms) == (4, 8)
    assert model.heads.composition_logits(c).shape == (4, k)
    fractions = torch.softmax(torch.randn(4, k, dtype=torch.float64), -1)
    assert model.heads.lattice_code(c, fractions, torch.tensor([1, 2, 5, 8])).shape == (4, 6)

    probs = torch.tensor([[0.2, 0.2, 0.6, 0.0], [0.5, 0.25, 0.25, 0.0], [0.34, 0.33, 0.33, 0.0]])
    counts = round_composition(probs, torch.tensor([5, 6, 2]))
    assert counts.tolist() == [[1, 1, 3, 0], [3, 2, 1, 0], [1, 1, 0, 0]]  # ties: the first element
    sizes = torch.randint(1, 21, (50,))
    many = round_composition(torch.softmax(torch.randn(50, 7), -1), sizes)
    assert torch.equal(many.sum(1), sizes) and (many >= 0).all()

    batch = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    fractions = composition_fractions(batch, model.vocab)
    assert torch.allclose(fractions.sum(1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="nacl_conv_8: has element Z=11, outside"):
        composition_fractions(batch, TypeVocabulary((6, 8, 14, 22, 56, 84)))
    with pytest.raises(ValueError, match="po_sc_1: has a masked atom"):
        composition_fractions(masked(batch), model.vocab)


def test_round_composition_sums_to_the_atom_count_and_skips_zero_probabilities():
    probs = torch.softmax(torch.randn(200, 9, dtype=torch.float64), -1)
    probs[:, 3] = 0.0
    probs = probs / probs.sum(1, keepdim=True)
    n = torch.randint(1, 30, (200,))
    counts = round_composition(probs, n)
    assert torch.equal(counts.sum(1), n)
    assert (counts[:, 3] == 0).all()
    assert ((counts - probs * n[:, None]).abs() < 1.0).all()  # each count within one atom of n·p


def test_kl_and_reparameterisation_are_the_closed_forms():
    mu = torch.tensor([[0.3, -1.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    log_var = torch.tensor([[-0.5, 0.2], [0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, log_var), torch.distributions.kl_divergence(q, p).sum(-1))
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0.0

    draws = reparameterise(mu.expand(20000, 2, 2), log_var.expand(20000, 2, 2), generator=gen())
    torch.testing.assert_close(draws.mean(0), mu.detach(), atol=0.05, rtol=0.0)
    torch.testing.assert_close(draws.std(0), (0.5 * log_var.detach()).exp(), atol=0.05, rtol=0.0)
    z = reparameterise(mu, log_var, generator=gen())
    z.sum().backward()  # the draw is differentiable in both parameters
    assert mu.grad is not None and log_var.grad is not None and log_var.grad.abs().sum() > 0


# ---- training -----------------------------------------------------------------------------------------
def test_a_few_steps_lower_the_loss():
    crystals = labelled()
    model = tiny_model(crystals, predict=["y"], beta_warmup_steps=0)
    batch = CrystalBatch.collate(crystals, dtype=torch.float64)

    def evaluate():
        model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in model.loss(batch, generator=gen(1)).items()}

    before = evaluate()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(40):
        out = model.loss(batch, generator=gen(100 + i))
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    after = evaluate()
    assert after["loss"] < 0.8 * before["loss"]
    for term in ("num_atoms", "composition", "lattice", "property"):
        assert after[term] < before[term], term
    assert int(model.step) == 40 and not torch.equal(model.latent_cov, torch.eye(6, dtype=torch.float64))


def test_diffusion_decoder_reuses_the_flagship_score_process():
    model = tiny_model(kind="diffusion")
    assert type(model.decoder.processes["frac_coords"]).__name__ == "WrappedNormalDiffusion"
    assert model.default_sampler().steps == 1000 and model.decoder.has_corrector
    out = model.loss(CrystalBatch.collate(tiny_crystals(), dtype=torch.float64), generator=gen())
    assert torch.isfinite(out["loss"]) and out["decoder"] > 0
    state = model.eval().decode(torch.zeros(2, 6, dtype=torch.float64), PLAN, generator=gen())
    state.validate()


def test_loss_refuses_crystals_larger_than_max_atoms():
    model = tiny_model(max_atoms=5)
    with pytest.raises(ValueError, match="nacl_conv_8: has 8 atoms, more than this cdvae model's max_atoms"):
        model.loss(CrystalBatch.collate(tiny_crystals(), dtype=torch.float64))


# ---- sampling ---------------------------------------------------------------------------------------
def test_dng_sampling_follows_the_heads():
    model = tiny_model().eval()
    assert isinstance(model, GenerativeModel) and model.tasks == ("csp", "dng")
    typed = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    template = masked(typed)
    z = torch.randn(5, 6, generator=gen(3), dtype=torch.float64) * 2
    out = model.decode(z, PLAN, template=template, generator=gen())
    out.validate()
    with torch.no_grad():
        expected_n = model.heads.num_atoms_logits(z).argmax(-1) + 1
        probs = torch.softmax(model.heads.composition_logits(z).double(), -1)
    assert torch.equal(out.num_atoms, expected_n)
    assert torch.equal((composition_fractions(out, model.vocab) * expected_n[:, None]).round().long(),
                       round_composition(probs, expected_n))  # fmt: skip
    assert out.material_ids == template.material_ids and "cdvae.latent" not in out.properties
    # a batch mixing a CSP crystal (NaCl, typed) with DNG ones: each is treated on its own
    mixed = template.replace(atomic_numbers=torch.where(typed.crystal_idx == 2, typed.atomic_numbers, MASK_Z))
    both = model.decode(z, PLAN, template=mixed, generator=gen())
    both.validate()
    assert int(both.num_atoms[2]) == 8 and sorted(both.split()[2].atomic_numbers.tolist()) == [11] * 4 + [17] * 4
    keep = torch.arange(5) != 2
    assert torch.equal(both.num_atoms[keep], expected_n[keep])
    # sample(): z drawn from N(0, I); a seed fixes everything
    a = last_state(model.sample(template, PLAN, generator=gen(7)))
    b = last_state(model.sample(template, PLAN, generator=gen(7)))
    a.validate()
    assert torch.equal(a.atomic_numbers, b.atomic_numbers) and torch.equal(a.frac_coords, b.frac_coords)


def test_csp_keeps_the_composition_and_element_guidance_restricts_dng():
    model = tiny_model().eval()
    template = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    out = last_state(model.sample(template, PLAN, generator=gen()))
    out.validate()
    assert torch.equal(out.atomic_numbers, template.atomic_numbers) and torch.equal(out.num_atoms, template.num_atoms)
    constrained = FixedLattice(template.lattice)  # constraints apply to CSP crystals
    fixed = last_state(model.sample(template, replace(PLAN, constraints=(constrained,)), generator=gen()))
    torch.testing.assert_close(fixed.lattice, template.lattice)

    only = AllowedElements.for_model(model, "O-Ti")
    dng = last_state(model.sample(masked(template), replace(PLAN, guidance=(only,)), generator=gen()))
    assert set(dng.atomic_numbers.tolist()) <= {8, 22}


def test_csp_latents_are_resampled_towards_the_given_composition():
    from crystalforge.generative.vae.csp_latent import composition_log_likelihood, latents_for_compositions

    model = tiny_model().eval()
    with torch.no_grad():  # heads that depend strongly on z, so the draws differ in how they read a formula
        model.heads.composition[-1].weight.mul_(30.0)
        model.heads.num_atoms[-1].weight.mul_(30.0)
    template = CrystalBatch.collate(tiny_crystals() * 8, dtype=torch.float64)
    plain = model.sample_latent(template, generator=gen(1))
    assert torch.equal(latents_for_compositions(model, template, 1, generator=gen(1)), plain)
    fitted = latents_for_compositions(model, template, 64, generator=gen(1))
    with torch.no_grad():
        before = composition_log_likelihood(model, plain, template)
        after = composition_log_likelihood(model, fitted, template)
    assert float(after.mean()) > float(before.mean()) + 1.0  # nats per crystal
    assert int((after > before).sum()) > 0.75 * template.num_crystals

    # the likelihood is the heads' multinomial: n Σ f log p plus the size class's log-probability
    one = template.index_select([0])
    n = int(one.num_atoms[0])
    with torch.no_grad():
        c = model.conditioning(plain, template)
        log_p = torch.log_softmax(model.heads.composition_logits(c[:1]), -1)[0]
        size = torch.log_softmax(model.heads.num_atoms_logits(c[:1]), -1)[0, n - 1]
    classes = torch.as_tensor(model.vocab.class_of_z())[one.atomic_numbers] - 1
    expected = log_p[classes].sum() + size
    torch.testing.assert_close(before[0], expected)

    # DNG crystals of a mixed template keep their own first draw
    typed = CrystalBatch.collate(tiny_crystals() * 2, dtype=torch.float64)
    dng = torch.arange(typed.num_crystals) >= len(tiny_crystals())
    mixed = typed.replace(atomic_numbers=torch.where(dng[typed.crystal_idx], MASK_Z, typed.atomic_numbers))
    z = latents_for_compositions(model, mixed, 16, generator=gen(2))
    torch.testing.assert_close(z[dng], model.sample_latent(mixed, generator=gen(2))[dng])
    with pytest.raises(ValueError, match="csp_latent_draws"):
        tiny_model(csp_latent_draws=0)


def test_refusals_are_clear():
    model = tiny_model().eval()
    template = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cannot apply constraints \(FixedLattice\) in de novo generation"):
        last_state(model.sample(masked(template), replace(PLAN, constraints=(FixedLattice(template.lattice),))))
    partial = template.atomic_numbers.clone()
    partial[3] = MASK_Z  # one Na of NaCl
    with pytest.raises(ValueError, match="nacl_conv_8: some atoms are typed and others masked"):
        last_state(model.sample(template.replace(atomic_numbers=partial), PLAN))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lattice'\]"):
        last_state(model.sample(template, SamplePlan(SamplerConfig(steps=2, anti_annealing={"lattice": 1.0}))))
    with pytest.raises(ValueError, match="start_time: the cdvae family decodes from its latent"):
        last_state(model.sample(template, SamplePlan(SamplerConfig(steps=2, start_time=0.5))))
    with pytest.raises(ValueError, match="no latent property predictor"):
        model.predict_properties(torch.zeros(1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="latent predictor has no 'band_gap'"):
        optimise_latents(model, LatentObjective("band_gap"), n=2)
    with pytest.raises(ValueError, match="training data has no property \\['band_gap'\\]"):
        tiny_model(labelled(), conditions=["band_gap"])
    with pytest.raises(ValueError, match="unknown loss_weights"):
        CDVAEConfig(loss_weights={"kl": 1.0})
    with pytest.raises(ValueError, match="a window needs low, high or both"):
        LatentObjective("y", "window")


# ---- Con-CDVAE ----------------------------------------------------------------------------------------
def test_con_cdvae_prior_moves_z_with_the_condition():
    """A tiny latent DDPM trained on z ≈ (y, −y) for y = ±1 samples z on the side of the asked y."""
    prior = LatentDDPM(2, ("y",), {"y": (0.0, 1.0)}, hidden=32, layers=2, steps=20).double()
    base = CrystalBatch.collate([tiny_crystals()[0]] * 64, dtype=torch.float64)
    optimiser = torch.optim.Adam(prior.parameters(), lr=1e-2)
    g = gen(0)
    for _ in range(300):
        y = torch.randint(0, 2, (64,), generator=g).double() * 2 - 1
        z = torch.stack([y, -y], -1) + 0.1 * torch.randn(64, 2, generator=g, dtype=torch.float64)
        hide = torch.rand(64, generator=g) < 0.2
        batch = base.replace(properties={"y": y}, condition_mask={"y": ~hide})
        loss = prior.loss(z, batch, generator=g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for value in (1.0, -1.0):
        asked = base.replace(properties={"y": torch.full((64,), value, dtype=torch.float64)})
        z = prior.sample(asked, generator=gen(5))
        assert (z[:, 0] * value > 0.5).float().mean() > 0.9 and (z[:, 1] * value < -0.5).float().mean() > 0.9
    hidden = base.replace(properties={"y": torch.full((64,), float("nan"), dtype=torch.float64)})
    z = prior.sample(hidden, generator=gen(5))
    assert 0.2 < (z[:, 0] > 0).float().mean() < 0.8  # unconditional: both modes


def test_con_cdvae_samples_through_its_prior_and_classifier_free_guidance():
    crystals = labelled()
    model = tiny_model(crystals, conditions=["y"]).eval()
    assert model.conditions == ("y",) and model.prior is not None
    template = masked(CrystalBatch.collate(crystals, dtype=torch.float64))
    low = template.replace(properties={"y": torch.full((5,), 5.0, dtype=torch.float64)})
    high = template.replace(properties={"y": torch.full((5,), 40.0, dtype=torch.float64)})
    z_low, z_high = model.sample_latent(low, generator=gen()), model.sample_latent(high, generator=gen())
    assert not torch.allclose(z_low, z_high)  # the prior reads the condition
    cfg = ClassifierFreeGuidance(scale=2.0, conditions=model.conditions)
    out = last_state(model.sample(high, replace(PLAN, guidance=(cfg,)), generator=gen()))
    out.validate()
    assert torch.equal(out.properties["y"], high.properties["y"])


def test_an_unconditional_latent_ddpm_learns_where_the_posteriors_are():
    """Two-stage CDVAE: with ``latent_prior: ddpm`` an unconditional model samples z near its data, not N(0, I)."""
    model = tiny_model(latent_prior="ddpm").eval()
    assert model.conditions == () and model.prior is not None
    batch = CrystalBatch.collate(tiny_crystals(), dtype=torch.float64)
    assert "prior" in model.loss(batch, generator=gen())
    d = model.config.latent_dim
    base = CrystalBatch.collate([tiny_crystals()[0]] * 64, dtype=torch.float64)
    optimiser = torch.optim.Adam(model.prior.parameters(), lr=1e-2)
    g = gen(0)
    centre = torch.full((d,), 3.0, dtype=torch.float64)  # far from N(0, I): what a small KL weight allows
    for _ in range(300):
        z = centre + 0.1 * torch.randn(64, d, generator=g, dtype=torch.float64)
        loss = model.prior.loss(z, base, generator=g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    z = model.sample_latent(base, generator=gen(5))
    assert float((z - centre).norm(dim=-1).mean()) < 0.5 * float(centre.norm())
    with pytest.raises(ValueError, match="latent_prior must be"):
        CDVAEConfig(latent_prior="flow")


def test_the_posterior_prior_samples_the_running_moments():
    model = tiny_model(latent_prior="posterior").eval()
    assert model.prior is None
    d = model.config.latent_dim
    model.latent_mean.fill_(2.0)
    model.latent_cov.copy_(torch.diag(torch.linspace(0.1, 1.0, d, dtype=model.latent_cov.dtype)))
    base = CrystalBatch.collate([tiny_crystals()[0]] * 4000, dtype=torch.float64)
    z = model.sample_latent(base, generator=gen(1))
    torch.testing.assert_close(z.mean(0), torch.full((d,), 2.0, dtype=z.dtype), atol=0.06, rtol=0)
    torch.testing.assert_close(z.var(0), torch.linspace(0.1, 1.0, d, dtype=z.dtype), atol=0.08, rtol=0.1)


# ---- latent optimisation -----------------------------------------------------------------------------
def trained_predictor_model() -> CDVAE:
    crystals = labelled()
    model = tiny_model(crystals, predict=["y"])
    batch = CrystalBatch.collate(crystals, dtype=torch.float64)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(15):
        out = model.loss(batch, generator=gen(i))
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize("method", ["gradient", "swarm"])
def test_latent_optimisation_moves_toward_the_target(method):
    model = trained_predictor_model()
    mean, std = model.config.property_moments["y"]
    target = LatentObjective("y", "window", low=mean + 2 * std, high=mean + 3 * std)
    search = LatentSearch(method=method, steps=60, particles=8, lr=0.1, penalty_weight=0.01)
    result = optimise_latents(model, target, n=4, search=search, plan=PLAN, generator=gen())
    gap_start = (target.low - result.start_predicted).clamp(min=0)
    gap_end = (target.low - result.predicted).clamp(min=0)
    assert gap_end.mean() < 0.5 * gap_start.mean()
    assert result.crystals is not None and result.crystals.num_crystals == 4
    result.crystals.validate()
    assert all(p.requires_grad for p in model.parameters())  # restored after the search


def test_penalty_keeps_latents_near_the_data():
    model = trained_predictor_model()
    objective = LatentObjective("y", "max")

    def run(weight, method="gradient"):
        search = LatentSearch(method=method, steps=200, lr=0.2, particles=8, penalty="prior", penalty_weight=weight)
        return optimise_latents(model, objective, n=4, search=search, decode=False, generator=gen())

    free, held = run(0.0), run(1.0)
    assert held.z.norm(dim=1).max() < 0.5 * free.z.norm(dim=1).min()
    assert held.distance.max() < 5.0  # ‖z‖²/d stays a few prior standard deviations out
    assert free.predicted.min() > held.predicted.max()  # the unpenalised search went further (and off the data)
    swarm = run(1.0, "swarm")
    assert swarm.distance.max() < 5.0


def test_particle_swarm_finds_a_known_maximum():
    centre = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def fitness(z):
        return -(z - centre).pow(2).sum(-1)

    start = torch.randn(3, 16, 3, generator=gen(), dtype=torch.float64) * 3
    best, value = particle_swarm(fitness, start, steps=150, generator=gen(1))
    torch.testing.assert_close(best, centre.expand(3, 3), atol=1e-2, rtol=0.0)
    assert (value > -1e-3).all()


# ---- checkpoints and the CLI -------------------------------------------------------------------------
def test_checkpoint_round_trip_through_the_registry():
    crystals = labelled()
    stats = compute_dataset_stats(crystals)
    model = tiny_model(crystals, conditions=["y"], predict=["y"]).float()
    model.train()
    model.loss(CrystalBatch.collate(crystals))  # moves the step counter and latent moments
    from crystalforge.config import to_dict
    from crystalforge.training.config import TrainConfig

    config = TrainConfig(family="cdvae", model=resolve_config(TINY | {"conditions": ["y"], "predict": ["y"]}, stats,
                                                             family="cdvae"))  # fmt: skip
    data = {"config": to_dict(config), "weights": model.state_dict(), "dataset_stats": stats.to_dict(),
            "family": "cdvae", "format_version": 1}  # fmt: skip
    loaded, _, _ = load_checkpoint_model(data)
    assert isinstance(loaded, CDVAE) and loaded.config == model.config
    model.eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    template = masked(CrystalBatch.collate(crystals))
    a, b = (last_state(m.sample(template, PLAN, generator=gen(2))) for m in (model, loaded))
    assert torch.equal(a.atomic_numbers, b.atomic_numbers) and torch.allclose(a.frac_coords, b.frac_coords)


def test_trains_generates_and_predicts_through_the_cli(tmp_path):
    data = tmp_path / "data"
    write_structures(tiny_crystals()[1:], data / "tiny.extxyz")
    net = "{hidden: 8, layers: 1, fourier_frequencies: 2, time_dim: 4}"
    config = tmp_path / "cdvae.yaml"
    config.write_text(
        f"name: tiny-cdvae\nfamily: cdvae\nmodel: {{latent_dim: 4, encoder: {net}, decoder: {net}, head_hidden: 8}}\n"
        f"data: {{dataset: {data}, val_split: null, batch_size: 4}}\n"
        "optim: {lr: 0.01, warmup_steps: 1, ema_decay: 0.0}\n"
        "trainer: {max_epochs: 2, accelerator: cpu, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["family"] == "cdvae" and ckpt["config"]["model"]["max_atoms"] == 8
    gen_dir = tmp_path / "gen"
    assert main(["generate", "--model", str(run / "model.pt"), "-n", "3", "--steps", "2", "--out", str(gen_dir)]) == 0
    assert json.loads((gen_dir / "run.json").read_text())["sampler"]["steps"] == 2
    failures = gen_dir / "failures.csv"
    failed = len(failures.read_text().splitlines()) - 1 if failures.exists() else 0
    assert len(list((gen_dir / "cif").glob("*.cif"))) + failed == 3
    csp = tmp_path / "csp"
    args = ["csp", "--model", str(run / "model.pt"), "--formula", "NaCl", "Si2", "--steps", "2", "--out", str(csp)]
    assert main(args) == 0
    written = read_structures(csp / "samples.extxyz") if (csp / "samples.extxyz").exists() else []
    assert written, "no CSP structure was written"
    for crystal in written:  # CSP keeps each formula's composition
        expected = {"NaCl": [11, 17], "Si2": [14, 14]}[str(crystal.material_id)]
        assert sorted(crystal.atomic_numbers.tolist()) == expected
