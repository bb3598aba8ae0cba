"""The Ray executor on a local 2-worker cluster: results in order, and a killed worker loses nothing.

Runs where Ray is installed (the test extra installs it); elsewhere the executor tests in
``tests/execution`` check that ``--ray`` is refused with a clear error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from crystalforge.execution import ExecutorConfig, RayExecutor, make_executor

ray = pytest.importorskip("ray")


def _record(item: tuple[int, str]) -> tuple[int, int]:
    """Sleeps a little, leaves a marker per execution (so repeats are visible), returns (x², pid)."""
    x, folder = item
    marker = Path(folder) / f"{x}.{os.getpid()}.{time.monotonic_ns()}"
    time.sleep(0.15)
    marker.touch()
    return x * x, os.getpid()


def test_starting_a_cluster_keeps_this_process_signal_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with make_executor(ExecutorConfig(workers=1, ray="local")) as ex:
            assert ex.map(abs, [-3]) == [3]
    finally:
        ray.shutdown()
    assert {sig: signal.getsignal(sig) for sig in before} == before  # ray.init's SIGTERM handler would exit 15


@pytest.fixture(scope="module")
def local_cluster():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for sig, handler in handlers.items():  # ray.init installs its own, which outlive the cluster
        signal.signal(sig, handler)


def test_results_in_input_order(local_cluster, tmp_path: Path) -> None:
    with make_executor(ExecutorConfig(workers=2, ray="auto")) as ex:
        assert isinstance(ex, RayExecutor)
        out = ex.map(_record, [(x, str(tmp_path)) for x in range(12)])
    assert [v for v, _ in out] == [x * x for x in range(12)]
    assert len({pid for _, pid in out}) == 2  # both actors worked


def test_killed_worker_loses_and_duplicates_nothing(local_cluster, tmp_path: Path) -> None:
    n = 24
    done = tmp_path / "done"
    done.mkdir()
    killed: list[int] = []

    def kill_one_worker() -> None:  # once 4 items finished, SIGKILL the process that ran the last one
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            markers = sorted(done.iterdir(), key=lambda p: int(p.name.split(".")[2]))
            if len(markers) >= 4:
                pid = int(markers[-1].name.split(".")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker)
    with make_executor(ExecutorConfig(workers=2, ray="auto")) as ex:
        killer.start()
        out = ex.map(_record, [(x, str(done)) for x in range(n)])
        killer.join()
    assert killed, "the worker was never killed: the test did not exercise a fault"
    assert [v for v, _ in out] == [x * x for x in range(n)]  # nothing lost, nothing counted twice
    assert killed[0] not in {pid for _, pid in out[-4:]}  # the dead process returned nothing late
    finished = {int(p.name.split(".")[0]) for p in done.iterdir()}
    assert finished == set(range(n))
