"""Dataset preparation: structures/s to parse and cache mp_20 val+test, and cache reload time.

    python benchmarks/bench_data.py [--workers 2] [--repeats 3]

Each repeat uses a fresh, empty cache directory, so every "prepare" is a full parse.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = data_root()
    from crystalforge import load_dataset

    prepare, reload_s, first_access = [], [], []
    count = 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["CRYSTALFORGE_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            sets = [load_dataset("mp_20", s, root=root, workers=args.workers) for s in ("val", "test")]
            prepare.append(time.perf_counter() - t0)
            count = sum(len(d) for d in sets)
            t0 = time.perf_counter()
            again = [load_dataset("mp_20", s, root=root) for s in ("val", "test")]
            reload_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = sum(1 for d in again for _ in d)
            first_access.append(time.perf_counter() - t0)
            assert n == count
    rate = [count / t for t in prepare]
    print(f"machine: {machine()}; workers={args.workers}; repeats={args.repeats}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| structures (mp_20 val+test) | {count} |")
    print(f"| parse + preprocess + cache, s | {statistics.mean(prepare):.1f} ± {statistics.pstdev(prepare):.1f} |")
    print(f"| structures/s | {statistics.mean(rate):.0f} ± {statistics.pstdev(rate):.0f} |")
    print(
        f"| cache reload (both splits), ms | {1e3 * statistics.mean(reload_s):.1f}"
        f" ± {1e3 * statistics.pstdev(reload_s):.1f} |"
    )
    print(
        f"| build all {count} Crystal objects after reload, s | {statistics.mean(first_access):.2f}"
        f" ± {statistics.pstdev(first_access):.2f} |"
    )


if __name__ == "__main__":
    main()
