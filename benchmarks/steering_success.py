"""Steering benchmark: success rate per route and target window, judged by an independent predictor.

For each window (e.g. ``formation_energy_per_atom=-1.5±0.25``) and each route (unconditional,
importance resampling, predictor gradient), generate ``n`` crystals with the DNG model, then
evaluate them with ``crystalforge.api.evaluate``: validity, uniqueness, novelty against the model's
training split, the targeting success rate on the values the **judge** predicts, and the unique
hits (hits that are not a copy of an earlier structure: resampling with replacement cannot inflate them) (a predictor of
another architecture, trained on data the generator never saw). The training-set base rate (DFT
values of the generator's training split in the window) and the judge's own error on held-out data
go beside it. One JSON holds every row with the command line.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/steering_success.py \
        --predictor runs/pred-mp20/predictor.pt --judge runs/judge-mp20 -n 200 \
        --work runs/bench/steer --json benchmarks/results/steering-mp_20.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from crystalforge import api
from crystalforge.sampling.targets import PropertyTarget
from crystalforge.screening.judge import load_judge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, machine

WINDOWS = (
    "formation_energy_per_atom=-0.5±0.25",
    "formation_energy_per_atom=-1.5±0.25",
    "formation_energy_per_atom=-2.5±0.25",
    "band_gap=1±0.5",
    "band_gap=3±0.5",
)


def _evaluate(folder: Path, target: PropertyTarget, judge: str, train: str, root: Path) -> dict[str, float]:
    report = api.evaluate(
        folder, reference=None, train=train, coverage=False, target=(target.name, target.low, target.high),
        judge=judge, root=root, workers=1,
    )  # fmt: skip
    s = report.summary
    keys = ("n", "validity", "validity_struct", "validity_comp", "unique_rate", "novel_rate", "target_success_rate")
    rows = report.per_structure
    # hits that are not a copy of an earlier structure: what resampling with replacement cannot inflate
    unique_hits = sum(bool(r.get("target_success")) and bool(r.get("unique")) for r in rows)
    extra = {"unique_success_rate": 100.0 * unique_hits / max(1, len(rows))}
    return (
        {k: s.get(k) for k in keys if k in s}
        | extra
        | {"all": {k: v for k, v in s.items() if isinstance(v, (int, float))}}
    )


def _base_rate(target: PropertyTarget, train: list) -> float:
    values = np.array([c.properties.get(target.name, np.nan) for c in train], dtype=float)
    ok = np.isfinite(values)
    inside = [target.contains(float(v)) for v in values[ok]]
    return 100.0 * float(np.mean(inside))


def _judge_error(judge: str, holdout: list, names: set[str]) -> dict[str, float]:
    j = load_judge(judge)
    out = {}
    for name in sorted(names):
        y = np.array([c.properties.get(name, np.nan) for c in holdout], dtype=float)
        mean, _ = j.predict(name, holdout)
        ok = np.isfinite(y)
        out[name] = float(np.mean(np.abs(mean[ok] - y[ok])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mp_20-dng")
    parser.add_argument("--predictor", required=True, help="guiding predictor")
    parser.add_argument("--judge", required=True, help="independent judge (train-predictor --baseline on mp_20 test)")
    parser.add_argument("--train", default="mp_20_reduced", help="the generator's training data (base rate, novelty)")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--windows", nargs="*", default=list(WINDOWS))
    parser.add_argument("--routes", nargs="*", default=["none", "importance", "gradient"])
    parser.add_argument("--oversample", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--type-scale", type=float, default=None, help="gradient route on types (0: coordinates only)")
    parser.add_argument("--guidance-start", type=float, default=None, help="gradient route: first time it acts")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root()
    train = list(api.load_dataset(args.train, "train", root))
    holdout = list(api.load_dataset(args.train, "val", root))
    targets = [api.parse_target(w) for w in args.windows]
    rows = []
    timings: dict[str, float] = {}
    uncond = args.work / "none"
    if "none" in args.routes:
        t0 = time.perf_counter()
        api.generate(args.model, n=args.n, out=uncond, steps=args.steps, seed=0)
        timings["none"] = time.perf_counter() - t0
    for target, text in zip(targets, args.windows, strict=True):
        slug = text.replace("formation_energy_per_atom", "fe").replace("±", "pm").replace("=", "").replace(".", "p")
        for route in args.routes:
            folder = uncond
            if route != "none":
                folder = args.work / slug / route
                steering = api.Steering(targets=(target,), predictor=args.predictor, route=route,
                                        guidance_scale=args.guidance, oversample=args.oversample,
                                        type_scale=args.type_scale, guidance_start=args.guidance_start)  # fmt: skip
                t0 = time.perf_counter()
                api.generate(args.model, n=args.n, out=folder, steps=args.steps, seed=0, steering=steering)
                timings[f"{slug}/{route}"] = time.perf_counter() - t0
            metrics = _evaluate(folder, target, args.judge, args.train, root)
            row = {"window": str(target), "route": route, **{k: v for k, v in metrics.items() if k != "all"}}
            row["base_rate"] = _base_rate(target, train)
            row["sampling_s"] = timings.get(f"{slug}/{route}", timings.get("none"))
            rows.append(row | {"summary": metrics["all"]})
            print(json.dumps({k: v for k, v in row.items()}), flush=True)
    judge_mae = _judge_error(args.judge, holdout, {t.name for t in targets})
    print("| window | route | valid % | unique % | novel % | success % (judge) | unique hits % | base rate % | x base |"
          " sampling s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["target_success_rate"] / r["base_rate"] if r["base_rate"] else float("nan")
        cells = [r["validity"], r["unique_rate"], r["novel_rate"], r["target_success_rate"], r["unique_success_rate"],
                 r["base_rate"]]  # fmt: skip
        numbers = " | ".join(f"{v:.1f}" for v in cells)
        print(f"| {r['window']} | {r['route']} | {numbers} | {ratio:.2f} | {r['sampling_s']:.0f} |")
    print("judge MAE on the generator's held-out split:", judge_mae)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine(), "date": date.today().isoformat(), "argv": sys.argv, "n": args.n,
                   "judge_mae_holdout": judge_mae, "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
