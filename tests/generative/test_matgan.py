"""The ``matgan`` family: composition matrices, the one-optimiser WGAN-GP loss, sampling through a CSP model.

What is promised: compositions survive the matrix encoding exactly and bad records are named; one
backward of ``loss`` gives the critic only its critic gradient and the generator only its generator
gradient (every ``n_critic``-th call); a few hundred steps of one optimiser pull the generator's draws
onto a tiny training set; sampling hands the drawn (or given) compositions to a CSP model, so atom
counts follow the compositions; element sets mask the generator's rows; SMACT screening rejects
non-neutral formulas; checkpoints round-trip and load their CSP model by name; the statistics are
the published ones, computed exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch

from crystalforge.cli.main import main
from crystalforge.config import from_dict, to_dict
from crystalforge.core.batch import CrystalBatch
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.gan import (
    CompositionCodec,
    MatGAN,
    MatGANConfig,
    composition_statistics,
    is_charge_neutral,
    reduced_formula,
)
from crystalforge.generative.gan.drawing import draw_counts
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, last_state
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.io.files import write_structures
from crystalforge.registry import build_model, family_names, resolve_config
from crystalforge.sampling.composition import AllowedElements
from crystalforge.sampling.templates import parse_formula, template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals
from crystalforge.training.checkpoint import save_checkpoint
from crystalforge.training.config import TrainConfig
from crystalforge.training.loading import load_checkpoint_model

SMALL = {"latent_dim": 16, "hidden": 64, "critic_hidden": 64, "screen": False}
TINY_CSP = ModelConfig(
    kind="flow", task="csp", backbone=BackboneConfig(hidden=16, layers=2, fourier_frequencies=3, time_dim=8)
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def composition(z) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(Counter(int(v) for v in z).items()))


def make_gan(crystals=None, **config) -> MatGAN:
    crystals = crystals or tiny_crystals()
    stats = compute_dataset_stats(crystals)
    model = build_model(resolve_config({**SMALL, **config}, stats, family="matgan"), stats, family="matgan")
    assert isinstance(model, MatGAN)
    return model


def tiny_csp() -> GenerativeModel:
    stats = compute_dataset_stats(tiny_crystals())
    return build_model(resolve_config(TINY_CSP, stats), stats).eval()


TRAIN = tiny_crystals()[1:4]  # Si2, Na4Cl4, BaTiO3


@pytest.fixture(scope="module")
def trained() -> MatGAN:
    """A GAN trained on three compositions with one Adam, as the shared loop does (about 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: the autouse one-thread fixture has not run yet
    torch.manual_seed(0)
    model = make_gan(TRAIN)
    batch = CrystalBatch.collate([TRAIN[i % 3] for i in range(48)])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    model.train()
    for _ in range(600):
        optimiser.zero_grad(set_to_none=True)
        model.loss(batch)["loss"].backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return model.eval()


def hit_rate(model: MatGAN, n: int = 300) -> float:
    """Share of raw draws that are exactly one of the training compositions."""
    counts = draw_counts(model.generator, n, generator=gen(1))
    known = {composition(c.atomic_numbers) for c in TRAIN}
    return sum(tuple(sorted(model.codec.composition(r).items())) in known for r in counts) / n


# ---- encoding ------------------------------------------------------------------------------------
def test_composition_matrices_round_trip_and_name_bad_records():
    crystals = tiny_crystals()
    stats = compute_dataset_stats(crystals)
    codec = CompositionCodec(tuple(stats.elements), stats.max_atoms)
    batch = CrystalBatch.collate(crystals)
    counts = codec.counts(batch)
    matrix = codec.encode(batch)
    assert matrix.shape == (len(crystals), len(stats.elements), stats.max_atoms + 1)
    assert torch.equal(matrix.sum(-1), torch.ones(matrix.shape[:2]))  # one-hot rows
    assert torch.equal(codec.decode(matrix), counts)
    z, num = codec.atomic_numbers(counts)
    assert num.tolist() == batch.num_atoms.tolist()
    for crystal, part in zip(crystals, torch.split(z, num.tolist()), strict=True):
        assert composition(part) == composition(crystal.atomic_numbers)
    assert torch.equal(codec.counts_of([codec.composition(r) for r in counts]), counts)

    narrow = CompositionCodec((11, 17), 8)
    with pytest.raises(ValueError, match=r"crystal 'si' \(#1\).*Si are not in the composition vocabulary"):
        narrow.counts(CrystalBatch.collate([crystals[2], crystals[1]]).replace(material_ids=("nacl", "si")))
    with pytest.raises(ValueError, match="4 atoms of Na exceed the largest count of the composition matrix \\(3\\)"):
        CompositionCodec((11, 17), 3).counts(CrystalBatch.collate([crystals[2]]))


def test_config_is_resolved_from_data_and_checked():
    assert "matgan" in family_names()
    model = make_gan()
    stats = compute_dataset_stats(tiny_crystals())
    assert model.codec.elements == tuple(stats.elements) and model.config.max_count == stats.max_atoms
    assert isinstance(model, GenerativeModel) and model.tasks == ("dng",)
    assert (model.config.task, model.config.kind) == ("dng", "gan")  # what a shipped model's card checks
    with pytest.raises(ValueError, match="n_critic=0"):
        MatGANConfig(n_critic=0)
    with pytest.raises(ValueError, match="csp_model must name"):
        MatGANConfig(csp_model=" ")
    with pytest.raises(ValueError, match="resolve the config from data"):
        MatGAN(MatGANConfig())


# ---- the one-optimiser loss ----------------------------------------------------------------------
def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_one_backward_gives_each_network_only_its_own_gradient():
    model = make_gan(n_critic=3)
    model.train()
    batch = CrystalBatch.collate(tiny_crystals())
    # a critic-only call (step 0 of 3): the generator gets no gradient at all
    model.loss(batch, generator=gen(5))["loss"].backward()
    assert all(g is None for g in _grads(model.generator))
    critic_only = _grads(model.critic)
    assert all(g is not None for g in critic_only) and sum(g.abs().sum() for g in critic_only) > 0
    # the generator's call (step 2 of 3) with the same draws: the critic's gradient is unchanged
    model.zero_grad(set_to_none=True)
    model.step.fill_(2)
    out = model.loss(batch, generator=gen(5))
    out["loss"].backward()
    assert int(model.step) == 3
    for a, b in zip(critic_only, _grads(model.critic), strict=True):
        torch.testing.assert_close(a, b)
    # ... and the generator's is exactly that of −D(G(z)) with the same z
    joint = _grads(model.generator)
    model.zero_grad(set_to_none=True)
    z = torch.randn(batch.num_crystals, model.config.latent_dim, generator=gen(5))
    fake, _ = model.generator(z)
    (-model.critic(fake).mean()).backward()
    for a, b in zip(joint, _grads(model.generator), strict=True):
        assert a is not None and b is not None and a.abs().sum() > 0
        torch.testing.assert_close(a, b)
    assert set(out) == {"loss", "critic_loss", "wasserstein", "gradient_penalty", "generator_loss"}
    torch.testing.assert_close(out["loss"].detach(), out["critic_loss"] + out["generator_loss"])


def test_validation_reports_the_parts_without_counting_a_step():
    model = make_gan().eval()
    with torch.no_grad():
        out = model.loss(CrystalBatch.collate(tiny_crystals()), generator=gen(0))
    assert int(model.step) == 0 and float(out["gradient_penalty"]) > 0
    torch.testing.assert_close(out["loss"], out["critic_loss"])


def test_a_few_hundred_steps_pull_the_draws_onto_the_training_compositions(trained):
    before = hit_rate(make_gan(TRAIN))
    after = hit_rate(trained)
    assert before < 0.05 and after > 0.4
    drawn = Counter(tuple(sorted(trained.codec.composition(r).items())) for r in trained.draw(300, generator=gen(2))[0])
    assert sum(drawn[composition(c.atomic_numbers)] > 0 for c in TRAIN) >= 2  # not one collapsed mode


# ---- sampling through a CSP model ----------------------------------------------------------------
def test_sampling_hands_the_drawn_compositions_to_the_csp_model(trained):
    trained.set_csp_model(tiny_csp())
    template = template_from_num_atoms([3, 3, 3, 3, 3])  # the sizes are not kept: compositions decide
    state = last_state(trained.sample(template, SamplePlan(), generator=gen(7)))
    state.validate()
    expected, _ = trained.draw(5, generator=gen(7))
    assert state.num_atoms.tolist() == expected.sum(1).tolist()
    for crystal, row in zip(state.split(), expected, strict=True):
        assert dict(composition(crystal.atomic_numbers)) == trained.codec.composition(row)
    # a given composition is kept as it is (the structure stage alone)
    given = template_from_compositions([parse_formula("NaCl"), parse_formula("Si2")])
    state = last_state(trained.sample(given, SamplePlan(), generator=gen(7)))
    assert torch.equal(state.atomic_numbers, given.atomic_numbers)
    mixed = given.replace(atomic_numbers=torch.tensor([11, 0, 14, 14]))
    with pytest.raises(ValueError, match="some atom types given and some masked"):
        last_state(trained.sample(mixed, SamplePlan()))


def test_plan_constraints_act_on_the_structure_stage_and_keep_the_types(trained):
    from crystalforge.sampling.composition import FixedComposition
    from crystalforge.sampling.constraints import FixedLattice

    trained.set_csp_model(tiny_csp())
    seen = []

    class Spy:
        def apply(self, state, t, context):
            seen.append(state.atomic_numbers.clone())
            return state

    given = template_from_compositions([parse_formula("Na4Cl4"), parse_formula("BaTiO3")])
    lattice = 5.0 * torch.eye(3)
    # what ``generate --composition`` adds (it writes vocabulary classes as the types' working value)
    plan = SamplePlan(constraints=(Spy(), FixedComposition.for_model(trained), FixedLattice(lattice)))
    state = last_state(trained.sample(given, plan, generator=gen(0)))
    assert len(seen) > 3 and all(torch.equal(z, given.atomic_numbers) for z in seen)  # never vocabulary classes
    assert torch.equal(state.atomic_numbers, given.atomic_numbers)
    torch.testing.assert_close(state.lattice, lattice.expand(2, 3, 3))


def test_element_sets_mask_rows_and_other_guidance_is_refused(trained):
    trained.set_csp_model(tiny_csp())
    allowed = AllowedElements.for_model(trained, "Na,Cl,Si")  # finds the generator's vocabulary
    state = last_state(
        trained.sample(template_from_num_atoms([2] * 8), SamplePlan(guidance=(allowed,)), generator=gen(3))
    )
    assert set(state.atomic_numbers.tolist()) <= {11, 17, 14}
    # rejection first: compositions the generator proposes inside the set, none cut down
    sodium_chloride = torch.isin(torch.tensor(trained.codec.elements), torch.tensor([11, 17]))
    counts, tally = trained.draw(20, generator=gen(3), row_mask=sodium_chloride)
    assert tally.masked == 0 and tally.outside > 0
    found = Counter(tuple(sorted(trained.codec.composition(r).items())) for r in counts)
    assert set(found) <= {((11, 4), (17, 4)), ((11, 4),), ((17, 4),)} and found[((11, 4), (17, 4))] >= 10
    # a set the generator seldom proposes (O alone): some draws are cut down, counted, still inside the set
    oxygen = torch.tensor(trained.codec.elements) == 8
    counts, tally = trained.draw(5, generator=gen(3), row_mask=oxygen, screen=False)
    assert 1 <= tally.masked < 5 and all(set(trained.codec.composition(r)) == {8} for r in counts)

    class Other:
        requires_grad = False

        def __call__(self, predict, state, t):
            return predict(state, t)

    with pytest.raises(ValueError, match="the matgan family cannot use guidance \\(Other\\)"):
        last_state(trained.sample(template_from_num_atoms([2]), SamplePlan(guidance=(Other(),))))


def test_the_csp_model_must_exist_and_predict_structures(trained):
    with pytest.raises(ValueError, match="start_time: the matgan family draws compositions"):
        last_state(trained.sample(template_from_num_atoms([2]), SamplePlan(SamplerConfig(start_time=0.5))))
    fresh = make_gan(TRAIN)
    with pytest.raises(RuntimeError, match="no CSP model to build structures"):
        last_state(fresh.sample(template_from_num_atoms([2]), SamplePlan()))
    stats = compute_dataset_stats(tiny_crystals())
    dng = build_model(resolve_config({"task": "dng", "backbone": to_dict(TINY_CSP.backbone)}, stats), stats)
    with pytest.raises(ValueError, match="is a DNG model; it must predict structures"):
        fresh.set_csp_model(dng)
    from crystalforge.training.loading import _load_by_name

    missing = MatGAN(replace(fresh.config, csp_model="no-such-model.pt"))
    missing.bind_model_loader(_load_by_name)
    with pytest.raises(KeyError, match=r"csp_model no-such-model\.pt: unknown model.*not a shipped"):
        missing.csp_model()


def test_an_untrained_generator_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"got no composition with 1\.\.8 atoms.*untrained or collapsed"):
        make_gan(rounds=2, per_round=2).draw(3, generator=gen(0))


