"""Training throughput (structures/s) of the shipped configs: forward + backward + AdamW step.

    python benchmarks/bench_training.py configs/perov_5-csp-flow.yaml configs/mp_20-csp-flow.yaml ...
        [--steps 20] [--threads 2] [--device cpu] [--json OUT.json]

For each config: its dataset's training split (through the cache), its model and batch size (the
same set-up as ``crystalforge train``: ``training.run.prepare``); one warm-up step, then ``--steps``
timed optimiser steps on shuffled batches (seed 0; the loader is cycled for small datasets). Reports the median
and the spread (min–max) of per-step times, structures/s and the implied epoch time. Lightning's
own per-step overhead (logging, EMA update) is not included: compare with the wall times of the
real runs in their ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def bench(config_path: str, steps: int, device: str) -> dict:
    import itertools

    from crystalforge.config import load_config
    from crystalforge.data.loader import make_loader
    from crystalforge.training.config import TrainConfig
    from crystalforge.training.run import prepare

    config = load_config(TrainConfig, config_path, [f"data.root={data_root()}"])
    train, _, _, _, model = prepare(config)
    model = model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    loader = make_loader(train, batch_size=config.data.batch_size, shuffle=True, seed=0, drop_last=True)
    times, sizes = [], []
    torch.manual_seed(0)
    # the loader is cycled: small training sets (carbon_24: 7 batches) still give `steps` timed steps
    for i, batch in enumerate(itertools.islice(itertools.cycle(loader), steps + 1)):
        batch = batch.to(device)
        t0 = time.perf_counter()
        loss = model.loss(batch)["loss"]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optim.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
            sizes.append(batch.num_crystals)
    per_s = statistics.median(n / t for n, t in zip(sizes, times, strict=True))
    return {
        "config": config_path,
        "train_structures": len(train),
        "batch": config.data.batch_size,
        "timed_steps": len(times),
        "step_s": statistics.median(times),
        "step_min": min(times),
        "step_max": max(times),
        "structures_per_s": per_s,
        "epoch_s": len(train) / per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.threads} torch threads; device {args.device}; {args.steps} timed steps")
    print("| config | train structures | batch | timed steps | step s (median, min–max) | structures/s | epoch s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for path in args.configs:
        r = bench(path, args.steps, args.device)
        rows.append(r)
        print(
            f"| {r['config']} | {r['train_structures']} | {r['batch']} | {r['timed_steps']} | {r['step_s']:.3f} "
            f"({r['step_min']:.3f}–{r['step_max']:.3f}) | {r['structures_per_s']:.0f} | {r['epoch_s']:.1f} |",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:], "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
