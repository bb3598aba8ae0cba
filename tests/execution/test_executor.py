"""One Executor for every parallel stage: ordered results, per-worker initializers, config choice."""

from __future__ import annotations

import os
import sys

import pytest

from crystalforge.core.extras import MissingDependencyError
from crystalforge.execution import ExecutorConfig, ProcessExecutor, RayExecutor, SerialExecutor, make_executor

_STATE: dict[str, int] = {}


def _init(value: int) -> None:
    _STATE["offset"] = value


def _add_offset(x: int) -> tuple[int, int]:
    return x + _STATE["offset"], os.getpid()


def _square(x: int) -> int:
    return x * x


def test_config_chooses_the_executor():
    assert isinstance(make_executor(1), SerialExecutor)
    assert isinstance(make_executor(2), ProcessExecutor)
    assert isinstance(make_executor(ExecutorConfig(workers=3)), ProcessExecutor)
    assert ExecutorConfig.of(4) == ExecutorConfig(workers=4) and not ExecutorConfig().parallel
    with pytest.raises(ValueError, match="workers"):
        ExecutorConfig(workers=0)
    with pytest.raises(ValueError, match="start method"):
        ExecutorConfig(start_method="teleport")


@pytest.mark.parametrize("workers", [1, 2])
def test_map_keeps_order_and_runs_the_initializer_in_every_worker(workers):
    items = list(range(23))
    with make_executor(workers, initializer=_init, initargs=(100,), start_method="spawn") as ex:
        out = ex.map(_add_offset, items, chunksize=3)
        again = ex.map(_add_offset, [1])  # the pool is kept between calls
    assert [v for v, _ in out] == [x + 100 for x in items]
    assert again[0][0] == 101
    pids = {pid for _, pid in out}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)
    assert ex.map(_square, []) == []


def test_ray_is_an_optional_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    with pytest.raises(MissingDependencyError, match=r"crystalforge\[ray\]"):
        RayExecutor(2)
    with pytest.raises(MissingDependencyError, match=r"crystalforge\[ray\]"):
        ExecutorConfig(workers=2, ray="auto")  # refused when configured, before any work
