"""Gradient-boosting baseline (Magpie + structure features): test accuracy and calibration of its std.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/predictor_baseline.py [--limit N] [--out PATH]

Fits ``crystalforge.predictors.baseline`` on the train split and scores the test split of
mp_20_reduced (formation_energy_per_atom, band_gap, e_above_hull) and perov_5 (heat_ref, dir_gap),
with both uncertainty methods (quantile models; bootstrap ensemble). Reported per row: MAE,
RMSE, the MAE of predicting the train mean, the fraction of test points with |y − mean| within
1 and 2 std (ideal 68.3 % / 95.4 %) after the hold-out calibration ``sqrt((a·raw)² + b²)`` and
before it (raw), ``a`` and ``b``, and the fit / predict wall time (features computed once per split, timed separately).
Writes ``benchmarks/results/predictor-baseline-mp_20.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import REPO, data_root, machine

from crystalforge.data.resolve import load_dataset
from crystalforge.predictors.baseline import BaselineConfig, GradientBoostingPredictor, featurize

TASKS = {
    "mp_20_reduced": ("formation_energy_per_atom", "band_gap", "e_above_hull"),
    "perov_5": ("heat_ref", "dir_gap"),
}
METHODS = ("quantile", "bootstrap")


def _split(name: str, split: str, limit: int | None, root: Path) -> dict:
    start = time.perf_counter()
    crystals = list(load_dataset(name, split, root=root))
    loaded = time.perf_counter() - start
    if limit is not None and len(crystals) > limit:
        rows = np.sort(np.random.default_rng(0).choice(len(crystals), limit, replace=False))
        crystals = [crystals[i] for i in rows]
    start = time.perf_counter()
    features, names = featurize(crystals)
    seconds = time.perf_counter() - start
    distinct = len({tuple(sorted(c.composition.items())) for c in crystals})  # per cell, not reduced
    print(f"{name}/{split}: {len(crystals)} crystals loaded in {loaded:.1f} s, featurized in {seconds:.1f} s")
    return {"crystals": crystals, "x": features, "names": names, "seconds": seconds, "distinct": distinct}


def _targets(crystals: list, prop: str) -> np.ndarray:
    return np.array([c.properties.get(prop, np.nan) for c in crystals], dtype=np.float64)


def _score(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    err = np.abs(y - mean)
    return {"within_1std": float(np.mean(err <= std)), "within_2std": float(np.mean(err <= 2 * std))}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def run_task(dataset: str, prop: str, train: dict, test: dict, method: str, seed: int) -> dict:
    y_train, y_test = _targets(train["crystals"], prop), _targets(test["crystals"], prop)
    keep_train, keep_test = np.isfinite(y_train), np.isfinite(y_test)
    model = GradientBoostingPredictor(BaselineConfig(method=method, seed=seed), threads=1)  # type: ignore[arg-type]
    start = time.perf_counter()
    model.fit_features(train["x"][keep_train], y_train[keep_train], names=train["names"])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    mean, std = model.predict_features(test["x"][keep_test])
    predict_s = time.perf_counter() - start
    y = y_test[keep_test]
    err = y - mean
    raw_std = model.predict_features(test["x"][keep_test], calibrated=False)[1]
    calibrated, raw = _score(y, mean, std), _score(y, mean, raw_std)
    return {
        "dataset": dataset,
        "property": prop,
        "method": method,
        "n_train": int(keep_train.sum()),
        "n_test": int(keep_test.sum()),
        "dropped_non_finite": int((~keep_train).sum() + (~keep_test).sum()),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae_train_mean": float(np.mean(np.abs(y - y_train[keep_train].mean()))),
        "within_1std": calibrated["within_1std"],
        "within_2std": calibrated["within_2std"],
        "raw_within_1std": raw["within_1std"],
        "raw_within_2std": raw["within_2std"],
        "spearman_std_abs_error": _spearman(std, np.abs(err)),
        "std_scale": model.std_scale,
        "std_offset": model.std_offset,
        "median_std": float(np.median(std)),
        "fit_s": fit_s,
        "predict_s": predict_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="subsample each split to N crystals (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predictor-baseline-mp_20.json")
    args = parser.parse_args()
    root = data_root()
    rows, featurized = [], {}
    total = time.perf_counter()
    for dataset, props in TASKS.items():
        train, test = (_split(dataset, s, args.limit, root) for s in ("train", "test"))
        for split, part in (("train", train), ("test", test)):
            featurized[f"{dataset}/{split}"] = {
                "crystals": len(part["crystals"]),
                "distinct_cell_compositions": part["distinct"],
                "featurize_s": part["seconds"],
            }
        for prop in props:
            for method in METHODS:
                row = run_task(dataset, prop, train, test, method, args.seed)
                rows.append(row)
                print(f"  {prop} {method}: MAE {row['mae']:.4f}, fit {row['fit_s']:.1f} s", flush=True)
    report = {
        "benchmark": "predictor-baseline",
        "protocol": "fit on train, score on test; mp_20_reduced train = mp_20 val minus a 10 % holdout (seed 0)",
        "model": "HistGradientBoostingRegressor on Magpie (132) + structure (17) features; defaults of BaselineConfig",
        "limit": args.limit,
        "seed": args.seed,
        "machine": machine(),
        "threads": 1,
        "featurize": featurized,
        "total_s": time.perf_counter() - total,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print("| dataset | property | method | n train / test | MAE | RMSE | MAE (train mean) | ≤1σ | ≤2σ |", end="")
    print(" ≤1σ raw | ≤2σ raw | a, b | fit s | predict s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['property']} | {r['method']} | {r['n_train']} / {r['n_test']} | {r['mae']:.4f} | "
            f"{r['rmse']:.4f} | {r['mae_train_mean']:.4f} | {r['within_1std']:.1%} | {r['within_2std']:.1%} | "
            f"{r['raw_within_1std']:.1%} | {r['raw_within_2std']:.1%} | {r['std_scale']:.2f}, {r['std_offset']:.3g} | "
            f"{r['fit_s']:.1f} | {r['predict_s']:.2f} |"
        )
    print(f"\nwrote {args.out} ({report['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
