"""Structural constraints by inpainting (SCIGEN-style): motifs, lattice ties, re-noising, composition."""

from __future__ import annotations

import itertools
import math
from functools import cache, partial

import numpy as np
import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.lattice import lattice_from_params, lattice_to_params, metric_tensor
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, StepContext
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.registry import build_model
from crystalforge.sampling.constraints import FixedAtoms, FixedLattice, Inpaint, MotifConstraint
from crystalforge.sampling.motifs import MOTIFS, motif, motif_names, parse_motif
from crystalforge.sampling.samplers import iterate, sample
from crystalforge.sampling.templates import template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)
TI, OX = 22, 8  # both in the tiny models' type vocabulary


@cache
def _model(kind: str = "flow", task: str = "dng"):
    crystals = tiny_crystals()
    return build_model(ModelConfig(kind=kind, task=task, backbone=TINY), compute_dataset_stats(crystals)).eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _first_atoms(batch: CrystalBatch, k: int) -> torch.Tensor:
    within = torch.arange(batch.atomic_numbers.shape[0]) - batch.atom_offsets[batch.crystal_idx]
    return within < k


def _assert_motif(final: CrystalBatch, pattern: str, z: int, layer: float = 0.0) -> None:
    m = motif(pattern)
    k = m.num_sites
    first = _first_atoms(final, k)
    sites = torch.as_tensor(m.frac_coords(layer), dtype=final.frac_coords.dtype).repeat(len(final), 1)
    assert torch.equal(final.frac_coords[first], sites)
    assert (final.atomic_numbers[first] == z).all()
    lengths, angles = lattice_to_params(final.lattice.double())
    assert torch.allclose(lengths[:, 0], lengths[:, 1], rtol=1e-6)
    expected = torch.tensor(m.angles, dtype=torch.float64).expand_as(angles)
    assert torch.allclose(angles, expected, atol=1e-3)


# ---- the motif library ---------------------------------------------------------------------------
def test_motif_library_sites_and_ties():
    assert set(motif_names()) >= {"triangular", "honeycomb", "kagome", "square", "lieb"}
    sites = {name: MOTIFS[name].num_sites for name in ("triangular", "honeycomb", "kagome", "square", "lieb")}
    assert sites == {"triangular": 1, "honeycomb": 2, "kagome": 3, "square": 1, "lieb": 3}
    assert motif("Kagome").angles == (90.0, 90.0, 120.0) and motif("lieb").angles == (90.0, 90.0, 90.0)
    assert motif("kagome").frac_coords(0.25)[:, 2].tolist() == [0.25] * 3
    assert parse_motif("kagome:Mn") == (motif("kagome"), 25)
    assert parse_motif(" honeycomb : c ")[1] == 6 and parse_motif("square:26")[1] == 26


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hexagon:Mn", r"unknown motif 'hexagon'; known motifs: honeycomb, kagome, lieb, square, triangular"),
        ("kagome:Xx", r"unknown element 'Xx'"),
        ("kagome", r"expected MOTIF:ELEMENT"),
        ("kagome:", r"expected MOTIF:ELEMENT"),
        ("kagome:200", r"outside 1..118"),
    ],
)
def test_parse_motif_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_motif(text)


@pytest.mark.parametrize(
    ("pattern", "distance", "neighbours"),
    [
        ("triangular", 1.0, [6]),
        ("honeycomb", 1 / math.sqrt(3), [3, 3]),
        ("kagome", 0.5, [4, 4, 4]),
        ("square", 1.0, [4]),
        ("lieb", 0.5, [4, 2, 2]),
    ],
)
def test_motif_geometry_in_the_tied_cell(pattern, distance, neighbours):
    """Oracle: in the tied cell (a = b = 1, c large) each motif has its textbook nearest-neighbour shell."""
    m = motif(pattern)
    cell = lattice_from_params(np.array([1.0, 1.0, 5.0]), np.array(m.angles))
    cart = m.frac_coords() @ cell
    images = np.array(list(itertools.product((-1, 0, 1), (-1, 0, 1), (0,)))) @ cell
    d = np.linalg.norm(cart[:, None, None] - cart[None, :, None] - images[None, None], axis=-1)
    d = np.where(d < 1e-9, np.inf, d).reshape(len(cart), -1)
    assert d.min() == pytest.approx(distance)
    assert (np.abs(d - distance) < 1e-9).sum(1).tolist() == neighbours


