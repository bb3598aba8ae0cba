"""SMC steering: reweighting and resampling the batch during sampling (``sampling.smc``)."""

from __future__ import annotations

import math

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, StepContext
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.samplers import iterate, sample
from crystalforge.sampling.smc import SMCResampler, resample_ancestors, template_groups
from crystalforge.sampling.targets import PropertyTarget, objective
from crystalforge.sampling.templates import template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals
from tests.sampling.fakes import VolumePredictor

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)
BIG = [PropertyTarget("vpa", 1000.0, None)]  # far above every volume: J orders crystals by volume


class BlindPredictor(VolumePredictor):
    """NaN for the crystals in ``blind``."""

    def __init__(self, blind):
        self.blind = list(blind)

    def __call__(self, batch, t=None, type_weights=None):
        mean, std = super().__call__(batch, t)
        mean = mean.clone()
        mean[self.blind] = float("nan")
        return mean, std


class ScriptedPredictor:
    """Returns the next row of ``means`` at every call, whatever the state."""

    properties = ("p",)
    time_conditioned = True

    def __init__(self, means):
        self.means = [torch.tensor(m, dtype=torch.float64) for m in means]
        self.calls = 0
        self.times = []

    def __call__(self, batch, t=None, type_weights=None):
        self.times.append(t)
        mean = self.means[self.calls]
        self.calls += 1
        return mean[:, None], torch.ones_like(mean)[:, None]


def _context(template: CrystalBatch, seed: int = 0) -> StepContext:
    return StepContext(template=template, noise=lambda b, t: b, generator=torch.Generator().manual_seed(seed))


def _state(template: CrystalBatch, seed: int = 0) -> CrystalBatch:
    """Random crystals on the template's slots, with traceable latents (each holds its crystal's index)."""
    g = torch.Generator().manual_seed(seed)
    b, n = template.num_crystals, int(template.num_atoms.sum())
    lattice = torch.diag_embed(2.0 + 3.0 * torch.rand(b, 3, generator=g, dtype=torch.float64))
    owner = template.crystal_idx
    state = template.replace(
        atomic_numbers=torch.randint(1, 90, (n,), generator=g),
        frac_coords=torch.rand(n, 3, generator=g, dtype=torch.float64),
        lattice=lattice,
    )
    latents = {
        "frac_coords": state.frac_coords + owner[:, None],
        "lattice": torch.arange(b, dtype=torch.float64)[:, None].expand(b, 6).clone(),
        "atomic_numbers": owner.clone(),
    }
    return state.replace(latents=latents)


def _t(b: int, value: float) -> torch.Tensor:
    return torch.full((b,), value, dtype=torch.float64)


def test_resampling_gathers_whole_crystals_and_keeps_the_batch_valid():
    template = template_from_num_atoms([2, 2, 2, 3, 3, 3, 1], dtype=torch.float64)
    state = _state(template)
    smc = SMCResampler(VolumePredictor(), BIG, temperature=0.01, ess_threshold=1.0, start=0.0)
    out = smc.apply(state, _t(7, 0.5), _context(template))
    out.validate()
    anc = smc.last_ancestors
    assert anc is not None and not torch.equal(anc, torch.arange(7))
    assert torch.equal(out.num_atoms, state.num_atoms) and torch.equal(state.num_atoms[anc], state.num_atoms)
    best = [int(torch.argmax(state.volume[i : i + k])) + i for i, k in ((0, 3), (3, 3))]
    assert anc[:3].tolist() == [best[0]] * 3 and anc[3:6].tolist() == [best[1]] * 3 and int(anc[6]) == 6
    source = state.index_select(anc)
    for name in ("atomic_numbers", "frac_coords", "lattice"):
        assert torch.equal(getattr(out, name), getattr(source, name))
    assert torch.equal(out.latents["lattice"][:, 0], anc.double())  # each latent travelled with its crystal
    assert torch.equal(out.latents["atomic_numbers"], anc[out.crystal_idx])
    assert torch.equal(out.latents["frac_coords"], out.frac_coords + anc[out.crystal_idx, None])
    assert out.material_ids == state.material_ids and torch.equal(state.latents["lattice"][:, 0], torch.arange(7.0))
    assert smc.num_resampling_events == 1 and smc.history[0].resampled_groups == 2
    assert torch.equal(smc.log_weights[:6], torch.zeros(6, dtype=torch.float64))  # reset; the lone crystal keeps its


def test_groups_follow_the_template_content():
    csp = template_from_compositions([[14, 14], [6, 6], [14, 14], [6, 14], [6, 6], [14]])
    assert template_groups(csp).tolist() == [0, 1, 0, 2, 1, 3]
    conditioned = template_from_num_atoms([2, 2, 2, 2], properties={"p": [1.0, 2.0, 1.0, math.nan]})
    assert template_groups(conditioned).tolist() == [0, 1, 0, 2]
    fixed = template_from_num_atoms([2, 2, 2]).replace(fixed=torch.tensor([True, False, True, False, False, False]))
    assert template_groups(fixed).tolist() == [0, 0, 1]
    moved = fixed.replace(frac_coords=fixed.frac_coords.index_fill(0, torch.tensor([2]), 0.5))
    assert template_groups(moved).tolist() == [0, 1, 2]


