"""Evaluation protocol throughput: proxy-metric suite, CSP matching, CHGNet relaxation.

    python benchmarks/bench_evaluation.py proxy [--n 10000] [--workers 2] [--warm] [--implementations arrays matminer]
    python benchmarks/bench_evaluation.py csp [--workers 1 2]
    python benchmarks/bench_evaluation.py relax [--n 24] [--workers 1]

``proxy``: validity + COV-R/P + Wasserstein (density, #elements) for ``n`` structures (mp_20 val,
then mp_20 train_partial) against the mp_20 test set. The reference fingerprints are computed in
this (cold) run and cached; timings are printed per part, so the cost of a later run with the
reference cached is the total minus ``coverage.fingerprints_reference`` (``--warm`` measures it
with a second run). With ``--implementations arrays matminer`` both CrystalNN paths run on the same
samples, and their cached fingerprints of every reference structure are compared (the samples'
are not cached in this benchmark).
``csp``: StructureMatcher pairs/s for mp_20 test structures against perturbed copies of themselves
(0.05 Å Gaussian noise, 2 % strain: realistic near-matches) and against themselves.
``relax``: CHGNet FIRE relaxations/min from mp_20 test structures perturbed the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def _perturbed(crystals: list, *, seed: int = 0, noise: float = 0.05, strain: float = 0.02) -> list:
    from crystalforge.core.crystal import Crystal

    rng = np.random.default_rng(seed)
    out = []
    for c in crystals:
        lat = c.lattice @ (np.eye(3) + rng.uniform(-strain, strain, (3, 3)))
        cart = c.frac_coords @ c.lattice + rng.normal(0.0, noise, c.frac_coords.shape)
        out.append(Crystal(c.atomic_numbers, cart @ np.linalg.inv(lat), lat, material_id=c.material_id))
    return out


def bench_proxy(n: int, workers: int, warm: bool, implementations: list[str]) -> None:
    from crystalforge import load_dataset
    from crystalforge.core.candidate import Candidate
    from crystalforge.evaluation.context import EvaluationContext
    from crystalforge.evaluation.metrics.coverage import COVERAGE_CUTOFFS, CoverageMetric
    from crystalforge.evaluation.metrics.distribution import PropertyDistributionMetric
    from crystalforge.evaluation.metrics.validity import ValidityMetric
    from crystalforge.evaluation.suite import run_evaluation
    from crystalforge.representations.fingerprints import CrystalNNFingerprint, MagpieComposition

    root = data_root()
    pool = list(load_dataset("mp_20", "val", root=root)) + list(load_dataset("mp_20", "train_partial", root=root))
    samples = [Candidate.of(c, c.material_id or str(i)) for i, c in enumerate(pool[:n])]
    reference = list(load_dataset("mp_20", "test", root=root))
    atoms = sum(c.num_atoms for c in pool[:n])
    print(f"machine: {machine()}; workers={workers}")
    print(f"samples: {len(samples)} structures ({atoms} sites); reference mp_20 test {len(reference)} structures")
    caches = {impl: Path(tempfile.mkdtemp(prefix=f"cf-bench-fp-{impl}-")) for impl in implementations}
    runs = [(impl, "cold (reference fingerprints computed)") for impl in implementations]
    runs += [(impl, "warm (reference fingerprints cached)") for impl in implementations if warm]
    try:
        for number, (impl, label) in enumerate(runs):
            ctx = EvaluationContext(
                samples=samples,
                reference=reference,
                reference_name="mp_20/test",
                struct_featurizer=CrystalNNFingerprint(implementation=impl, workers=workers),
                comp_featurizer=MagpieComposition(scaler="cdvae", workers=workers),
                coverage_cutoffs=COVERAGE_CUTOFFS["mp_20"],
                workers=workers,
                cache_dir=caches[impl],
            )
            t0 = time.perf_counter()
            report = run_evaluation(ctx, [ValidityMetric(), CoverageMetric(), PropertyDistributionMetric()])
            wall = time.perf_counter() - t0
            s = report.summary
            print(f"\nCrystalNN implementation {impl!r}, {label}: {wall:.1f} s total", flush=True)
            for key, value in sorted(report.timings.items()):
                print(f"  {key}: {value:.1f} s")
            print(
                f"  validity {s['validity']:.2f} %, COV-R {s['cov_recall']:.4f} %, COV-P {s['cov_precision']:.4f} %, "
                f"wdist density {s['wdist_density']:.4f}, wdist #elements {s['wdist_num_elements']:.4f}",
                flush=True,
            )
            if number == len(implementations) - 1 and len(caches) > 1:  # every implementation has run once
                _compare_fingerprints(caches)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)


def _compare_fingerprints(caches: dict[str, Path]) -> None:
    """Largest difference per structure between the implementations' cached CrystalNN fingerprints."""
    arrays = {}
    for impl, cache in caches.items():
        loaded = [np.load(f) for f in sorted(cache.glob("crystalnn-*.npy"))]
        arrays[impl] = {x.shape: x for x in loaded}
    (first, a), *others = arrays.items()
    for impl, b in others:
        for shape in sorted(set(a) & set(b)):
            gap = np.abs(a[shape] - b[shape])
            both_nan = np.isnan(a[shape]) & np.isnan(b[shape])
            gap[both_nan] = 0.0
            per_row = np.nanmax(np.where(np.isnan(gap), np.inf, gap), axis=1)
            print(
                f"\nCrystalNN fingerprints {first!r} against {impl!r}, {shape[0]} structures x {shape[1]}: "
                f"largest |difference| {per_row.max():.3g}; structures above 1e-6: {int((per_row > 1e-6).sum())}; "
                f"NaN rows {int(np.isnan(a[shape]).all(axis=1).sum())} / {int(np.isnan(b[shape]).all(axis=1).sum())}",
                flush=True,
            )