# ---- screening and statistics --------------------------------------------------------------------
def test_screening_flags_non_neutral_compositions(trained):
    assert is_charge_neutral({11: 4, 17: 4}) and is_charge_neutral(parse_formula("BaTiO3"))
    assert not is_charge_neutral({11: 2, 17: 1}) and not is_charge_neutral(parse_formula("NaCl2"))
    assert reduced_formula({17: 4, 11: 4}) == ((11, 1), (17, 1))
    with pytest.raises(ValueError, match="empty composition"):
        reduced_formula({})
    counts, tally = trained.draw(40, generator=gen(4), screen=True)
    assert tally.unscreened == 0 and all(is_charge_neutral(trained.codec.composition(r)) for r in counts)


def test_statistics_are_the_published_ones(monkeypatch, trained):
    from crystalforge.generative.gan import statistics

    codec = trained.codec
    rows = [
        {11: 4, 17: 4},
        {11: 1, 17: 1},
        {11: 2, 17: 1},
        {14: 2},
        {},
        {8: 3, 22: 1, 56: 1},
        {38: 1, 8: 1},
        {11: 1, 17: 1},
    ]
    rows[6] = {8: 1, 56: 1}  # BaO: neutral, not in training, held out
    monkeypatch.setattr(statistics, "draw_counts", lambda net, n, generator=None: codec.counts_of(rows[:n]))
    held = [parse_formula("BaO"), parse_formula("SrO"), parse_formula("NaCl")]  # NaCl is a training formula
    stats = composition_statistics(trained, 8, train=[c.atomic_numbers for c in TRAIN], held_out=held)
    assert stats.valid == 7 / 8 and stats.num_valid == 7  # the empty draw cannot be a crystal
    assert stats.charge_neutral == 6 / 7  # Na2Cl fails
    assert stats.unique == 5 / 7  # NaCl, Na2Cl, Si, BaTiO3, BaO
    assert stats.novel == 2 / 7  # Na2Cl and BaO
    assert stats.num_held_out == 2 and stats.num_recovered == 1 and stats.recovery == 0.5
    # the same draws, as a caller scoring them otherwise too gets them: the usable ones, in draw order
    assert statistics.usable_draws(trained, 8) == [r for r in rows if r]


