"""The runner's contract: targets ride on jobs but are not results; run.json pins targets and steering."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.generative.interfaces import FieldOutputs, PredictFn, SamplePlan, SamplerConfig
from crystalforge.generative.joint_config import BackboneConfig, ModelConfig
from crystalforge.io.files import read_structures, write_structures
from crystalforge.registry import build_model
from crystalforge.sampling.jobs import generation_jobs
from crystalforge.sampling.runner import Job, run_jobs
from crystalforge.testing import tiny_crystals

TINY = BackboneConfig(hidden=16, layers=1, fourier_frequencies=2, time_dim=8)


def _conditional_model():
    stats = compute_dataset_stats(tiny_crystals())
    return build_model(ModelConfig(task="dng", backbone=TINY, properties=("band_gap",)), stats), stats


@dataclass(frozen=True)
class Scale:
    """A guidance with settings (a dataclass: recorded by value in run.json)."""

    factor: float = 1.0
    requires_grad: bool = False

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: torch.Tensor) -> FieldOutputs:
        out = predict(state, t)
        return FieldOutputs(out.frac_coords * self.factor, out.lattice, out.atomic_numbers)


def test_targets_condition_the_template_but_are_not_written_as_properties(tmp_path):
    model, stats = _conditional_model()
    assert model.conditions == ("band_gap",)
    jobs = generation_jobs(model, stats, n=4, num_atoms=2, properties={"band_gap": 1.5})
    made = run_jobs(model, jobs, tmp_path / "a", sampler=SamplerConfig(steps=2), batch_size=2)
    assert len(made) == 4 and all("band_gap" not in c.properties for c in made)
    assert all("band_gap" not in c.properties for c in read_structures(tmp_path / "a" / "samples.extxyz"))
    # the targets are pinned: resuming the folder with other targets is refused, the same ones resume
    other = generation_jobs(model, stats, n=4, num_atoms=2, properties={"band_gap": 3.0})
    with pytest.raises(ValueError, match="targets"):
        run_jobs(model, other, tmp_path / "a", sampler=SamplerConfig(steps=2), batch_size=2)
    more = generation_jobs(model, stats, n=6, num_atoms=2, properties={"band_gap": 1.5})
    again = run_jobs(model, more, tmp_path / "a", sampler=SamplerConfig(steps=2), batch_size=2)  # extends
    assert len(again) == 6 and [c.allclose(d) for c, d in zip(made, again[:4], strict=True)] == [True] * 4
    with pytest.raises(ValueError, match=r"cannot be conditioned on \['e_form'\]"):
        generation_jobs(model, stats, n=1, num_atoms=2, properties={"e_form": -1.0})


def test_steering_is_recorded_by_value_so_a_restart_resumes(tmp_path):
    model, _ = _conditional_model()
    jobs = [Job(f"j{i}", 2) for i in range(4)]
    out = tmp_path / "g"
    run_jobs(model, jobs[:2], out, sampler=SamplePlan(SamplerConfig(steps=2), guidance=(Scale(0.5),)), batch_size=2)
    # a new object with the same settings (as after a restart) resumes and extends the run
    plan = SamplePlan(SamplerConfig(steps=2), guidance=(Scale(0.5),))
    assert len(run_jobs(model, jobs, out, sampler=plan, batch_size=2)) == 4
    with pytest.raises(ValueError, match="steering"):
        run_jobs(model, jobs, out, sampler=SamplePlan(SamplerConfig(steps=2), guidance=(Scale(2.0),)), batch_size=2)


def test_a_folder_scan_skips_txt_notes(tmp_path):
    from crystalforge.data.samples import read_samples

    write_structures(tiny_crystals()[1:2], tmp_path / "a.cif")
    (tmp_path / "notes.txt").write_text("how these were made\n")
    assert [c.ok for c in read_samples(tmp_path)] == [True]
    write_structures(tiny_crystals()[1:3], tmp_path / "more.cftxt")  # the crystal text format's own suffix
    assert [c.ok for c in read_samples(tmp_path)] == [True, True, True]
