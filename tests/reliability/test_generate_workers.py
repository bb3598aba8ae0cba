"""``generate --workers N`` (and Ray) samples chunks elsewhere and writes the bytes of a serial run.

Chunk ``k`` is sampled from seed ``seed + k`` wherever it runs, and this process writes the chunks
in order, so a folder made on 2 local processes, or finished on them after a serial start was
stopped, or made on a 2-actor Ray cluster, must equal the serial folder file for file. The workers
must really be other processes that load the model once each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crystalforge import api
from crystalforge.cli.main import main
from crystalforge.sampling.jobs import generation_jobs
from crystalforge.sampling.runner import run_jobs
from crystalforge.sampling.samplers import with_overrides
from crystalforge.training.loading import LoadedModel, load_model
from tests.reliability.test_crash_generate import snapshot

MODEL = "perov_5-dng"
OPTIONS = {"n": 8, "steps": 5, "batch_size": 2, "seed": 5}
GENERATE = ["generate", "--model", MODEL, "-n", "8", "--steps", "5", "--batch-size", "2", "--seed", "5"]
LOADS_DIR = "CRYSTALFORGE_TEST_WORKER_LOADS"


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The folder of a serial run (``--workers 1``)."""
    out = tmp_path_factory.mktemp("serial") / "gen"
    assert main([*GENERATE, "--workers", "1", "--out", str(out)]) == 0
    return snapshot(out)


def test_two_local_workers_write_the_serial_folder(tmp_path, serial):
    out = tmp_path / "gen"
    assert main([*GENERATE, "--workers", "2", "--out", str(out)]) == 0
    assert len([name for name in serial if name.startswith("chunks/")]) == 8  # 4 chunks and their records
    assert snapshot(out) == serial


class StopRequestedError(Exception):
    """Raised from the progress callback to stop a run after some chunks."""


def test_a_serial_start_finished_on_two_workers_is_the_serial_folder(tmp_path, serial):
    out = tmp_path / "gen"
    done = []

    def stop_after_two(count: int) -> None:
        done.append(count)
        if len(done) == 2:
            raise StopRequestedError

    with pytest.raises(StopRequestedError):
        api.generate(MODEL, out=out, progress=stop_after_two, **OPTIONS)
    kept = {p.name: p.stat().st_ino for p in (out / "chunks").glob("chunk_*.extxyz")}
    assert sorted(kept) == ["chunk_00000.extxyz", "chunk_00001.extxyz"]
    assert not (out / "samples.extxyz").exists()
    api.generate(MODEL, out=out, workers=2, **OPTIONS)
    assert snapshot(out) == serial
    assert {name: (out / "chunks" / name).stat().st_ino for name in kept} == kept  # finished chunks not rewritten


def recording_load(model: str) -> LoadedModel:
    """``load_model`` that leaves a file named by the loading process's id (in ``$CRYSTALFORGE_TEST_WORKER_LOADS``)."""
    folder = Path(os.environ[LOADS_DIR])
    (folder / f"{os.getpid()}.{len(list(folder.iterdir()))}").touch()
    return load_model(model)


def test_each_worker_is_another_process_loading_the_model_once(tmp_path, monkeypatch, serial):
    loads = tmp_path / "loads"
    loads.mkdir()
    monkeypatch.setenv(LOADS_DIR, str(loads))
    net, _, stats, default = load_model(MODEL)
    jobs = generation_jobs(net, stats, n=8, seed=5, name=MODEL)
    plan = with_overrides(default, steps=5, anti_annealing=None)
    out = tmp_path / "gen"
    run_jobs(net, jobs, out, sampler=plan, batch_size=2, seed=5, model_name=MODEL, workers=2, load=recording_load)
    pids = [int(p.name.split(".")[0]) for p in loads.iterdir()]
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    assert snapshot(out) == serial


def test_several_workers_need_a_loader(tmp_path):
    net = load_model(MODEL).model
    with pytest.raises(ValueError, match="loader"):
        run_jobs(net, generation_jobs(net, None, n=2, num_atoms=5), tmp_path / "gen", workers=2, model_name=MODEL)
    assert not (tmp_path / "gen").exists()


def test_a_two_actor_ray_cluster_writes_the_serial_folder(tmp_path, serial):
    ray = pytest.importorskip("ray")
    out = tmp_path / "gen"
    try:
        api.generate(MODEL, out=out, workers=api.ExecutorConfig(workers=2, ray="local"), **OPTIONS)
    finally:
        ray.shutdown()
    assert snapshot(out) == serial