# ---- sampling with a motif -----------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "task"), [("flow", "dng"), ("diffusion", "dng"), ("flow", "csp")])
def test_final_samples_carry_the_motif_exactly(kind, task):
    model = _model(kind, task)
    if task == "dng":
        template = template_from_num_atoms([4, 5])
    else:
        template = template_from_compositions([[TI, TI, TI, OX], [TI, TI, TI, OX, OX]])
    plan = SamplePlan(SamplerConfig(steps=3), constraints=(MotifConstraint("kagome", "Ti"),))
    final = sample(model, template, plan, generator=_gen(0))
    final.validate()
    _assert_motif(final, "kagome", TI)
    # exact values at t = 1 leave no stale latent behind
    assert not {"frac_coords", "lattice", "atomic_numbers"} & set(final.latents)


@pytest.mark.parametrize("pattern", ["triangular", "honeycomb", "square", "lieb"])
def test_lattice_ties_hold_for_every_motif(pattern):
    constraint = MotifConstraint(pattern, TI, layer=0.5)
    final = sample(
        _model(), template_from_num_atoms([3, 4]), SamplePlan(SamplerConfig(steps=2), constraints=(constraint,))
    )
    _assert_motif(final, pattern, TI, layer=0.5)  # sites, element, a = b and the motif's angles
    assert torch.allclose(final.lattice[:, 2, :2], torch.zeros(2, 2), atol=1e-5)  # c is normal to the layer


def test_known_values_are_renoised_before_the_end():
    model = _model("flow", "dng")
    template = template_from_num_atoms([4, 5])
    plan = SamplePlan(SamplerConfig(steps=4), constraints=(MotifConstraint("kagome", TI),))
    states = {step.t: step.state for step in iterate(model, template, plan, generator=_gen(1))}
    half = states[0.5]
    first = _first_atoms(half, 3)
    sites = torch.as_tensor(motif("kagome").frac_coords(), dtype=half.frac_coords.dtype).repeat(2, 1)
    assert (half.frac_coords[first] - sites).abs().max() > 1e-3  # on the path at t = 0.5, not the clean value
    _, angles = lattice_to_params(half.lattice.double())
    assert (angles[:, 2] - 120.0).abs().max() > 1e-2  # the known angles are re-noised too
    lengths, _ = lattice_to_params(half.lattice.double())
    assert torch.allclose(lengths[:, 0], lengths[:, 1], rtol=1e-5)  # the generated lengths stay tied
    _assert_motif(states[1.0], "kagome", TI)


def test_other_atoms_vary_across_seeds():
    model = _model()
    template = template_from_num_atoms([5, 6])
    plan = SamplePlan(SamplerConfig(steps=3), constraints=(MotifConstraint("honeycomb", TI),))
    a, b = (sample(model, template, plan, generator=_gen(seed)) for seed in (0, 1))
    free = ~_first_atoms(a, 2)
    assert torch.equal(a.frac_coords[~free], b.frac_coords[~free])
    assert (a.frac_coords[free] - b.frac_coords[free]).abs().max() > 1e-2
    assert not torch.allclose(a.lattice, b.lattice)  # the cell size is still generated


def test_constraints_compose_in_one_plan():
    model = _model()
    template = template_from_num_atoms([4, 5])
    known = template.replace(
        atomic_numbers=torch.full_like(template.atomic_numbers, OX),
        frac_coords=torch.full_like(template.frac_coords, 0.3),
    )
    extra = torch.zeros(9, dtype=torch.bool)
    extra[[3, 8]] = True  # the last atom of each crystal: an O at (0.3, 0.3, 0.3)
    plan = SamplePlan(SamplerConfig(steps=3), constraints=(MotifConstraint("kagome", TI), Inpaint(known, atoms=extra)))
    final = sample(model, template, plan, generator=_gen(2))
    final.validate()
    _assert_motif(final, "kagome", TI)
    assert torch.equal(final.frac_coords[extra], known.frac_coords[extra])
    assert (final.atomic_numbers[extra] == OX).all()


# ---- errors --------------------------------------------------------------------------------------
def test_clear_errors_for_bad_input():
    model = _model()
    with pytest.raises(ValueError, match=r"crystal 1 has 2 atom\(s\) but the kagome motif needs 3 sites"):
        sample(
            model,
            template_from_num_atoms([3, 2, 1]),
            SamplePlan(SamplerConfig(steps=1), constraints=(MotifConstraint("kagome", TI),)),
        )
    with pytest.raises(ValueError, match="unknown motif 'star'"):
        MotifConstraint("star", TI)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        MotifConstraint("kagome", "Xx")
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        MotifConstraint.parse("kagome:Xx")
    with pytest.raises(ValueError, match=r"cannot represent the known atoms.*\[25\]"):  # Mn: not in the tiny vocabulary
        sample(
            model,
            template_from_num_atoms([3]),
            SamplePlan(SamplerConfig(steps=1), constraints=(MotifConstraint.parse("kagome:Mn"),)),
        )
    csp = template_from_compositions([[TI, TI, TI], [OX, TI, TI, TI]])
    with pytest.raises(
        ValueError, match=r"crystal 1 gives elements \[O, Ti, Ti\] on its first 3 atoms.*list the motif"
    ):
        sample(
            _model("flow", "csp"), csp, SamplePlan(SamplerConfig(steps=1), constraints=(MotifConstraint("kagome", TI),))
        )
    with pytest.raises(ValueError, match="have no element"):
        Inpaint(template_from_num_atoms([2]), atoms=[True, False])
    with pytest.raises(ValueError, match="lattice must be"):
        FixedLattice(torch.eye(2))


