"""CrystalNN fingerprint: per-site time of the two implementations, routes, and chunked featurizing.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/crystalnn_speed.py [--n 100] [--routes 300:900] \\
        [--chunked 1000]

1. The first ``--n`` mp_20 test structures, every site, in this process on one thread:
   ``CrystalNNOps.structure`` (the array implementation) and matminer's per-site ``featurize``,
   ms per site and the largest difference between them.
2. mp_20 test rows ``--routes START:STOP``: how many sites each route took (``CrystalNNOps.routes``:
   ``arrays`` or the reason a site went to pymatgen's CrystalNN).
3. The first ``--chunked`` mp_20 test structures featurized on 2 workers in one call and 100 at a
   time (as the coverage metric does, through ``cached_features``), CrystalNN and Magpie.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import data_root, machine


def main() -> None:
    import torch

    from crystalforge import load_dataset
    from crystalforge.evaluation.features import cached_features
    from crystalforge.evaluation.metrics.coverage import FEATURE_CHUNK
    from crystalforge.representations.crystalnn_ops import CrystalNNOps
    from crystalforge.representations.fingerprints import CrystalNNFingerprint, MagpieComposition

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--routes", default="300:900")
    parser.add_argument("--chunked", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    test = list(load_dataset("mp_20", "test", root=data_root()))
    library = CrystalNNFingerprint(implementation="matminer").impl
    print(f"machine: {machine()}")

    structures = [c.to_pymatgen() for c in test[: args.n]]
    sites = sum(len(s) for s in structures)
    ops = CrystalNNOps(library.cnn)
    t0 = time.perf_counter()
    ours = [ops.structure(s) for s in structures]
    t1 = time.perf_counter()
    theirs = [np.array([library.featurize(s, i) for i in range(len(s))]) for s in structures]
    t2 = time.perf_counter()
    gap = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    print(
        f"per site, first {args.n} mp_20 test structures ({sites} sites): arrays {1e3 * (t1 - t0) / sites:.2f} ms, "
        f"matminer {1e3 * (t2 - t1) / sites:.2f} ms; largest |difference| {gap:.3g}"
    )

    start, stop = (int(x) for x in args.routes.split(":"))
    ops = CrystalNNOps(library.cnn)
    for crystal in test[start:stop]:
        ops.structure(crystal.to_pymatgen())
    total = sum(ops.routes.values())
    print(f"routes, mp_20 test rows {start}-{stop} ({total} sites):")
    for route, count in ops.routes.most_common():
        print(f"  {route}: {count} ({100 * count / total:.1f} %)")

    crystals = test[: args.chunked]
    for featurizer in (CrystalNNFingerprint(workers=2), MagpieComposition(scaler="cdvae", workers=2)):
        t0 = time.perf_counter()
        featurizer.featurize(crystals)
        t1 = time.perf_counter()
        cached_features(featurizer, crystals, cache_dir=Path(tempfile.mkdtemp()), chunk_size=FEATURE_CHUNK)
        t2 = time.perf_counter()
        print(
            f"{featurizer.name}, {len(crystals)} structures, 2 workers: one call {t1 - t0:.1f} s, "
            f"{FEATURE_CHUNK} at a time {t2 - t1:.1f} s"
        )


if __name__ == "__main__":
    main()
