"""Validity metric (evaluation protocol) on reference test sets: figures and wall time.

    python benchmarks/bench_validity.py [--repeats 3]

Loads perov_5 / carbon_24 / mp_20 test (Niggli-reduced, cached), then times ``validity()``
(structure + composition, smact 2.2.1 behaviour) over each. The first call per process also
builds the composition cache, so repeat 1 is the cold figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from crystalforge import load_dataset
    from crystalforge.evaluation.metrics import validity as v

    print(f"machine: {machine()}; repeats={args.repeats}")
    print(
        "| test set | n | struct % | comp % (smact14, 2.2.1) | comp % (icsd24) | validity % "
        "| wall s, cold | wall s, warm |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ("perov_5", "carbon_24", "mp_20"):
        crystals = list(load_dataset(name, "test", root=data_root()))
        times = []
        report = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report = v.validity(crystals)
            times.append(time.perf_counter() - t0)
        modern = v.validity(crystals, oxidation_states="icsd24", reproduce_smact_221=False)
        warm = times[1:] or times
        print(
            f"| {name} | {report.num_crystals} | {report.validity_struct:.2f} | {report.validity_comp:.2f} | "
            f"{modern.validity_comp:.2f} | {report.validity:.2f} | {times[0]:.2f} | "
            f"{statistics.mean(warm):.2f} ± {statistics.pstdev(warm):.2f} |"
        )


if __name__ == "__main__":
    main()