# ---- checkpoints and the shared training loop ----------------------------------------------------
def save_tiny_csp(path) -> str:
    stats = compute_dataset_stats(tiny_crystals())
    config = TrainConfig(model=resolve_config(TINY_CSP, stats))
    save_checkpoint(
        path, family="joint", config=to_dict(config), weights=tiny_csp().state_dict(), dataset_stats=stats.to_dict()
    )
    return str(path)


def test_checkpoint_round_trip_loads_the_csp_model_by_name(tmp_path, trained):
    csp_path = save_tiny_csp(tmp_path / "csp.pt")
    config = TrainConfig(family="matgan", model=replace(trained.config, csp_model=csp_path))
    path = save_checkpoint(
        tmp_path / "gan.pt", family="matgan", config=to_dict(config), weights=trained.state_dict(),
        dataset_stats=compute_dataset_stats(TRAIN).to_dict(),
    )  # fmt: skip
    loaded, loaded_config, _ = load_checkpoint_model(path)
    assert isinstance(loaded, MatGAN) and loaded_config.model.csp_model == csp_path
    assert int(loaded.step) == int(trained.step) > 0
    assert torch.equal(loaded.draw(20, generator=gen(0))[0], trained.draw(20, generator=gen(0))[0])
    assert all(k.split(".")[0] in ("generator", "critic", "step") for k in loaded.state_dict())  # no CSP weights
    state = last_state(
        loaded.sample(template_from_num_atoms([2, 2]), SamplePlan(loaded.default_sampler()), generator=gen(0))
    )
    state.validate()
    assert loaded.csp_model()[0].tasks == ("csp",)


