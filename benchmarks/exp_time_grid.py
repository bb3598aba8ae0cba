"""Ablation (flagship-quality issue, sampling lever): non-uniform time grids for the perov_5 CSP flow.

The grid is ``t_i = 1 − (1 − i/S)^p``: ``p = 1`` is the shipped uniform grid, ``p > 1`` puts more
steps near the data (t → 1), ``p < 1`` more near the prior. Each row samples every perov_5 test
composition once (k = 1) with the shipped ``perov_5-csp`` model, chunks of 256 seeded ``k`` as the
runner does (so ``10:1:0`` reproduces the shipped 10-step figures), and scores match rate and RMSE
by the pinned protocol. Rows are ``STEPS:POWER:ANTI_ANNEALING``.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/exp_time_grid.py --runs 10:1:0 10:0.5:0 \\
        --json benchmarks/results/perov_5-csp-time-grid.json
"""

from __future__ import annotations

import json
import time

import torch
from _common import perov_5_ablation, sample_flow


def grid(steps: int, power: float) -> torch.Tensor:
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return (1 - (1 - u) ** power).to(torch.float32)


def main() -> None:
    from crystalforge import api

    args, model, jobs, specs = perov_5_ablation(__doc__, "STEPS:POWER:ANTI_ANNEALING rows")
    rows = {}
    for spec, steps, power, anneal in specs:
        start = time.perf_counter()
        crystals = sample_flow(model, jobs, grid(steps, power), anneal)
        wall = time.perf_counter() - start
        report = api.evaluate(crystals, reference="perov_5", task="csp", workers=args.workers)
        rows[spec] = {"match_rate": report["match_rate"], "rmse": report["rmse"], "sampling_s": round(wall, 1)}
        print(spec, rows[spec], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