def test_groups_of_different_content_never_mix():
    template = template_from_compositions(
        [[14, 14], [6, 6], [14, 14], [6, 6], [14, 14], [8, 8, 8]], dtype=torch.float64
    )
    state = _state(template).replace(atomic_numbers=template.atomic_numbers)
    for seed in range(5):
        smc = SMCResampler(
            VolumePredictor(), BIG, temperature=100.0, ess_threshold=1.0, start=0.0, method="multinomial"
        )
        out = smc.apply(state, _t(6, 0.5), _context(template, seed))
        groups = template_groups(template)
        assert smc.last_ancestors is not None and torch.equal(groups[smc.last_ancestors], groups)
        assert torch.equal(out.atomic_numbers, template.atomic_numbers)


def _volumes(model, plan: SamplePlan, seed: int) -> tuple[torch.Tensor, CrystalBatch]:
    template = template_from_compositions([c.atomic_numbers.tolist() for c in tiny_crystals()] * 6)
    out = sample(model, template, plan, generator=torch.Generator().manual_seed(seed))
    out.validate()
    assert torch.equal(out.atomic_numbers, template.atomic_numbers)
    return (torch.linalg.det(out.lattice).abs() / out.num_atoms).double(), out


@pytest.fixture(scope="module")
def csp_flow():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="flow", task="csp", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    return model.eval()


def test_resampling_raises_the_fraction_in_the_window(csp_flow):
    config = SamplerConfig(steps=6)
    seeds = range(3)
    plain = torch.cat([_volumes(csp_flow, SamplePlan(config), s)[0] for s in seeds])
    low = float(torch.quantile(plain, 0.7))
    window = [PropertyTarget("vpa", low, None)]
    smc = SMCResampler(VolumePredictor(), window, temperature=0.5, ess_threshold=0.5, start=0.0)
    steered = torch.cat([_volumes(csp_flow, SamplePlan(config, constraints=(smc,)), s)[0] for s in seeds])
    before, after = float((plain >= low).double().mean()), float((steered >= low).double().mean())
    assert after > before + 0.2, (before, after)
    assert smc.num_resampling_events > 0 and len({e.run for e in smc.history}) == 3
    assert all(0 < e.ess <= e.n + 1e-9 for e in smc.history)


def test_seeded_runs_are_reproducible_and_threshold_zero_changes_nothing(csp_flow):
    config = SamplerConfig(steps=5)

    def run(seed: int, threshold: float = 0.9):
        smc = SMCResampler(VolumePredictor(), BIG, temperature=50.0, ess_threshold=threshold, start=0.0)
        return _volumes(csp_flow, SamplePlan(config, constraints=(smc,)), seed)[1], smc

    first, smc1 = run(0)
    again, smc2 = run(0)
    assert smc1.num_resampling_events > 0 and smc1.history == smc2.history
    assert torch.equal(first.frac_coords, again.frac_coords) and torch.equal(first.lattice, again.lattice)
    other, _ = run(1)
    assert not torch.equal(first.lattice, other.lattice)
    plain = _volumes(csp_flow, SamplePlan(config), 0)[1]
    never, smc0 = run(0, threshold=0.0)
    assert smc0.num_resampling_events == 0 and len(smc0.history) == config.steps - 1  # no event at t = 1
    assert torch.equal(never.frac_coords, plain.frac_coords) and torch.equal(never.lattice, plain.lattice)


def test_de_novo_states_stay_consistent_at_every_step():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="flow", task="dng", backbone=TINY), compute_dataset_stats(tiny_crystals()))
    model.eval()
    template = template_from_num_atoms([3, 3, 3, 4, 4, 4, 2])
    smc = SMCResampler(VolumePredictor(), BIG, temperature=20.0, ess_threshold=1.0, start=0.0, final=True)
    plan = SamplePlan(SamplerConfig(steps=5), constraints=(smc,))
    types = model.processes["atomic_numbers"]
    for step in iterate(model, template, plan, generator=torch.Generator().manual_seed(0)):
        state = step.state
        state.validate()
        assert torch.equal(state.num_atoms, template.num_atoms)
        if "atomic_numbers" in state.latents:
            assert torch.equal(types.decode(state.latents["atomic_numbers"], state), state.atomic_numbers)
        if "lattice" in state.latents:
            lattice = model.processes["lattice"].decode(state.latents["lattice"], state)
            torch.testing.assert_close(lattice, state.lattice)
    assert smc.num_resampling_events == 5 and smc.history[-1].t == 1.0  # every step, and the final state


