"""The autoregressive family: transformer, cache, grammar, prefix, training, sampling, refusals, checkpoints.

What is promised: cached decoding gives the full forward's logits; attention is causal; the token
grammar reproduces the tokenizer's text from the open tokens and holds DNG headers to ``n`` atoms
of allowed elements; a tiny model memorises two crystals and greedy sampling writes them back
(encode → train → decode end to end); CSP keeps the template's composition and atom order; the
property prefix changes what is generated; what the family cannot do is a clear error; a
checkpoint reloads to the same model, also through ``crystalforge train``/``generate``/``csp``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from crystalforge.config import to_dict
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z
from crystalforge.core.lattice import lattice_to_params
from crystalforge.core.threads import torch_threads
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.autoregressive import CrystalGPT
from crystalforge.generative.autoregressive.decoding import FormatTables, RowDecoder, model_stream
from crystalforge.generative.autoregressive.prefix import ConditionPrefix, quantile_edges
from crystalforge.generative.autoregressive.sampler import _mix as sampler_mix
from crystalforge.generative.autoregressive.sequences import order_atoms, sequence_bound
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, last_state
from crystalforge.registry import build_model, resolve_config
from crystalforge.representations.tokens import CrystalTokenizer
from crystalforge.sampling.cfg import ClassifierFreeGuidance
from crystalforge.sampling.composition import AllowedElements
from crystalforge.sampling.constraints import FixedLattice
from crystalforge.sampling.templates import template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals

FAMILY = "autoregressive"
TINY = {"dim": 48, "layers": 2, "heads": 2, "dropout": 0.0, "atom_order": "data"}


def cscl(prop: float | None = None) -> Crystal:
    props = {} if prop is None else {"gap": prop}
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    return Crystal(np.array([55, 17]), frac, np.eye(3) * 4.12, properties=props, material_id="cscl")


def fit(crystals, steps: int, **config):
    """A tiny model trained ``steps`` full-batch Adam steps on ``crystals``; returns (model, first, last loss)."""
    torch.manual_seed(0)
    stats = compute_dataset_stats(crystals)
    model = build_model(resolve_config({**TINY, **config}, stats, family=FAMILY), stats, family=FAMILY)
    batch = CrystalBatch.collate(crystals)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    with torch_threads(1):  # module fixtures run before the directory's one-thread fixture
        for _ in range(steps):
            loss = model.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return model.eval(), losses[0], losses[-1]


def draw(model, template, seed=0, plan=None, temperature=None):
    if temperature is not None:
        model.temperature = temperature
    return last_state(model.sample(template, plan or SamplePlan(), generator=torch.Generator().manual_seed(seed)))


def same_structure(state: CrystalBatch, i: int, crystal: Crystal, *, ordered: bool = True) -> bool:
    """Crystal ``i`` of ``state`` is ``crystal`` up to the text's rounding (atom order kept, or sorted)."""
    got = state.index_select([i]).split()[0]
    a, b = got, crystal
    if not ordered:
        a_order, b_order = (
            np.lexsort((*a.frac_coords.T, a.atomic_numbers)),
            np.lexsort((*b.frac_coords.T, b.atomic_numbers)),
        )
        a_frac, b_frac = a.frac_coords[a_order], b.frac_coords[b_order]
        a_z, b_z = a.atomic_numbers[a_order], b.atomic_numbers[b_order]
    else:
        a_frac, b_frac, a_z, b_z = a.frac_coords, b.frac_coords, a.atomic_numbers, b.atomic_numbers
    (la, aa), (lb, ab) = lattice_to_params(a.lattice), lattice_to_params(b.lattice)
    return (
        a_z.tolist() == b_z.tolist()
        and np.allclose(la, lb, atol=0.01)
        and np.allclose(aa, ab, atol=0.1)
        and np.allclose(a_frac, b_frac, atol=1e-3)
    )


@pytest.fixture(scope="module")
def memorised():
    """Si2 and Na4Cl4 learned by heart (about 2 s)."""
    crystals = tiny_crystals()[1:3]
    model, first, last = fit(crystals, 120)
    return model, crystals, first, last


