"""Neighbour-graph construction on mp_20 test at 5 Å and 8 Å: crystalforge vs pymatgen, one run.

    python benchmarks/bench_neighbors.py [--limit N] [--batch 256] [--repeats 3]

crystalforge: ``radius_graph`` on CrystalBatches of ``--batch`` crystals (float64, CPU, torch
threads as set by torch). pymatgen: ``Structure.get_neighbor_list(r)`` per structure. Both
produce the same directed edge set with image offsets; edge totals are printed as a check.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N test structures (default: all)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from crystalforge import CrystalBatch, load_dataset
    from crystalforge.core.neighbors import radius_graph

    ds = load_dataset("mp_20", "test", root=data_root())
    crystals = list(ds)[: args.limit]
    batches = [
        CrystalBatch.collate(crystals[i : i + args.batch], dtype=torch.float64)
        for i in range(0, len(crystals), args.batch)
    ]
    structures = [c.to_pymatgen() for c in crystals]
    print(
        f"machine: {machine()}; torch threads={torch.get_num_threads()}; "
        f"structures={len(crystals)}; repeats={args.repeats}"
    )
    print("| cutoff Å | crystalforge struct/s | pymatgen struct/s | ratio | edges (ours / pymatgen) |")
    print("|---|---|---|---|---|")
    for cutoff in (5.0, 8.0):
        ours, theirs = [], []
        e_ours = e_theirs = 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            e_ours = sum(radius_graph(b, cutoff).num_edges for b in batches)
            ours.append(len(crystals) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            e_theirs = sum(len(s.get_neighbor_list(cutoff)[0]) for s in structures)
            theirs.append(len(crystals) / (time.perf_counter() - t0))
        ratio = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(
            f"| {cutoff:.0f} | {statistics.mean(ours):.0f} ± {statistics.pstdev(ours):.0f} | "
            f"{statistics.mean(theirs):.0f} ± {statistics.pstdev(theirs):.0f} | "
            f"{statistics.mean(ratio):.2f} ± {statistics.pstdev(ratio):.2f} | {e_ours} / {e_theirs} |"
        )


if __name__ == "__main__":
    main()