def bench_csp(workers_list: list[int], n: int) -> None:
    from crystalforge import load_dataset
    from crystalforge.evaluation.metrics.csp import csp_match

    reference = list(load_dataset("mp_20", "test", root=data_root()))[:n]
    perturbed = _perturbed(reference)
    print(f"machine: {machine()}; {n} mp_20 test structures")
    print("| pairs | workers | match rate % | RMSE | wall s | pairs/s |")
    print("|---|---|---|---|---|---|")
    for name, preds in (("perturbed copy", perturbed), ("identical copy", reference)):
        for workers in workers_list:
            t0 = time.perf_counter()
            result = csp_match(
                {c.material_id: [p] for c, p in zip(reference, preds, strict=True)}, reference, workers=workers
            )
            wall = time.perf_counter() - t0
            print(f"| {name} | {workers} | {result.match_rate:.2f} | {result.rmse:.4f} | {wall:.1f} | {n / wall:.0f} |")


def bench_relax(n: int, workers: int) -> None:
    from crystalforge import load_dataset
    from crystalforge.relax.registry import get_relaxer

    crystals = _perturbed(list(load_dataset("mp_20", "test", root=data_root()))[:n], seed=1)
    atoms = sum(c.num_atoms for c in crystals)
    print(f"machine: {machine()}; {n} perturbed mp_20 test structures ({atoms} atoms), workers={workers}")
    with get_relaxer("chgnet", workers=workers) as relaxer:
        relaxer.relax(crystals[:1])  # load the model (and start workers) outside the timing
        t0 = time.perf_counter()
        results = relaxer.relax(crystals)
        wall = time.perf_counter() - t0
    ok = [r for r in results if r.failure is None]
    steps = [r.steps for r in ok]
    drop = [r.initial_energy_per_atom - r.energy_per_atom for r in ok]
    print(
        f"{len(ok)}/{n} relaxed ({sum(r.converged for r in ok)} converged), {wall:.1f} s, "
        f"{60 * n / wall:.1f} structures/min, median {np.median(steps):.0f} steps, "
        f"median energy drop {1000 * np.median(drop):.1f} meV/atom"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["proxy", "csp", "relax"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--warm", action="store_true", help="proxy: run a second time with the reference cached")
    parser.add_argument(
        "--implementations",
        nargs="+",
        default=["arrays"],
        choices=["arrays", "matminer"],
        help="proxy: CrystalNN implementations, one after the other; with two, their fingerprints are compared",
    )
    args = parser.parse_args()
    if args.what == "proxy":
        bench_proxy(args.n or 10_000, args.workers[0], args.warm, args.implementations)
    elif args.what == "csp":
        bench_csp(args.workers, args.n or 1000)
    else:
        bench_relax(args.n or 24, args.workers[0])


if __name__ == "__main__":
    main()