# ---- the transformer -----------------------------------------------------------------------------
def test_cached_decoding_gives_the_full_forward_logits():
    torch.manual_seed(0)
    net = CrystalGPT(40, 24, num_slots=5, dim=32, heads=4, layers=3).eval()
    tokens, slots = torch.randint(0, 40, (3, 16)), torch.randint(0, 5, (3, 16))
    full = net(tokens, slots)
    cache = net.new_cache(3)
    steps = [net(tokens[:, :5], slots[:, :5], cache)]  # prefill, then one token at a time
    steps += [net(tokens[:, t : t + 1], slots[:, t : t + 1], cache) for t in range(5, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :10], atol=1e-5, rtol=0)
    rows = torch.tensor([2, 0])
    cache.keep(rows)  # finished sequences leave the cache
    rest = [net(tokens[rows, t : t + 1], slots[rows, t : t + 1], cache) for t in range(10, 16)]
    torch.testing.assert_close(torch.cat(rest, 1), full[rows, 10:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="longer than"):
        net(torch.zeros(1, 25, dtype=torch.int64))


def test_attention_is_causal():
    torch.manual_seed(0)
    net = CrystalGPT(40, 24, dim=32, heads=2, layers=2).eval()
    tokens = torch.randint(0, 40, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    a, b = net(tokens), net(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


# ---- the grammar and the sequences ---------------------------------------------------------------
def test_open_tokens_and_the_grammar_give_back_the_tokenizers_text():
    tables = FormatTables(CrystalTokenizer())
    for crystal in tiny_crystals():
        ids = tables.tokenizer.encode_crystal(crystal)[1:]
        tokens, slots = model_stream(tables, ids, crystal.num_atoms)
        assert len(tokens) < 0.65 * len(ids) and all(s > 0 for s in slots)
        comp = list(crystal.composition.items())
        for composition in (None, [(tables.z_of_token[tables.tokenizer.token_to_id(s)], n) for s, n in comp]):
            decoder = RowDecoder(tables, num_atoms=crystal.num_atoms, composition=composition, elements=range(1, 100))
            for token, slot in zip(tokens, slots, strict=True):
                assert decoder.slot == slot
                decoder.push(token)  # checked: every open token is allowed
            assert decoder.finished and decoder.tokens == ids
            assert tables.tokenizer.decode_crystal(decoder.tokens).num_atoms == crystal.num_atoms
    # a CSP header is given: the first open slot takes only the template's first element
    decoder = RowDecoder(tables, num_atoms=3, composition=[(8, 2), (22, 1)])
    assert decoder.allowed().tolist() == [tables.element_token[8]]
    with pytest.raises(ValueError, match="not allowed"):
        decoder.push(int(tables.element_token[22]))


@pytest.mark.parametrize("n", [1, 5, 12])
def test_random_walks_through_a_dng_header_always_reach_n_atoms_of_allowed_elements(n):
    tables = FormatTables(CrystalTokenizer())
    rng = np.random.default_rng(n)
    allowed = {8, 22, 56}
    for _ in range(60):
        decoder = RowDecoder(tables, num_atoms=n, elements=sorted(allowed))
        while decoder.slot == tables.header_slot:
            options = decoder.allowed()
            assert len(options) > 0
            decoder.push(int(rng.choice(options)))
        composition = decoder.remaining
        assert (
            sum(composition.values()) == n and set(composition) <= allowed and all(c > 0 for c in composition.values())
        )
        while not decoder.finished:  # the rest: any allowed token, and the text is n sites of that composition
            decoder.push(int(rng.choice(decoder.allowed())))
        lines = tables.tokenizer.decode(decoder.tokens).splitlines()
        assert len(lines) == 7 + n and all(len(line.split()) == 4 for line in lines[7:])
        values = [float(line.split()[1]) for line in lines[1:7]]
        assert all(1 <= v < 1000 for v in values[:3]) and all(1 <= v < 180 for v in values[3:])  # lengths, angles


def test_decoding_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves the setting alone
        assert torch.get_num_threads() == before


def test_atom_orders_are_permutations_within_crystals_and_grouped_keeps_elements_together():
    batch = CrystalBatch.collate(tiny_crystals())
    grouped = order_atoms(batch, "grouped", generator=torch.Generator().manual_seed(1))
    for before, after in zip(batch.split(), grouped.split(), strict=True):
        assert sorted(before.atomic_numbers.tolist()) == sorted(after.atomic_numbers.tolist())
        z = after.atomic_numbers.tolist()
        assert len([i for i in range(1, len(z)) if z[i] != z[i - 1]]) == len(set(z)) - 1  # one block per element
    shuffled = order_atoms(batch, "random", generator=torch.Generator().manual_seed(1))
    assert not torch.equal(shuffled.frac_coords, batch.frac_coords)
    assert order_atoms(batch, "data") is batch


def test_block_size_bounds_the_longest_sequence():
    crystals = tiny_crystals()
    stats = compute_dataset_stats(crystals)
    config = resolve_config(TINY, stats, family=FAMILY)
    model = build_model(config, stats, family=FAMILY)
    tables = model.tables
    longest = max(len(model_stream(tables, tables.tokenizer.encode_crystal(c)[1:], c.num_atoms)[0]) for c in crystals)
    assert longest + 1 < config.block_size == sequence_bound(config.text, max_atoms=8, max_elements=3, prefix_length=1)


# ---- the prefix ----------------------------------------------------------------------------------
def test_quantile_bins_split_the_data_and_give_a_spike_its_own_bin():
    values = np.concatenate([np.zeros(500), np.linspace(0.1, 5.0, 500)])  # half metals (gap 0)
    crystals = [replace(tiny_crystals()[0], properties={"gap": float(v)}) for v in values]
    stats = compute_dataset_stats(crystals)
    edges = quantile_edges(stats, "gap", 6)
    assert 0.0 < edges[0] < 1e-6 and len(edges) == 5  # the spike, then four equal shares of the rest
    shares = np.bincount(np.searchsorted(edges, values, side="right"), minlength=6)
    assert shares[0] == 500 and shares[1:].min() >= 90
    assert DatasetStats.from_dict(stats.to_dict()) == stats  # the quantiles travel in checkpoints
    old = replace(stats, property_quantiles=None)  # statistics from before quantiles: a normal's
    assert len(quantile_edges(old, "gap", 6)) == 5
    with pytest.raises(ValueError, match="no such property"):
        quantile_edges(stats, "band_gap", 6)

    prefix = ConditionPrefix(100, 8, {"gap": (0.5, 1.5)}, ("crystal_system",))
    batch = CrystalBatch.collate(tiny_crystals()[:4]).replace(
        properties={
            "gap": torch.tensor([0.2, 1.0, 9.0, math.nan]),
            "crystal_system": torch.tensor([6.0, 0.0, 1.0, 2.0]),
        },
        condition_mask={
            "gap": torch.tensor([True, True, False, True]),
            "crystal_system": torch.ones(4, dtype=torch.bool),
        },
    )
    codes = prefix.encode(batch)
    null = prefix.offsets["gap"]
    assert codes[:, 0].tolist() == [null + 1, null + 2, null, null]  # bins 0, 1; hidden; NaN
    assert codes[:, 1].tolist() == [prefix.offsets["crystal_system"] + 1 + c for c in (6, 0, 1, 2)]
    assert codes[:, 2].tolist() == [100, 101, 107, 104]  # the size tokens: n = 1, 2, 8, 5
    assert prefix.end == 100 + 8 + 4 + 8


# ---- training and sampling -----------------------------------------------------------------------
def test_training_memorises_and_greedy_sampling_writes_the_crystals_back(memorised):
    model, crystals, first, last = memorised
    assert isinstance(model, GenerativeModel) and model.tasks == ("csp", "dng")
    assert last < 0.05 < 2.0 < first
    state = draw(model, template_from_num_atoms([8, 2]), temperature=0.0)
    state.validate()
    assert same_structure(state, 0, crystals[1]) and same_structure(state, 1, crystals[0])


def test_csp_keeps_the_composition_in_the_template_order(memorised):
    model, crystals, _, _ = memorised
    interleaved = [11, 17] * 4
    state = draw(model, template_from_compositions([interleaved, [14, 14]]), temperature=0.0)
    assert state.atomic_numbers.tolist() == [*interleaved, 14, 14]
    assert same_structure(state, 0, crystals[1], ordered=False) and same_structure(state, 1, crystals[0])
    # sampled (temperature 1) and for compositions never seen: the types are still exactly the template's
    compositions = [[11, 17], [17, 17, 14], [14, 11, 11, 17, 11]]
    state = draw(model, template_from_compositions(compositions), seed=3, temperature=1.0)
    assert state.atomic_numbers.tolist() == [z for c in compositions for z in c]
    assert state.num_atoms.tolist() == [2, 3, 5]


def test_dng_samples_have_the_template_sizes_and_the_allowed_elements():
    crystals = tiny_crystals()
    stats = compute_dataset_stats(crystals)
    model = build_model(resolve_config({**TINY, "max_tries": 3}, stats, family=FAMILY), stats, family=FAMILY).eval()
    plan = SamplePlan(guidance=(AllowedElements.for_model(model, "Na,Cl,O"),))
    state = draw(model, template_from_num_atoms([1, 3, 5, 8, 8, 8]), plan=plan, temperature=1.0)  # untrained
    assert state.num_atoms.tolist() == [1, 3, 5, 8, 8, 8]
    made, failed = state.split_checked()
    assert any(crystal is not None for crystal in made)  # the element check below is not vacuous
    for crystal in made:
        if crystal is not None:
            assert set(crystal.atomic_numbers.tolist()) <= {8, 11, 17}
    for i, error in failed:  # what did not decode is a NaN cell of the template's size, never a dropped row
        assert "NaN" in error.problem and bool(torch.isnan(state.lattice[i]).all())
    with pytest.raises(ValueError, match="vocabulary"):
        AllowedElements.for_model(model, "Fe")


def test_a_property_prefix_changes_what_is_generated():
    crystals = [replace(tiny_crystals()[1], properties={"gap": 0.0}), cscl(1.0)]
    model, _, last = fit(crystals, 120, properties=["gap"], condition_dropout=0.0)
    assert model.conditions == ("gap",) and last < 0.05
    template = template_from_num_atoms([2, 2], properties={"gap": [0.0, 1.0]})
    state = draw(model, template, temperature=0.0)
    assert same_structure(state, 0, crystals[0]) and same_structure(state, 1, crystals[1])
    flipped = draw(model, template.replace(properties={"gap": torch.tensor([1.0, 0.0])}), temperature=0.0)
    assert same_structure(flipped, 0, crystals[1]) and same_structure(flipped, 1, crystals[0])


def test_classifier_free_guidance_mixes_the_prefixes_token_by_token():
    crystals = [replace(tiny_crystals()[1], properties={"gap": 0.0}), cscl(1.0)]
    model, _, _ = fit(crystals, 60, properties=["gap"], condition_dropout=0.3)
    template = template_from_num_atoms([2, 2, 2, 2, 2, 2], properties={"gap": [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]})
    hidden = template.replace(condition_mask={"gap": torch.zeros(6, dtype=torch.bool)})

    def guided(scale: float, seed: int) -> CrystalBatch:
        return draw(model, template, seed=seed, plan=SamplePlan(guidance=(ClassifierFreeGuidance(scale),)))

    differ = False
    for seed in (0, 1):  # temperature 1: every draw of the sequences goes through the mixed logits
        model.temperature = 1.0
        unconditional, conditional = draw(model, hidden, seed=seed), draw(model, template, seed=seed)
        differ |= not torch.equal(unconditional.lattice, conditional.lattice)
        assert torch.equal(guided(0.0, seed).lattice, unconditional.lattice)  # w = 0: the conditions hidden
        assert torch.equal(guided(1.0, seed).lattice, conditional.lattice)  # w = 1: plain conditioning
        assert torch.equal(guided(0.0, seed).frac_coords, unconditional.frac_coords)
    assert differ  # the conditions change the draws, so the equalities above tell w = 0 from w = 1
    u, c = torch.randn(4, 9), torch.randn(4, 9)
    mixed = torch.softmax(sampler_mix(u, c, 2.5), dim=-1)
    expected = torch.softmax(u, -1) ** -1.5 * torch.softmax(c, -1) ** 2.5
    torch.testing.assert_close(mixed, expected / expected.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="one classifier-free guidance"):
        draw(model, template, plan=SamplePlan(guidance=(ClassifierFreeGuidance(2.0), ClassifierFreeGuidance(3.0))))


# ---- refusals ------------------------------------------------------------------------------------
class _GradientGuidance:
    """A predictor-gradient stand-in: it wraps a denoiser prediction, which this family does not have."""

    requires_grad = True

    def __call__(self, predict, state, t):
        return predict(state, t)


def test_what_the_family_cannot_do_is_refused(memorised):
    model = memorised[0]
    template = template_from_num_atoms([2])
    cases = [
        (SamplePlan(guidance=(_GradientGuidance(),)), "cannot use guidance"),
        (SamplePlan(SamplerConfig(anti_annealing=5.0)), "anti_annealing"),
        (SamplePlan(SamplerConfig(start_time=0.5)), "cannot refine"),
        (SamplePlan(constraints=(FixedLattice(np.eye(3) * 4.0),)), "cannot apply constraints"),
    ]
    for plan, message in cases:
        with pytest.raises(ValueError, match=message):
            draw(model, template, plan=plan)
    with pytest.raises(ValueError, match="cannot be conditioned on 'band_gap'"):  # a target it was not trained for
        draw(model, template_from_num_atoms([2], properties={"band_gap": [1.0]}))
    hidden = template_from_num_atoms([2], properties={"band_gap": [math.nan]})
    assert draw(model, hidden, temperature=0.0).num_crystals == 1  # a hidden value is no target
    with pytest.raises(ValueError, match="largest size 8"):
        draw(model, template_from_num_atoms([9]))
    mixed = template_from_compositions([[11, 17]]).replace(atomic_numbers=torch.tensor([11, MASK_Z]))
    with pytest.raises(ValueError, match="some atom types are given"):
        draw(model, mixed)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        draw(model, template_from_compositions([[26, 8]]))
    from crystalforge.sampling.jobs import generation_jobs

    with pytest.raises(ValueError, match=r"cannot be conditioned on \['band_gap'\]"):
        generation_jobs(model, None, n=2, num_atoms=2, properties={"band_gap": 1.0})
    with pytest.raises(ValueError, match="no such property"):
        resolve_config({**TINY, "properties": ["band_gap"]}, compute_dataset_stats(tiny_crystals()), family=FAMILY)


# ---- checkpoints and the CLI ---------------------------------------------------------------------
def test_checkpoint_round_trip_through_the_registry(tmp_path, memorised):
    from crystalforge import api
    from crystalforge.training.checkpoint import save_checkpoint
    from crystalforge.training.config import TrainConfig

    model, crystals, _, _ = memorised
    stats = compute_dataset_stats(crystals)
    config = TrainConfig(family=FAMILY, model=model.config)
    path = save_checkpoint(tmp_path / "model.pt", family=FAMILY, config=to_dict(config),
                           weights=model.state_dict(), dataset_stats=stats.to_dict())  # fmt: skip
    loaded = api.load_model(path)
    assert loaded.config.model == model.config and loaded.sampler.steps == 1
    tokens = torch.randint(0, 150, (2, 9))
    torch.testing.assert_close(loaded.model.backbone(tokens), model.backbone(tokens), atol=0, rtol=0)
    template = template_from_num_atoms([8, 2])
    a, b = draw(loaded.model, template, seed=5, temperature=1.0), draw(model, template, seed=5, temperature=1.0)
    assert torch.equal(a.atomic_numbers, b.atomic_numbers) and torch.equal(a.frac_coords, b.frac_coords)


def test_trains_generates_and_predicts_through_the_cli(tmp_path):
    from crystalforge.cli.main import main
    from crystalforge.io.files import read_structures, write_structures
    from crystalforge.io.run_folder import RunFolder

    data = tmp_path / "data"
    write_structures(tiny_crystals()[1:], data / "tiny.extxyz")
    config = tmp_path / "gpt.yaml"
    config.write_text(
        f"name: gpt\nfamily: {FAMILY}\nmodel: {{dim: 32, layers: 1, heads: 2, max_tries: 2}}\n"
        f"data: {{dataset: {data}, val_split: null, batch_size: 4}}\n"
        "optim: {lr: 0.003, warmup_steps: 1, ema_decay: 0.0}\n"
        "trainer: {max_epochs: 3, accelerator: cpu, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["family"] == FAMILY and ckpt["config"]["model"]["max_atoms"] == 8
    gen = tmp_path / "gen"
    main(["generate", "--model", str(run / "model.pt"), "-n", "3", "--num-atoms", "4", "--out", str(gen)])
    assert json.loads((gen / "run.json").read_text())["sampler"]["steps"] == 1
    written = len(list((gen / "cif").glob("*.cif")))
    assert written + len(RunFolder(gen).failures()) == 3  # an undecodable sequence is listed, never dropped
    csp = tmp_path / "csp"
    main(["csp", "--model", str(run / "model.pt"), "--formula", "Si2", "NaCl", "--out", str(csp)])
    predicted = (
        [c.atomic_numbers.tolist() for c in read_structures(csp / "samples.extxyz")]
        if (csp / "samples.extxyz").exists()
        else []
    )
    assert all(z in ([14, 14], [11, 17]) for z in predicted)
    assert len(predicted) + len(RunFolder(csp).failures()) == 2


@pytest.mark.parametrize("name", ["perov_5-gpt", "mp_20-gpt"])
def test_the_configs_read(name):
    from pathlib import Path

    from crystalforge.config import load_config
    from crystalforge.training.config import TrainConfig

    config = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    assert config.family == FAMILY and config.name == name and config.model.layers == 4