def test_trains_and_generates_through_the_cli(tmp_path):
    data = tmp_path / "data"
    write_structures(TRAIN, data / "tiny.extxyz")
    csp_path = save_tiny_csp(tmp_path / "csp.pt")
    config = tmp_path / "gan.yaml"
    config.write_text(
        f"name: gan\nfamily: matgan\nmodel: {{csp_model: {csp_path}, latent_dim: 8, hidden: 32, critic_hidden: 32, "
        "n_critic: 2, screen: false, max_atoms: 64}\n"  # an untrained generator's compositions are large
        f"data: {{dataset: {data}, val_split: null, batch_size: 3}}\n"
        "optim: {lr: 0.001, betas: [0.5, 0.9], warmup_steps: 1, ema_decay: 0.5, grad_clip: 0.0}\n"
        "trainer: {max_epochs: 6, accelerator: cpu, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["family"] == "matgan" and ckpt["config"]["model"]["csp_model"] == csp_path
    assert ckpt["config"]["model"]["elements"] == [8, 11, 14, 17, 22, 56] and int(ckpt["weights"]["step"]) == 6
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(run / "model.pt"), "-n", "3", "--steps", "3", "--out", str(out)]) == 0
    assert len(list((out / "cif").glob("*.cif"))) == 3
    assert json.loads((out / "run.json").read_text())["sampler"]["steps"] == 3


def test_optimiser_betas_reach_adam():
    from crystalforge.training.lightning import LitGenerative

    lit = LitGenerative(torch.nn.Linear(2, 1), betas=(0.5, 0.9))
    assert lit.configure_optimizers()["optimizer"].param_groups[0]["betas"] == (0.5, 0.9)
    assert from_dict(TrainConfig, {"optim": {"betas": [0.0, 0.9]}}).optim.betas == (0.0, 0.9)