def test_weights_are_ratios_of_potentials():
    template = template_from_num_atoms([1, 1, 1])
    state = _state(template)
    target = [PropertyTarget("p", 0.0, 1.0)]

    def j(means):
        m = torch.tensor(means, dtype=torch.float64)[:, None]
        return objective(m, torch.ones_like(m), ("p",), target)

    scripted = ScriptedPredictor([[0.0, 2.0, 5.0], [3.0, 1.0, 0.5]])
    smc = SMCResampler(scripted, target, temperature=2.0, ess_threshold=0.0, times=(0.2, 0.4))
    context = _context(template)
    for tau in (0.0, 0.2, 0.4, 0.6):
        smc.apply(state, _t(3, tau), context)
    torch.testing.assert_close(smc.log_weights, j([3.0, 1.0, 0.5]) / 2.0)  # telescoped: J_last / T
    assert scripted.times[0] is not None and float(scripted.times[0][0]) == pytest.approx(0.2)
    # resampled at the first event (all copies of crystal 0), not at the second (equal increments)
    scripted = ScriptedPredictor([[0.5, 40.0, 50.0], [2.0, 2.0, 2.0]])
    smc = SMCResampler(scripted, target, temperature=1.0, ess_threshold=0.5, times=(0.2, 0.4))
    for tau in (0.0, 0.2, 0.4):
        smc.apply(state, _t(3, tau), context)
    assert [e.resampled for e in smc.history] == [True, False]
    torch.testing.assert_close(smc.log_weights, (j([2.0] * 3) - j([0.5])).expand(3))
    assert smc.history[1].ess == pytest.approx(3.0)


def test_crystals_the_predictor_cannot_score_are_never_copied():
    template = template_from_num_atoms([2] * 4 + [3] * 2, dtype=torch.float64)
    state = _state(template)
    volume = state.volume.clone()
    volume[0] = 1e6  # the largest cell, but unscored
    state = state.replace(lattice=state.lattice * (volume / state.volume).pow(1 / 3)[:, None, None])
    smc = SMCResampler(BlindPredictor([0, 4, 5]), BIG, temperature=1e3, ess_threshold=1.0, start=0.0)
    out = smc.apply(state, _t(6, 0.5), _context(template))
    out.validate()
    anc = smc.last_ancestors
    assert anc is not None and 0 not in anc[:4].tolist() and anc[4:].tolist() == [4, 5]  # unscored group kept
    assert smc.history[0].unscored == 3 and smc.history[0].resampled_groups == 1
    assert smc.last_objective is not None and torch.isnan(smc.last_objective[4:]).all()
    blind = SMCResampler(BlindPredictor(range(6)), BIG, ess_threshold=1.0, start=0.0)
    assert blind.apply(state, _t(6, 0.5), _context(template)) is state and blind.num_resampling_events == 0
    assert torch.isfinite(blind.log_weights).all()


def test_schedules():
    template = template_from_num_atoms([1, 1])
    state = _state(template)

    def fired(**kwargs) -> list[float]:
        smc = SMCResampler(VolumePredictor(), BIG, ess_threshold=0.0, **kwargs)
        context = _context(template)
        for k in range(11):
            smc.apply(state, _t(2, k / 10), context)
        return [round(e.t, 6) for e in smc.history]

    assert fired(times=(0.25, 0.5)) == [0.3, 0.5]
    assert fired(every=3, start=0.0) == [0.3, 0.6, 0.9]
    assert fired(every=3) == [0.6, 0.9]  # a clean predictor starts at 0.5
    assert fired(events=2, start=0.4) == [0.6, 0.8]
    assert fired(every=4, start=0.0, final=True) == [0.4, 0.8, 1.0]
    smc = SMCResampler(VolumePredictor(), BIG, every=1, start=0.0)
    for template_run in (template, template_from_num_atoms([1, 1])):  # a new template is a new run
        for k in range(3):
            smc.apply(state, _t(2, k / 2), _context(template_run))
    assert [e.run for e in smc.history] == [1, 2] and smc.settings()["every"] == 1


def test_bad_settings_are_refused():
    with pytest.raises(KeyError, match="band_gap"):
        SMCResampler(VolumePredictor(), [PropertyTarget("band_gap", 1.0, None)])
    for kwargs, message in [
        ({"temperature": 0.0}, "temperature"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"every": 2, "times": (0.5,)}, "at most one"),
        ({"times": (1.0,)}, "final=True"),
        ({"every": 0}, "every"),
        ({"events": 0}, "events"),
        ({"method": "stratified"}, "method"),
    ]:
        with pytest.raises(ValueError, match=message):
            SMCResampler(VolumePredictor(), BIG, **kwargs)
    with pytest.raises(ValueError, match="zero"):
        resample_ancestors(torch.zeros(3), torch.rand(3))
    drawn = resample_ancestors(torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0]), torch.tensor([0.999] * 5))
    assert set(drawn.tolist()) <= {1, 3} and drawn.tolist() == sorted(drawn.tolist())
