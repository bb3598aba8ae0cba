"""The search baselines (``random_symmetric``, ``substitution``) as model families.

What is promised: they train, generate, predict and evaluate through the unchanged CLI; the memory
holds exactly the training structures (seeded reservoir beyond its capacity, exact through the weight
average); DNG samples have the template's sizes and remembered compositions (random_symmetric) or
charge-neutral new ones (substitution); CSP keeps the template's composition; a seed fixes the
samples; what the families cannot do (guidance, a missing PyXtal) is a clear error.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from crystalforge.cli.main import main
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.extras import MissingDependencyError
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, last_state
from crystalforge.generative.search import CrystalMemory, RandomSymmetricConfig
from crystalforge.generative.search.memory import rows_for_size, scale_counts
from crystalforge.generative.search.random_symmetric import build_random_symmetric, pyxtal_volumes
from crystalforge.generative.search.substitution_table import guess_species, substitution_table
from crystalforge.io.files import write_structures
from crystalforge.registry import build_model, resolve_config
from crystalforge.sampling.templates import parse_formula, template_from_compositions, template_from_num_atoms
from crystalforge.testing import tiny_crystals
from crystalforge.training.ema import EMA

# substitutes for the tiny set's ions (NaCl, BaTiO3): alkali, halide, chalcogen, alkaline earth, Ti
ELEMENTS = [3, 8, 9, 11, 16, 17, 19, 20, 22, 35, 38, 56]


def composition(z) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(Counter(int(v) for v in z).items()))


def trained(family: str, crystals, **config):
    """A model of ``family`` that has seen ``crystals`` once, as training would show them (batches of 2)."""
    stats = compute_dataset_stats(crystals)
    model = build_model(resolve_config(config, stats, family=family), stats, family=family)
    model.train()
    for i in range(0, len(crystals) - len(crystals) % 2, 2):  # the loader drops an incomplete last batch
        model.loss(CrystalBatch.collate(crystals[i : i + 2]))
    return model.eval()


def sample(model, template, seed=0, plan=None):
    state = last_state(model.sample(template, plan or SamplePlan(), generator=torch.Generator().manual_seed(seed)))
    state.validate()
    return state


# ---- through the CLI -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "model"), [("random_symmetric", "{max_tries: 20}"), ("substitution", f"{{elements: {ELEMENTS}}}")]
)
def test_family_trains_generates_and_evaluates_through_the_cli(tmp_path, family, model):
    data = tmp_path / "data"
    crystals = tiny_crystals()[1:]  # Si2, Na4Cl4, BaTiO3, C3
    write_structures(crystals, data / "tiny.extxyz")
    config = tmp_path / "search.yaml"
    config.write_text(
        f"name: search\nfamily: {family}\nmodel: {model}\n"
        f"data: {{dataset: {data}, val_split: null, batch_size: 4}}\n"  # one batch: the exact mean's gradient
        "optim: {lr: 0.1, warmup_steps: 1, ema_decay: 0.0}\n"
        "trainer: {max_epochs: 100, accelerator: cpu, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["family"] == family and ckpt["config"]["model"]["num_train"] == 4

    from crystalforge import api

    loaded = api.load_model(run / "model.pt")
    assert loaded.config.family == family and loaded.sampler.steps == 1
    # the memory is exactly the training set (capacity 4, one pass, nothing seen twice)
    remembered = sorted(composition(row[row > 0]) for row in loaded.model.memory.types())
    assert remembered == sorted(composition(c.atomic_numbers) for c in crystals)
    # the volume scale moved from 0 towards the data's mean ln(V / V_ref)
    table = loaded.model.reference_volume.numpy()
    data_mean = np.mean([math.log(c.volume / table[c.atomic_numbers].sum()) for c in crystals])
    assert float(loaded.model.log_volume_ratio.detach()) == pytest.approx(data_mean, abs=0.05)

    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(run / "model.pt"), "-n", "4", "--num-atoms", "8", "--out", str(gen)]) == 0
    assert json.loads((gen / "run.json").read_text())["sampler"]["steps"] == 1
    assert len(list((gen / "cif").glob("*.cif"))) == 4
    out = tmp_path / "eval"
    reference = str(data / "tiny.extxyz")
    assert main(["evaluate", str(gen), "--reference", reference, "--no-coverage", "--out", str(out)]) == 0
    report = json.loads((out / "summary.json").read_text())
    assert report["n"] == 4 and report["validity_struct"] is not None

    if family == "random_symmetric":  # CSP through `crystalforge csp`
        csp = tmp_path / "csp"
        assert main(["csp", "--model", str(run / "model.pt"), "--formula", "Li2O", "SrTiO3", "--out", str(csp)]) == 0
        assert len(list((csp / "cif").glob("*.cif"))) == 2


# ---- the memory ----------------------------------------------------------------------------------
def test_reservoir_is_a_seeded_sample_and_stops_after_one_pass():
    crystals = tiny_crystals() * 4  # 20 structures, batches of 4

    def fill(seed):
        memory = CrystalMemory(3, 8, pass_size=len(crystals), seed=seed, geometry=True)
        for i in range(0, len(crystals), 4):
            memory.observe(CrystalBatch.collate(crystals[i : i + 4]))
        return memory

    a, b = fill(0), fill(0)
    assert len(a) == 3 and bool(a.complete) and int(a.seen) == 20
    assert torch.equal(a.atomic_numbers, b.atomic_numbers) and torch.equal(a.frac_bits, b.frac_bits)
    assert any(not torch.equal(a.atomic_numbers, fill(s).atomic_numbers) for s in range(1, 6))
    before = a.atomic_numbers.clone()
    a.observe(CrystalBatch.collate(crystals[:4]))  # a second epoch changes nothing
    assert torch.equal(a.atomic_numbers, before) and int(a.seen) == 20


def test_memory_keeps_structures_exactly_through_the_weight_average():
    crystals = tiny_crystals()
    memory = CrystalMemory(5, 8, pass_size=5, geometry=True)
    average = EMA(memory, decay=0.999)
    memory.observe(CrystalBatch.collate(crystals))
    average.update(memory)  # floating buffers would be blended with the (zero) initial copy here
    for row, crystal in enumerate(crystals):
        n = crystal.num_atoms
        assert average.shadow.types()[row, :n].tolist() == crystal.atomic_numbers.tolist()
        np.testing.assert_allclose(average.shadow.frac_coords(row)[:n], crystal.frac_coords, atol=1e-6)
        np.testing.assert_allclose(average.shadow.lattice(row), crystal.lattice, rtol=1e-6)


def test_sizes_fall_back_to_divisors_then_the_nearest():
    sizes = np.array([2, 8, 5, 3, 0])
    assert rows_for_size(sizes, 5)[1] == 5
    assert rows_for_size(sizes, 4) == (np.array([0]), 2)  # 2 divides 4
    assert rows_for_size(sizes, 16)[1] == 8
    assert rows_for_size(sizes, 7)[1] == 8 and rows_for_size(sizes, 13)[1] == 8  # no divisor: the nearest
    assert rows_for_size(np.array([4, 6]), 5)[1] == 4  # a tie goes to the smaller size
    with pytest.raises(ValueError, match="memory is empty"):
        rows_for_size(np.zeros(3, dtype=int), 4)
    assert scale_counts(np.array([1, 3]), 8).tolist() == [2, 6]
    assert scale_counts(np.array([1, 1, 3]), 7).tolist() == [2, 1, 4]  # floors [1, 1, 4], largest remainder
    assert scale_counts(np.array([1, 1, 3]), 2).tolist() == [1, 0, 1]  # fewer atoms than elements


@pytest.mark.parametrize("family", ["random_symmetric", "substitution"])
def test_volume_loss_is_minimal_at_the_mean_log_ratio(family):
    crystals = tiny_crystals()
    model = trained(family, crystals[:1])  # built, nothing remembered
    batch = CrystalBatch.collate(crystals, dtype=torch.float64)
    table = model.reference_volume.numpy()
    mean = np.mean([math.log(c.volume / table[c.atomic_numbers].sum()) for c in crystals])
    with torch.no_grad():
        model.log_volume_ratio.fill_(float(mean))
    model.log_volume_ratio.grad = None
    model.loss(batch)["loss"].backward()
    assert abs(float(model.log_volume_ratio.grad)) < 1e-5


# ---- random_symmetric ----------------------------------------------------------------------------
def test_random_symmetric_dng_keeps_sizes_and_draws_training_compositions():
    crystals = tiny_crystals()
    model = trained("random_symmetric", crystals, max_tries=20)
    assert isinstance(model, GenerativeModel) and model.tasks == ("csp", "dng")
    template = template_from_num_atoms([8, 5, 2, 1, 8, 4])  # 4: Si2 doubled
    state = sample(model, template)
    assert state.num_atoms.tolist() == template.num_atoms.tolist()
    known = {composition(c.atomic_numbers) for c in crystals} | {((14, 4),)}
    for crystal in state.split():
        assert composition(crystal.atomic_numbers) in known
        expected = pyxtal_volumes()[crystal.atomic_numbers].sum() * math.exp(float(model.log_volume_ratio))
        assert crystal.volume == pytest.approx(expected, rel=1e-4)  # the learned density, exactly
    same = sample(model, template)
    assert torch.equal(state.frac_coords, same.frac_coords) and torch.equal(state.lattice, same.lattice)
    assert not torch.equal(state.frac_coords, sample(model, template, seed=1).frac_coords)


def test_random_symmetric_csp_keeps_the_template_types_in_order():
    model = trained("random_symmetric", tiny_crystals(), max_tries=20)
    template = template_from_compositions([parse_formula("OLi2"), parse_formula("SrTiO3"), parse_formula("NaCl")])
    state = sample(model, template)
    assert torch.equal(state.atomic_numbers, template.atomic_numbers)
    assert torch.equal(state.num_atoms, template.num_atoms)


# ---- substitution --------------------------------------------------------------------------------
def test_substitution_makes_new_charge_neutral_compositions(caplog):
    crystals = tiny_crystals()
    model = trained("substitution", crystals, elements=tuple(ELEMENTS))
    assert model.tasks == ("dng",)
    template = template_from_num_atoms([8, 5, 8, 5, 8, 5])
    with caplog.at_level("WARNING"):
        state = sample(model, template)
    assert "unchanged prototypes" not in caplog.text
    assert state.num_atoms.tolist() == template.num_atoms.tolist()
    known = {composition(c.atomic_numbers) for c in crystals}
    table = substitution_table()
    prototypes = {8: crystals[2], 5: crystals[3]}  # the only ionic prototypes of those sizes
    for crystal in state.split():
        comp = composition(crystal.atomic_numbers)
        assert comp not in known and set(dict(comp)) <= set(ELEMENTS)
        elements, counts = zip(*comp, strict=True)
        charges = guess_species(elements, counts)
        assert charges is not None and sum(c * q for c, q in zip(counts, charges, strict=True)) == 0
        # volume: the prototype's, times the ratio of summed ionic volumes
        proto = prototypes[crystal.num_atoms]
        old_z, old_n = zip(*composition(proto.atomic_numbers), strict=True)
        old_q = guess_species(old_z, old_n)

        def ionic(zs, ns, qs):
            return sum(n * table.radius[table.index((z, q))] ** 3 for z, n, q in zip(zs, ns, qs, strict=True))

        ratio = ionic(elements, counts, charges) / ionic(old_z, old_n, old_q)
        assert crystal.volume == pytest.approx(proto.volume * ratio, rel=1e-5)
    same = sample(model, template)
    assert torch.equal(state.atomic_numbers, same.atomic_numbers) and torch.equal(state.lattice, same.lattice)


def test_substitution_refuses_csp_jobs(tmp_path):
    from crystalforge.sampling.jobs import require_task

    model = trained("substitution", tiny_crystals())
    with pytest.raises(ValueError, match="DNG model"):
        require_task(model, "csp", "subst")


# ---- what the families refuse --------------------------------------------------------------------
class _Guidance:
    requires_grad = False

    def __call__(self, predict, state, t):
        return predict(state, t)


@pytest.mark.parametrize("family", ["random_symmetric", "substitution"])
def test_guidance_is_a_clear_error(family):
    model = trained(family, tiny_crystals())
    with pytest.raises(ValueError, match=f"the {family} family cannot use guidance"):
        sample(model, template_from_num_atoms([8]), plan=SamplePlan(guidance=(_Guidance(),)))
    with pytest.raises(ValueError, match=f"start_time: the {family} family does not integrate in time"):
        sample(model, template_from_num_atoms([8]), plan=SamplePlan(SamplerConfig(steps=1, start_time=0.5)))


@pytest.mark.parametrize("family", ["random_symmetric", "substitution"])
def test_constraints_apply_to_the_final_state(family):
    seen = []

    class Shrink:
        def apply(self, state, t, context):
            seen.append((t.tolist(), context.noise(state, t) is state))
            return state.replace(lattice=state.lattice * 0.5)

    model = trained(family, tiny_crystals())
    template = template_from_num_atoms([8, 5])
    plain = sample(model, template)
    constrained = sample(model, template, plan=SamplePlan(constraints=(Shrink(),)))
    assert seen == [([1.0, 1.0], True)]
    torch.testing.assert_close(constrained.lattice, plain.lattice * 0.5)


def test_missing_pyxtal_is_a_clear_error(monkeypatch, tmp_path):
    config = RandomSymmetricConfig()
    monkeypatch.setitem(sys.modules, "pyxtal", None)  # import pyxtal now fails
    with pytest.raises(MissingDependencyError, match=r'pip install "crystalforge\[baselines\]"'):
        RandomSymmetricConfig()
    with pytest.raises(MissingDependencyError, match="random_symmetric"):
        build_random_symmetric(config, None)
    path = tmp_path / "rs.yaml"
    path.write_text("family: random_symmetric\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # refused before any work


# ---- on real data ---------------------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.parametrize("family", ["random_symmetric", "substitution"])
def test_search_families_on_mp_20(data_root, family):
    from crystalforge.data.resolve import load_dataset

    crystals = list(load_dataset("mp_20_reduced", "val", root=data_root))[:400]
    model = trained(family, crystals)
    stats = compute_dataset_stats(crystals)
    template = template_from_num_atoms(stats.sample_num_atoms(40, rng=np.random.default_rng(0)))
    state = sample(model, template)
    assert state.num_atoms.tolist() == template.num_atoms.tolist()
    known = {composition(c.atomic_numbers) for c in crystals}
    new = sum(composition(c.atomic_numbers) not in known for c in state.split())
    if family == "random_symmetric":
        assert new == 0
    else:  # mostly new compositions, at the prototypes' densities
        assert new >= 30
        data = np.median([math.log(c.volume / c.num_atoms) for c in crystals])
        made = np.median([math.log(c.volume / c.num_atoms) for c in state.split()])
        assert abs(made - data) < 0.3
