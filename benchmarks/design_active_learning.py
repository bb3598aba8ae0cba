"""Active learning in ``crystalforge design``: does the screen that learns pick better candidates per round?

Two design runs with one spec and seed, ``--rounds`` rounds each (default 3): ``off`` (the shipped
surrogate screens every round) and ``on`` (``--active-learning``: after each round the screen's
``e_above_hull`` head is fine-tuned on the relaxed candidates' CHGNet E_hull). Round 0 is the same
in both (same seed, same surrogate): a built-in control. Per run and round, of the round's own top
``--top`` (by the run's ranking): the hit rate (inside the target window by the **judge**, an
independent predictor, on the relaxed structure, and CHGNet E_hull <= 0.1 eV/atom), the median
E_hull, the metastable fraction, and the screen's E_hull MAE on the round's relaxed candidates (the
surrogate's out-of-sample error). Without ``--judge`` the run's own predictor judges the window
(say so when quoting). The runs are ordinary design folders under ``--work``: a rerun resumes.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/design_active_learning.py \\
        --target band_gap=1..3 --judge runs/judge-mp20 --budget 3000 --relax-budget 180 --top 20 \\
        --work runs/bench/design-al --json benchmarks/results/design-active-learning.json

Small sizes (minutes on a 2-core CPU; no judge: the run's predictor):

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/design_active_learning.py \\
        --target band_gap=1..3 --budget 60 --batch-size 20 --relax-budget 15 --top 5 --work /tmp/design-al
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from crystalforge import api
from crystalforge.design.rank import rank
from crystalforge.design.spec import E_HULL_SCALE, DesignSpec
from crystalforge.design.store import CandidateStore
from crystalforge.screening.judge import load_judge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, machine


def _round_rows(spec: DesignSpec, run: Path, judge: str | None) -> list[dict[str, object]]:
    """Per round: the judged hit rate, median E_hull and metastable fraction of its top, and its screen MAE."""
    store = CandidateStore(run / "candidates.db")
    table = store.table()
    windows = spec.windows
    scorer = load_judge(judge) if judge else None
    meta = json.loads((run / "design.json").read_text())
    out = []
    for record in meta["round_results"]:
        rows = [r for r in table if r.get("round") == record["round"] and r.get("predict") == "done"]
        order = rank(rows, spec.ranking_objectives(), by=spec.ranking).order if rows else []
        top = [rows[i] for i in order[: spec.top]]
        e_hull = [float(r["hull_e_above_hull"]) for r in top]
        inside = [r.get("predict_in_window") is True for r in top]
        if scorer is not None and top and windows:
            crystals = [c.crystal for c in store.candidates([str(r["cid"]) for r in top])]
            inside = [True] * len(top)
            for window in windows:
                mean, _ = scorer.predict(window.name, crystals)
                inside = [a and window.contains(float(v)) for a, v in zip(inside, mean, strict=True)]
        hits = [a and e <= E_HULL_SCALE for a, e in zip(inside, e_hull, strict=True)]
        fine = record.get("fine_tune") or {}
        out.append({
            "round": record["round"], "relaxed": record["relaxed"], "surrogate": record["surrogate"],
            "screen_mae": record["screen_mae"], "n_top": len(top),
            "hit_rate": sum(hits) / len(top) if top else None,
            "median_e_hull": statistics.median(e_hull) if e_hull else None,
            "metastable_fraction": sum(e <= E_HULL_SCALE for e in e_hull) / len(top) if top else None,
            "fine_tune_pairs": fine.get("pairs"), "fine_tune_mae_before": fine.get("mae_before"),
            "fine_tune_mae_after": fine.get("mae_after"), "fine_tune_seconds": fine.get("seconds"),
        })  # fmt: skip
    return out


def _cell(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value if value is not None else "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mp_20-dng")
    parser.add_argument("--target", action="append", default=[], help="property window (repeatable)")
    parser.add_argument("--elements", help="element whitelist, e.g. Li,Mn,O")
    parser.add_argument("--judge", help="independent judge of the window (a predictor or .gbm folder)")
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--relax-budget", type=int, default=180)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--work", type=Path, required=True, help="folder of the two design runs (off/, on/)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_root()  # the novelty check reads the model's training split
    results: dict[str, list[dict[str, object]]] = {}
    seconds: dict[str, float] = {}
    for mode in ("off", "on"):
        spec = DesignSpec(
            model=args.model, targets=tuple(args.target), elements=args.elements, budget=args.budget,
            batch_size=args.batch_size, relax_budget=args.relax_budget, rounds=args.rounds, top=args.top,
            steps=args.steps, seed=args.seed, workers=args.workers, active_learning=mode == "on",
            out=str(args.work / mode), report=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        result = api.design(spec, progress=api.progress_bar)
        seconds[mode] = round(time.perf_counter() - t0, 1)
        print(result.summary())
        results[mode] = _round_rows(spec, args.work / mode, args.judge)
    judged = f"judge {args.judge}" if args.judge else "the run's predictor (no --judge)"
    print(f"\nround-top {args.top}: hit = inside {', '.join(args.target) or 'no window'} ({judged}) "
          f"and E_hull <= {E_HULL_SCALE} eV/atom (CHGNet)")  # fmt: skip
    print("| run | round | screened by | relaxed | screen E_hull MAE | hit rate | median E_hull | metastable |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        for r in rows:
            cells = (mode, r["round"], r["surrogate"], r["relaxed"], _cell(r["screen_mae"]), _cell(r["hit_rate"], 2),
                     _cell(r["median_e_hull"]), _cell(r["metastable_fraction"], 2))  # fmt: skip
            print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": "design_active_learning", "date": date.today().isoformat(), "machine": machine(),
                   "command": " ".join(sys.argv), "judge": args.judge, "seconds": seconds,
                   "rounds": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
