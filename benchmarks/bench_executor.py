"""Throughput of the executors: in-process, local process pool and Ray, with 1 and 2 workers.

Three workloads, each run through the same ``Executor`` the evaluation and design stages use:

- ``overhead``: a task that returns its input, so the time per task is the executor's own cost;
- ``fingerprints``: CrystalNN fingerprints (the coverage metric's features) of mp_20 test crystals;
- ``relax``: CHGNet relaxations of mp_20 test crystals (bounded steps, so every row does the same work).

Each row reports the first call (workers start, load matminer or CHGNet) and a second, warm call
on the same executor. The projection to 100 workers is a model, not a measurement: with ``t`` the
warm serial time per task and ``o`` the driver's per-task overhead measured by ``overhead``, ``W``
workers finish ``min(W / t, 1 / o)`` tasks per second.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/bench_executor.py --json benchmarks/results/executor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import data_root, machine

from crystalforge.core import Crystal
from crystalforge.execution import ExecutorConfig, make_executor

SETUPS: tuple[tuple[str, ExecutorConfig], ...] = (
    ("serial", ExecutorConfig(workers=1)),
    ("process x2", ExecutorConfig(workers=2)),
    ("ray x1", ExecutorConfig(workers=1, ray="local")),
    ("ray x2", ExecutorConfig(workers=2, ray="local")),
)


def _identity(x: int) -> int:
    return x


def _timed(call: Callable[[], Any]) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def _shutdown_ray(config: ExecutorConfig) -> None:
    if config.ray is not None:
        import ray

        ray.shutdown()  # every Ray row starts its own cluster, so rows do not share warm workers


def overhead(config: ExecutorConfig, n: int) -> dict[str, float]:
    """Seconds for ``n`` identity tasks, cold (workers start) and warm."""
    with make_executor(config, start_method="spawn") as ex:
        cold = _timed(lambda: ex.map(_identity, range(n)))
        warm = _timed(lambda: ex.map(_identity, range(n)))
    _shutdown_ray(config)
    return {"tasks": n, "cold_s": cold, "warm_s": warm, "per_task_ms": 1000 * warm / n}


def fingerprints(config: ExecutorConfig, crystals: Sequence[Crystal]) -> dict[str, float]:
    """CrystalNN fingerprints of ``crystals``, twice on one featurizer.

    The featurizer starts its workers on each call; the second call finds the Ray cluster (or the
    imported libraries) already up.
    """
    from crystalforge.representations.fingerprints import CrystalNNFingerprint

    featurizer = CrystalNNFingerprint(workers=config)
    cold = _timed(lambda: featurizer.featurize(crystals))
    warm = _timed(lambda: featurizer.featurize(crystals))
    _shutdown_ray(config)
    return {"tasks": len(crystals), "cold_s": cold, "warm_s": warm, "per_s": len(crystals) / warm}


def relax(config: ExecutorConfig, crystals: Sequence[Crystal], max_steps: int) -> dict[str, float]:
    """CHGNet relaxations (at most ``max_steps`` FIRE steps each), cold then warm."""
    from crystalforge.relax.chgnet_mlip import chgnet_relaxer

    with chgnet_relaxer(workers=config, max_steps=max_steps, torch_threads=1) as relaxer:
        cold = _timed(lambda: relaxer.relax(crystals))
        warm = _timed(lambda: relaxer.relax(crystals))
    _shutdown_ray(config)
    return {"tasks": len(crystals), "cold_s": cold, "warm_s": warm, "per_s": len(crystals) / warm}


def project(serial_s_per_task: float, overhead_s: float, workers: int) -> float:
    """Tasks per second of ``workers`` workers in the model ``min(W / t, 1 / o)`` (a projection)."""
    return min(workers / serial_s_per_task, 1.0 / overhead_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="identity tasks for the overhead row")
    parser.add_argument("--fingerprints", type=int, default=200, help="mp_20 test crystals to fingerprint")
    parser.add_argument("--relax", type=int, default=16, help="mp_20 test crystals to relax")
    parser.add_argument("--relax-steps", type=int, default=100, help="FIRE steps per relaxation (at most)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    from crystalforge.data.benchmark import load_benchmark

    test = list(load_benchmark("mp_20", "test", root=data_root(), workers=1))
    rows: list[dict[str, Any]] = []
    for name, config in SETUPS:
        row: dict[str, Any] = {"executor": name, "workers": config.workers}
        row["overhead"] = overhead(config, args.tasks)
        row["fingerprints"] = fingerprints(config, test[: args.fingerprints])
        row["relax"] = relax(config, test[: args.relax], args.relax_steps)
        rows.append(row)
        print(json.dumps(row), flush=True)

    serial = rows[0]
    ray2 = next(r for r in rows if r["executor"] == "ray x2")
    o = ray2["overhead"]["warm_s"] / ray2["overhead"]["tasks"]
    projection = {
        work: {w: project(serial[work]["warm_s"] / serial[work]["tasks"], o, w) for w in (1, 2, 10, 100)}
        for work in ("fingerprints", "relax")
    }
    print("projection (tasks/s, a model, not a measurement):", json.dumps(projection))
    if args.json:
        payload = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "argv": argv if argv is not None else sys.argv[1:],
            "rows": rows,
            "projection_tasks_per_s": projection,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
