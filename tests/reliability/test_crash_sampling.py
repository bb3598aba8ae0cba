"""Faults inside sampling: a NaN/inf structure fails alone, and families that choose atom counts resume.

- NaN or inf produced for one structure is caught per structure: the rest of its chunk is written,
  the structure is listed in ``failures.csv`` and logged with its id, the run goes on to its end,
  and a rerun samples nothing again.
- MatGAN and CDVAE decide a DNG crystal's atom count themselves, so their structures do not match
  their jobs' counts; a rerun of a finished folder must reuse every chunk, not sample it again.
"""

from __future__ import annotations

import logging
import math

import pytest

from crystalforge import api
from crystalforge.cli.main import main
from crystalforge.io.files import read_structures
from crystalforge.sampling import runner
from crystalforge.sampling.jobs import dng_jobs
from crystalforge.training.loading import load_model
from tests.reliability.test_crash_generate import snapshot


def _counting(monkeypatch: pytest.MonkeyPatch, poison: dict[str, tuple[str, float]] | None = None) -> list[list[str]]:
    """Wrap the runner's ``sample``: record each chunk's names, and put ``value`` into ``field`` of named crystals."""
    real = runner.sample
    calls: list[list[str]] = []

    def wrapped(model, template, plan, generator):
        names = list(template.material_ids or ())
        calls.append(names)
        result = real(model, template, plan, generator=generator)
        for name, (field, value) in (poison or {}).items():
            if name in names:
                b = names.index(name)
                if field == "lattice":
                    lattice = result.lattice.clone()
                    lattice[b, 0, 0] = value
                    result = result.replace(lattice=lattice)
                else:
                    start = int(result.num_atoms[:b].sum())
                    frac = result.frac_coords.clone()
                    frac[start, 1] = value
                    result = result.replace(frac_coords=frac)
        return result

    monkeypatch.setattr(runner, "sample", wrapped)
    return calls


def test_nan_and_inf_fail_one_structure_each_and_the_run_goes_on(tmp_path, monkeypatch, caplog, capsys):
    out = tmp_path / "gen"
    argv = ["generate", "--model", "perov_5-dng", "-n", "6", "--steps", "4", "--batch-size", "3", "--out", str(out)]
    poison = {"gen_00001": ("frac_coords", math.nan), "gen_00005": ("lattice", math.inf)}
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        calls = _counting(m, poison)
        assert main(argv) == 1  # fewer than -n structures: exit 1, after the whole run
    assert len(calls) == 2
    assert "gen_00001: generated structure is unusable (fractional coordinates of atom(s) [0]" in caplog.text
    assert "gen_00005: generated structure is unusable (lattice contains NaN or infinite values)" in caplog.text
    written = [c.material_id for c in read_structures(out / "samples.extxyz")]
    assert written == ["gen_00000", "gen_00002", "gen_00003", "gen_00004"]
    rows = (out / "failures.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["name", "gen_00001", "gen_00005"]
    before = snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        calls = _counting(m)
        assert main(argv) == 1
    assert calls == []  # the failures are part of the finished chunks: nothing is sampled again
    assert snapshot(out) == before


@pytest.mark.parametrize("model", ["perov_5-matgan", "mp_20-cdvae"])  # shipped
def test_families_that_choose_atom_counts_resume_without_sampling_again(tmp_path, monkeypatch, model):
    out = tmp_path / "gen"
    made = api.generate(model, n=6, out=out, steps=3, batch_size=3, seed=2)
    _, _, stats, _ = load_model(model)
    counts = {j.name: j.num_atoms for j in dng_jobs(6, stats=stats, seed=2)}
    assert any(c.num_atoms != counts[c.material_id] for c in made)  # the family chose its own counts
    before = snapshot(out)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished chunk was sampled again")

    monkeypatch.setattr(runner, "sample", no_sampling)
    again = api.generate(model, n=6, out=out, steps=3, batch_size=3, seed=2)
    assert [c.allclose(d) for c, d in zip(again, made, strict=True)] == [True] * len(made)
    assert snapshot(out) == before