# ---- state hygiene -------------------------------------------------------------------------------
def _context(model, template, seed=0):
    return StepContext(template=template, noise=partial(model.noise, generator=_gen(seed)), generator=_gen(seed))


def _snapshot(state: CrystalBatch) -> dict[str, torch.Tensor]:
    out = {f: getattr(state, f).clone() for f in ("frac_coords", "lattice", "atomic_numbers", "num_atoms")}
    return out | {f"latent:{k}": v.clone() for k, v in state.latents.items()}


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
def test_constraints_never_mutate_the_state_they_receive(t):
    model = _model()
    template = template_from_num_atoms([4, 3])
    state = model.sample_prior(template, _gen(0))
    before, keys = _snapshot(state), set(state.latents)
    context = _context(model, template)
    known = template.replace(atomic_numbers=torch.full_like(template.atomic_numbers, OX))
    constraints = [
        MotifConstraint("kagome", TI),
        Inpaint(known, atoms=torch.arange(7) % 3 == 0, lattice=True),
        FixedLattice.from_params([4.0, 4.0, 6.0], [90.0, 90.0, 120.0]),
    ]
    for constraint in constraints:
        out = constraint.apply(state, torch.full((2,), t), context)
        out.validate()
        assert out is not state
    after = _snapshot(state)
    assert set(state.latents) == keys and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_latents_stay_consistent_with_the_fields():
    """Below t = 1 every latent the constraint leaves decodes to the field (it is the model's own encoding)."""
    model = _model()
    template = template_from_num_atoms([4, 3])
    state = model.sample_prior(template, _gen(0))
    t = torch.full((2,), 0.5)
    known = template.replace(atomic_numbers=torch.full_like(template.atomic_numbers, OX))
    for constraint in (Inpaint(known, atoms=torch.arange(7) % 2 == 0, lattice=True), MotifConstraint("lieb", TI)):
        out = constraint.apply(state, t, _context(model, template))
        for field, latent in out.latents.items():
            decoded = model.processes[field].decode(latent, out)
            assert torch.allclose(decoded, getattr(out, field), atol=1e-5), field
        # a dropped latent is re-encoded by the model from the field, and decodes back to it
        code = model.latent(out, "lattice")
        decoded = model.processes["lattice"].decode(code, out)
        assert torch.allclose(metric_tensor(decoded), metric_tensor(out.lattice), rtol=1e-4, atol=1e-4)
    assert "lattice" in Inpaint(known, lattice=True).apply(state, t, _context(model, template)).latents
    assert "lattice" not in MotifConstraint("lieb", TI).apply(state, t, _context(model, template)).latents


def test_fixed_lattice_and_fixed_atoms():
    model = _model("flow", "csp")
    crystals = tiny_crystals()[1:3]  # Si (2 atoms), NaCl (8 atoms)
    data = CrystalBatch.collate(crystals, dtype=torch.float32)
    fixed = torch.zeros(10, dtype=torch.bool)
    fixed[[0, 2, 3]] = True
    template = data.replace(fixed=fixed)
    cell = lattice_from_params(torch.tensor([5.0, 5.0, 5.0]), torch.tensor([90.0, 90.0, 90.0]))
    plan = SamplePlan(SamplerConfig(steps=4), constraints=(FixedAtoms(), FixedLattice(cell)))
    states = {s.t: s.state for s in iterate(model, template, plan, generator=_gen(3))}
    final = states[1.0]
    final.validate()
    assert torch.equal(final.lattice, cell.expand(2, 3, 3))
    assert torch.equal(final.frac_coords[fixed], data.frac_coords[fixed])
    assert not torch.allclose(final.frac_coords[~fixed], data.frac_coords[~fixed], atol=1e-3)
    assert not torch.allclose(states[0.5].lattice, cell.expand(2, 3, 3), atol=1e-2)  # re-noised on the way
    with pytest.raises(ValueError, match="marks no atom as fixed"):
        sample(model, data, SamplePlan(SamplerConfig(steps=1), constraints=(FixedAtoms(),)))
