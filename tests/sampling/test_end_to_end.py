"""End to end through the API: train two steps on tiny crystals, generate, resume, predict, evaluate."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from crystalforge import api, read_structures, write_structures
from crystalforge.cli.main import main
from crystalforge.config import load_config
from crystalforge.testing import tiny_crystals
from crystalforge.training.config import TrainConfig


def _train(tmp_path, task: str, kind: str = "flow"):
    data = tmp_path / "data"
    write_structures(tiny_crystals()[1:], data / "tiny.extxyz")
    config = load_config(
        TrainConfig,
        None,
        [
            f"model.kind={kind}",
            f"model.task={task}",
            "model.backbone={hidden: 16, layers: 1, fourier_frequencies: 2, time_dim: 8}",
            f"data.dataset={data}",
            "data.val_split=null",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.threads=1",
            "optim.warmup_steps=1",
        ],
    )
    return api.train(config, tmp_path / f"run-{task}")


def test_train_generate_resume_and_evaluate(tmp_path):
    ckpt = _train(tmp_path, "dng")
    assert ckpt.exists()
    out = tmp_path / "gen"
    first = api.generate(ckpt, n=5, out=out, steps=3, batch_size=2, seed=3)
    assert len(first) == 5
    assert sorted(p.name for p in (out / "cif").iterdir())[:2] == ["gen_00000.cif", "gen_00001.cif"]
    # Resume: drop a chunk and the merged file; the rerun recreates identical structures.
    (out / "chunks" / "chunk_00001.extxyz").unlink()
    (out / "samples.extxyz").unlink()
    again = api.generate(ckpt, n=5, out=out, steps=3, batch_size=2, seed=3)
    assert [c.allclose(d, atol=1e-6) for c, d in zip(first, again, strict=True)] == [True] * 5
    report = api.evaluate(out / "samples.extxyz", reference=None, task="dng")
    assert report["n"] == 5
    # more of the same run extends it; other settings in the same folder are refused, nothing mixed
    assert len(api.generate(ckpt, n=6, out=out, steps=3, batch_size=2, seed=3)) == 6
    record = json.loads((out / "run.json").read_text())
    assert record["sampler"]["steps"] == 3 and record["seed"] == 3 and record["model"] == str(ckpt)
    for change in ({"steps": 4}, {"seed": 4}, {"anti_annealing": {"frac_coords": 2.0}}):
        with pytest.raises(ValueError, match="holds a run with other settings"):
            api.generate(ckpt, **{"n": 5, "out": out, "steps": 3, "batch_size": 2, "seed": 3, **change})
    assert len(read_structures(out / "samples.extxyz")) == 6


def test_csp_cli_outputs_are_named_for_evaluation(tmp_path, capsys):
    ckpt = _train(tmp_path, "csp")
    refs = tiny_crystals()[1:3]
    ref_file = tmp_path / "ref.extxyz"
    write_structures(refs, ref_file)
    code = main(
        [
            "csp",
            "--model",
            str(ckpt),
            "--reference",
            str(ref_file),
            "--k",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "pred"),
        ]
    )
    assert code == 0
    names = sorted(p.stem for p in (tmp_path / "pred" / "cif").iterdir())
    assert names == sorted(f"{c.material_id}_{j}" for c in refs for j in range(2))
    report = api.evaluate(tmp_path / "pred" / "cif", reference=refs, task="csp", train=False)
    assert report.details["csp_match"]["k"] == 2
    assert report["n"] == 4
    torch.manual_seed(0)
    assert (
        main(
            [
                "generate",
                "--model",
                str(ckpt),
                "--composition",
                "NaCl",
                "-n",
                "2",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    generated = read_structures(tmp_path / "g" / "samples.extxyz")
    assert [sorted(c.atomic_numbers.tolist()) for c in generated] == [[11, 17]] * 2


def test_wrong_model_task_is_a_clear_error(tmp_path, capsys):
    ckpt = _train(tmp_path, "dng")
    assert main(["csp", "--model", str(ckpt), "--formula", "NaCl", "--out", str(tmp_path / "x")]) == 2
    assert "CSP needs a CSP model" in capsys.readouterr().err
    assert main(["generate", "--model", "no-such-model", "--out", str(tmp_path / "y")]) == 2


def test_training_resumes_from_last_checkpoint(tmp_path):
    ckpt = _train(tmp_path, "csp")
    run = ckpt.parent
    assert (run / "last.ckpt").exists()
    first = json.loads((run / "metrics.json").read_text())
    config = load_config(TrainConfig, run / "config.yaml", ["trainer.max_epochs=2"])
    api.train(config, run)
    second = json.loads((run / "metrics.json").read_text())
    assert second["epochs"] == 2
    assert second["global_steps"] == 2 * first["global_steps"]  # continued, not restarted


def test_init_from_starts_from_given_weights(tmp_path):
    ckpt = _train(tmp_path, "csp")
    first_w = torch.load(ckpt, weights_only=True)["weights"]

    def max_change(overrides: list[str], out: str) -> float:
        # another seed: without init_from the run starts from other random weights
        config = load_config(
            TrainConfig, ckpt.parent / "config.yaml", ["trainer.max_epochs=1", "trainer.seed=1", *overrides]
        )
        w = torch.load(api.train(config, tmp_path / out), weights_only=True)["weights"]
        return max(float((first_w[k] - w[k]).abs().max()) for k in first_w if first_w[k].is_floating_point())

    # one more epoch of EMA-smoothed training from the given start stays close; a fresh init does not
    assert max_change([f"init_from={ckpt}"], "continued") < 0.05
    assert max_change([], "fresh") > 0.05


def test_schedule_epochs_sets_the_schedule_length(tmp_path, monkeypatch):
    from crystalforge.training import lightning

    seen = []

    class Recording(lightning.LitGenerative):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["total_steps"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lightning, "LitGenerative", Recording)
    ckpt = _train(tmp_path, "csp")
    config = load_config(
        TrainConfig, ckpt.parent / "config.yaml", ["trainer.max_epochs=1", "trainer.schedule_epochs=3"]
    )
    api.train(config, tmp_path / "longer")
    steps_per_epoch = json.loads((ckpt.parent / "metrics.json").read_text())["global_steps"]
    assert seen == [steps_per_epoch, 3 * steps_per_epoch]  # max_epochs=1 alone, then a 3-epoch schedule


def test_failed_structures_are_listed_not_resampled_and_counted(tmp_path, monkeypatch, caplog):
    from crystalforge.sampling import runner

    ckpt = _train(tmp_path, "dng")
    real = runner._to_crystals
    calls = []

    def fail_first_chunk(batch):
        names = batch.material_ids
        calls.append(list(names))
        made, failed = real(batch)
        if names[0] == "gen_00000":  # every structure of chunk 0 is unusable
            return [], [*failed, *((c.material_id, "flat cell, volume 0") for c in made)]
        return made, failed

    monkeypatch.setattr(runner, "_to_crystals", fail_first_chunk)
    out = tmp_path / "gen"
    made = api.generate(ckpt, n=4, out=out, steps=2, batch_size=2)
    assert [c.material_id for c in made] == ["gen_00002", "gen_00003"]
    # a CSV file: a reason holding a comma is quoted, not cut
    assert (out / "failures.csv").read_text().splitlines()[1:] == [
        'gen_00000,"flat cell, volume 0"',
        'gen_00001,"flat cell, volume 0"',
    ]
    again = api.generate(ckpt, n=4, out=out, steps=2, batch_size=2)  # resume: nothing is sampled again
    assert len(calls) == 2 and [c.material_id for c in again] == ["gen_00002", "gen_00003"]
    assert len((out / "failures.csv").read_text().splitlines()) == 3
    # evaluating the folder counts the two failures as invalid samples, not as absent ones (no warning)
    with caplog.at_level(logging.WARNING):
        samples = api.read_samples(out)
    assert "not counted" not in caplog.text
    assert [s.ident for s in samples] == ["gen_00002", "gen_00003", "gen_00000", "gen_00001"]
    assert [s.error for s in samples[2:]] == ["generation failed: flat cell, volume 0"] * 2
    report = api.evaluate(out, reference=made, train=False, coverage=False)
    assert report.summary["n"] == 4
    struct = [r["struct_valid"] for r in report.per_structure]
    assert struct[2:] == [False, False] and [r["valid"] for r in report.per_structure][2:] == [False, False]
    assert report.summary["validity_struct"] == pytest.approx(100.0 * sum(struct) / 4)  # over all 4, not 2
    # the samples file alone leaves them out, and says so
    with caplog.at_level(logging.WARNING):
        assert len(api.read_samples(out / "samples.extxyz")) == 2
    assert "2 structures of this generation run are listed in failures.csv and not counted" in caplog.text


def test_resume_checks_chunk_contents_and_allows_retry_before_any_chunk(tmp_path, monkeypatch):
    from crystalforge.sampling import runner

    ckpt = _train(tmp_path, "dng")
    out = tmp_path / "gen"
    assert {c.num_atoms for c in api.generate(ckpt, n=2, out=out, num_atoms=2, steps=2)} == {2}
    # same names and settings, other atom counts: the chunk is not reused
    assert {c.num_atoms for c in api.generate(ckpt, n=2, out=out, num_atoms=3, steps=2)} == {3}

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    fresh = tmp_path / "fresh"
    with monkeypatch.context() as m:
        m.setattr(runner, "sample", broken)
        with pytest.raises(RuntimeError):
            api.generate(ckpt, n=2, out=fresh, steps=2, batch_size=2)
    assert (fresh / "run.json").exists() and not any((fresh / "chunks").iterdir())
    # nothing was made: a retry with a smaller batch is allowed and recorded
    assert len(api.generate(ckpt, n=2, out=fresh, steps=2, batch_size=1)) == 2
    assert json.loads((fresh / "run.json").read_text())["batch_size"] == 1


def test_adapter_fine_tune_on_your_own_structures_and_property_table(tmp_path):
    base = _train(tmp_path, "dng")
    data = tmp_path / "own"
    # fewer elements and other cells than the base model saw: the base's vocabulary and lattice frame are kept
    crystals = [c.replace(material_id=f"s{i}") for i, c in enumerate(tiny_crystals()[1:3] * 10)]
    write_structures(crystals, data / "all.extxyz")
    table = tmp_path / "gap.csv"
    table.write_text("material_id,gap\n" + "".join(f"s{i},{0.5 * i}\n" for i in range(len(crystals))))
    overrides = [
        "model.task=dng", "model.backbone={hidden: 16, layers: 1, fourier_frequencies: 2, time_dim: 8}",
        "model.properties=[gap]", f"init_from={base}", "freeze=[pretrained]", f"data.dataset={data}",
        f"data.properties={table}", "data.batch_size=4", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.threads=1", "trainer.check_val_every_n_epoch=1", "optim.warmup_steps=1",
    ]  # fmt: skip
    ckpt = api.train(load_config(TrainConfig, None, overrides), tmp_path / "tuned")
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["frozen_parameters"] > 0 and metrics["new_weights_over_init"] > 0
    assert metrics["train_structures"] == 18  # 20 structures, 2 held out for validation
    tuned, base_w = torch.load(ckpt, weights_only=True), torch.load(base, weights_only=True)["weights"]
    mean, std = tuned["config"]["model"]["property_moments"]["gap"]  # of the 18 training values
    assert abs(mean - 4.75) < 0.6 and 2.0 < std < 3.5
    # frozen: the base is untouched (up to the rounding of the weight average of a constant)
    changed = [k for k, v in base_w.items() if not torch.allclose(tuned["weights"][k], v, rtol=0, atol=1e-6)]
    assert not changed
    assert api.load_model(ckpt).model.conditions == ("gap",)
    base_ckpt = torch.load(base, weights_only=True)
    assert tuned["config"]["model"]["elements"] == base_ckpt["config"]["model"]["elements"]
    assert tuned["dataset_stats"]["lattice_code_mean"] == base_ckpt["dataset_stats"]["lattice_code_mean"]
    assert tuned["dataset_stats"]["num_atoms_hist"] != base_ckpt["dataset_stats"]["num_atoms_hist"]
    out = api.generate(ckpt, n=2, out=tmp_path / "gen", steps=2, properties={"gap": 1.0})
    assert len(out) == 2
    bad = [*overrides[:-1], "data.properties=missing.csv"]
    with pytest.raises(Exception, match=r"missing\.csv"):
        api.train(load_config(TrainConfig, None, bad), tmp_path / "bad")
