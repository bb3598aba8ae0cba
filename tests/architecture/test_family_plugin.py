"""The seams are real: a fourth model family, written here and nowhere in the package, trains,
samples, writes a run folder and is evaluated through the unchanged CLI and API.

``ToyGaussian`` is deliberately trivial (about 50 lines): it learns one number, the mean
log volume per atom of the training cells, and samples cubic cells of that density with Gaussian
fractional coordinates around the cell centre and the training set's most common element. What is
tested is the plumbing, not the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor, nn

from crystalforge.cli.main import main
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z
from crystalforge.core.periodic import wrap_frac
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, SampleStep
from crystalforge.io.files import write_structures
from crystalforge.registry import Family, register_family, unregister_family
from crystalforge.testing import tiny_crystals


@dataclass(frozen=True)
class ToyConfig:
    sigma: float = 0.15  # spread of the fractional coordinates
    element: int = 0  # 0: the training set's most common element (filled in by resolve)


class ToyGaussian(nn.Module):
    tasks = ("csp", "dng")
    conditions = ()

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.log_volume_per_atom = nn.Parameter(torch.zeros(()))

    def loss(self, batch: CrystalBatch) -> dict[str, Tensor]:
        target = torch.log(batch.volume / batch.num_atoms.to(batch.volume.dtype))
        loss = (self.log_volume_per_atom.to(target.dtype) - target).pow(2).mean()
        return {"loss": loss, "log_volume": loss.detach()}

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig(steps=1)

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        dtype = template.frac_coords.dtype
        noise = torch.randn(template.frac_coords.shape, generator=generator, dtype=dtype)
        frac = wrap_frac(0.5 + self.config.sigma * noise)
        side = torch.exp(self.log_volume_per_atom.detach().to(dtype) / 3) * template.num_atoms.to(dtype) ** (1 / 3)
        lattice = side[:, None, None] * torch.eye(3, dtype=dtype)
        z = torch.where(template.atomic_numbers == MASK_Z, self.config.element, template.atomic_numbers)
        state = template.replace(atomic_numbers=z, frac_coords=frac, lattice=lattice)
        for constraint in plan.constraints:
            state = constraint.apply(state, torch.ones(len(state), dtype=dtype), None)  # type: ignore[arg-type]
        yield SampleStep(index=0, t=1.0, state=state)


def _resolve(config: ToyConfig, stats: DatasetStats | None) -> ToyConfig:
    if config.element or stats is None:
        return config
    return replace(config, element=max(stats.elements, key=lambda z: stats.element_counts[z]))


TOY = Family("toy_gaussian", ToyConfig, lambda config, stats: ToyGaussian(config), _resolve, "test-only toy")


@pytest.fixture
def toy_family():
    register_family(TOY)
    yield TOY
    unregister_family(TOY.name)


def test_toy_family_is_a_generative_model():
    assert isinstance(ToyGaussian(ToyConfig()), GenerativeModel)


def test_fourth_family_trains_samples_and_evaluates_through_the_cli(tmp_path, toy_family, capsys):
    data = tmp_path / "data"
    crystals = tiny_crystals()[1:]
    write_structures(crystals, data / "tiny.extxyz")
    config = tmp_path / "toy.yaml"
    config.write_text(
        "name: toy\nfamily: toy_gaussian\nmodel: {sigma: 0.2}\n"
        f"data: {{dataset: {data}, val_split: null, batch_size: 2}}\n"
        "optim: {lr: 0.1, warmup_steps: 1, ema_decay: 0.0}\n"
        "trainer: {max_epochs: 30, accelerator: cpu, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["family"] == "toy_gaussian" and ckpt["config"]["model"]["sigma"] == 0.2
    # trained: the learned volume per atom moved from exp(0) = 1 Å³ towards the data's
    learned = math.exp(float(ckpt["weights"]["log_volume_per_atom"]))
    data_mean = math.exp(sum(math.log(c.volume / c.num_atoms) for c in crystals) / len(crystals))
    assert abs(math.log(learned / data_mean)) < abs(math.log(1.0 / data_mean)) / 2

    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(run / "model.pt"), "-n", "5", "--num-atoms", "4", "--out", str(gen)]) == 0
    record = json.loads((gen / "run.json").read_text())
    assert record["sampler"]["steps"] == 1  # the family's own default sampler
    assert len(list((gen / "cif").glob("*.cif"))) == 5

    out = tmp_path / "eval"
    reference = str(data / "tiny.extxyz")
    assert main(["evaluate", str(gen), "--reference", reference, "--no-coverage", "--out", str(out)]) == 0
    report = json.loads((out / "summary.json").read_text())
    assert report["n"] == 5 and report["validity_struct"] is not None
    # the same checkpoint loads through the API by its recorded family
    from crystalforge import api

    loaded = api.load_model(run / "model.pt")
    assert isinstance(loaded.model, ToyGaussian) and loaded.config.family == "toy_gaussian"


def test_unknown_family_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("family: no_such_family\n")
    from crystalforge.config import load_config
    from crystalforge.training.config import TrainConfig

    with pytest.raises(KeyError, match=r"unknown model family 'no_such_family'.*joint"):
        load_config(TrainConfig, config)
