"""Training throughput (structures/s) of the shipped configs: forward + backward + AdamW step.

    python benchmarks/bench_training.py configs/perov_5-csp-flow.yaml configs/mp_20-csp-flow.yaml ...
        [--steps 20] [--threads 2] [--device cpu]

For each config: its dataset's training split (through the cache), its model and batch size; one
warm-up step, then ``--steps`` timed optimiser steps on shuffled batches (seed 0). Reports the median
and the spread (min–max) of per-step times, structures/s and the implied epoch time. Lightning's
own per-step overhead (logging, EMA update) is not included: compare with the wall times of the
real runs in their ``metrics.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def bench(config_path: str, steps: int, device: str) -> dict:
    from dataclasses import replace

    from crystalforge.api import load_dataset
    from crystalforge.config import load_config
    from crystalforge.data.loader import make_loader
    from crystalforge.data.stats import compute_dataset_stats
    from crystalforge.registry import build_model, resolve_elements
    from crystalforge.training.run import TrainConfig

    config = load_config(TrainConfig, config_path)
    train = list(load_dataset(config.data.dataset, config.data.train_split, root=data_root()))
    stats = compute_dataset_stats(train)
    model_config = replace(config.model, elements=resolve_elements(config.model, stats))
    model = build_model(model_config, stats).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    loader = make_loader(train, batch_size=config.data.batch_size, shuffle=True, seed=0, drop_last=True)
    times, sizes = [], []
    torch.manual_seed(0)
    for i, batch in enumerate(loader):
        if i > steps:
            break
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
    step = statistics.median(times)
    per_s = statistics.median(n / t for n, t in zip(sizes, times, strict=True))
    return {
        "config": config_path,
        "train_structures": len(train),
        "batch": config.data.batch_size,
        "step_s": step,
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.threads} torch threads; device {args.device}; {args.steps} timed steps")
    print("| config | train structures | batch | step s (median, min–max) | structures/s | epoch s |")
    print("|---|---|---|---|---|---|")
    for path in args.configs:
        r = bench(path, args.steps, args.device)
        print(
            f"| {r['config']} | {r['train_structures']} | {r['batch']} | {r['step_s']:.3f} "
            f"({r['step_min']:.3f}–{r['step_max']:.3f}) | {r['structures_per_s']:.0f} | {r['epoch_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
