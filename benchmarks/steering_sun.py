"""Stability and S.U.N. of steered samples: does a route buy its hits with unstable structures?

For each generation folder named on the command line (``LABEL=FOLDER``, e.g. the per-route folders
that ``benchmarks/steering_success.py`` leaves in its ``--work``), the first ``-n`` structures are
relaxed with CHGNet (FIRE, the package defaults) and scored by ``api.evaluate`` against the shipped
reference hull: stable (E_hull <= 0), metastable (<= 0.1 eV/atom), and S.U.N. (stable, unique among
the samples, novel against the generator's training split), plus the judge's targeting success on
the same structures when ``--target`` and ``--judge`` are given. Relaxations are cached per folder
(a rerun resumes).

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/steering_sun.py -n 50 \\
        --target formation_energy_per_atom=-1.75..-1.25 --judge runs/judge-mp20 \\
        none=runs/bench/steer/none importance=runs/bench/steer/fe-1p5pm0p25/importance \\
        --json benchmarks/results/steering-sun-mp_20.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from _common import data_root, machine

from crystalforge import api
from crystalforge.data.samples import read_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="LABEL=FOLDER generation folders")
    parser.add_argument("-n", type=int, default=50, help="structures relaxed per folder (the first n)")
    parser.add_argument("--target", help="window scored by the judge, e.g. band_gap=0.5..1.5")
    parser.add_argument("--judge", help="judge for the target (as in crystalforge evaluate --judge)")
    parser.add_argument("--train", default="mp_20_reduced", help="the generator's training data (novelty)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = data_root()
    target = None
    if args.target:
        window = api.parse_target(args.target)
        target = (window.name, window.low, window.high)
    rows = []
    for spec in args.folders:
        label, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"expected LABEL=FOLDER, got {spec!r}")
        records = list(read_samples(Path(folder) / "samples.extxyz"))[: args.n]
        crystals = [r.crystal for r in records if r.crystal is not None]
        t0 = time.perf_counter()
        report = api.evaluate(
            crystals, reference=None, train=args.train, coverage=False, relax="chgnet", target=target,
            judge=args.judge, out=Path(folder) / "sun", root=root, workers=args.workers,
        )  # fmt: skip
        s = report.summary
        keys = ("n", "validity", "unique_rate", "novel_rate", "stable_rate", "metastable_rate", "sun_rate",
                "msun_rate", "target_success_rate")  # fmt: skip
        row = {"label": label, "folder": folder, **{k: s[k] for k in keys if k in s}}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["stability"] = report.details.get("stability")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stability"}), flush=True)
    print("| route | n | valid % | stable % | metastable % | S.U.N. % | M.S.U.N. % | success % (judge) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r.get(k, float("nan")) for k in ("validity", "stable_rate", "metastable_rate", "sun_rate",
                                                   "msun_rate", "target_success_rate")]  # fmt: skip
        print(f"| {r['label']} | {r['n']} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine(), "date": date.today().isoformat(), "argv": sys.argv, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
