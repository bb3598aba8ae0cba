"""``crystalforge design`` at scale, and the quality of its top N against two baseline feeds.

Three design runs with one spec (target, budget, relax budget, top N, seed), differing only in what
feeds the funnel:

- ``steered``: the shipped ``mp_20-dng`` with the importance route towards the target (the default);
- ``unconditional``: the same model with ``route: none`` (the target only screens and ranks);
- ``pyxtal``: random symmetric structures (PyXtal ``from_random``: a composition drawn from the
  generator's training split, a space group drawn uniformly from 2-230, redrawn until PyXtal can
  place the atoms), fed to the same funnel.

Per run: the funnel counts and the wall time of every stage (``design.json``). Then the top N of
each run is judged **independently of the run**: its as-generated structures are relaxed afresh with
CHGNet (``api.evaluate``, its own cache, not the run's) and scored against the shipped hull
(metastable: E_hull <= 0.1 eV/atom), for novelty against the training split, and for the target by
the **judge** (an independent predictor, ``--judge``) on the freshly relaxed structures. A hit is in
the window and metastable. Rates are over the N (a failed relaxation counts as a miss).

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/design_quality.py \\
        --target band_gap=1.5..2.5 --judge runs/judge-mp20 --budget 1000 --relax-budget 40 --top 20 \\
        --workers 2 --work runs/bench/design-quality --json benchmarks/results/design-quality-mp_20.json

Every run is an ordinary design folder under ``--work``: a rerun resumes (generation, relaxations and
the fresh relaxations are cached). PyXtal is optional (``pip install "crystalforge[baselines]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import numpy as np

from crystalforge import api
from crystalforge.core.crystal import Crystal
from crystalforge.design.pipeline import run_design
from crystalforge.design.spec import DesignSpec
from crystalforge.design.stages import initial_crystals
from crystalforge.design.store import CandidateStore
from crystalforge.screening.judge import load_judge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, machine

FEEDS = ("steered", "unconditional", "pyxtal")


def pyxtal_feed(train: Sequence[Crystal], tries: int = 50) -> Callable[..., list[Crystal]]:
    """A ``Generate`` that ignores the model and makes random symmetric structures (cached per batch folder)."""
    from pyxtal import pyxtal

    def generate(model: str, *, n: int, out: Path, seed: int, progress: Callable[[int], object], **_: object):
        path = Path(out) / "samples.extxyz"
        if path.exists():
            return api.read_structures(path)
        rng = np.random.default_rng(seed)
        made = []
        for i in range(n):
            source = train[int(rng.integers(len(train)))]
            counts: dict[str, int] = {}
            for z in source.atomic_numbers.tolist():
                counts[api.z_to_symbol(z)] = counts.get(api.z_to_symbol(z), 0) + 1
            for _ in range(tries):
                group, state = int(rng.integers(2, 231)), int(rng.integers(2**31))
                xtal = pyxtal()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        xtal.from_random(3, group, list(counts), list(counts.values()), random_state=state)
                except Exception:  # noqa: BLE001 - PyXtal raises many kinds for an impossible group
                    continue
                if xtal.valid:
                    made.append(Crystal.from_pymatgen(xtal.to_pymatgen(), material_id=f"pyxtal_{i:05d}"))
                    break
            progress(1)
        Path(out).mkdir(parents=True, exist_ok=True)
        api.write_structures(made, path)
        return made

    return generate


def _pct(count: float, total: int) -> float | None:
    return round(100.0 * count / total, 1) if total else None


def judge_top(run: Path, spec: DesignSpec, judge: str | None, workers: int, root: Path) -> dict[str, object]:
    """The run's top N relaxed afresh from the as-generated structures, then scored (module docstring)."""
    meta = json.loads((run / "design.json").read_text())
    cids = [str(c) for c in meta["top"]]
    crystals = initial_crystals(CandidateStore(run / "candidates.db"), cids)
    crystals = [
        Crystal(c.atomic_numbers, c.frac_coords, c.lattice, material_id=cid)
        for c, cid in zip(crystals, cids, strict=True)
    ]
    out = run / "quality"
    t0 = time.perf_counter()
    report = api.evaluate(crystals, reference=None, train=spec.train, coverage=False, relax="chgnet", out=out,
                          root=root, workers=workers)  # fmt: skip
    relax_s = time.perf_counter() - t0
    per = {str(r["material_id"]): r for r in report.per_structure}
    relaxed = {str(c.material_id): c for c in api.read_structures(out / "relaxed.extxyz")}
    inside = {cid: cid in relaxed for cid in cids}
    if judge is not None:
        scorer, ids = load_judge(judge), [cid for cid in cids if cid in relaxed]
        for window in spec.windows:
            mean, _ = scorer.predict(window.name, [relaxed[cid] for cid in ids])
            for cid, value in zip(ids, mean, strict=True):
                inside[cid] = inside[cid] and window.contains(float(value))
    e_hull = [per.get(cid, {}).get("e_above_hull") for cid in cids]
    metastable = [isinstance(e, float) and math.isfinite(e) and e <= 0.1 for e in e_hull]
    novel = [per.get(cid, {}).get("novel") is True for cid in cids]
    finite = [e for e in e_hull if isinstance(e, float) and math.isfinite(e)]
    n = len(cids)
    return {
        "n_top": n,
        "metastable": _pct(sum(metastable), n),
        "stable": _pct(sum(isinstance(e, float) and e <= 0 for e in e_hull), n),
        "in_window_judge": _pct(sum(inside.values()), n) if judge else None,
        "hit": _pct(sum(a and b for a, b in zip(inside.values(), metastable, strict=True)), n) if judge else None,
        "novel": _pct(sum(novel), n),
        "median_e_hull": round(float(np.median(finite)), 4) if finite else None,
        "relax_failed": n - len(relaxed),
        "fresh_relax_s": round(relax_s, 1),
        "funnel_e_hull_agrees": _agreement(run, cids, per),
    }


def _agreement(run: Path, cids: Sequence[str], per: dict[str, dict[str, object]]) -> float | None:
    """Median |E_hull(run's relaxation) − E_hull(fresh relaxation)| over the top N (eV/atom)."""
    rows = {str(r["cid"]): r for r in CandidateStore(run / "candidates.db").table()}
    gaps = []
    for cid in cids:
        a, b = rows.get(cid, {}).get("hull_e_above_hull"), per.get(cid, {}).get("e_above_hull")
        if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
            gaps.append(abs(a - b))
    return round(float(np.median(gaps)), 4) if gaps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", required=True, help="design target (repeatable)")
    parser.add_argument("--judge", help="independent judge (as crystalforge evaluate --judge)")
    parser.add_argument("--feeds", default=",".join(FEEDS), help=f"comma-separated, of {', '.join(FEEDS)}")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--relax-budget", type=int, default=40)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = data_root()
    base = DesignSpec(
        targets=tuple(args.target), budget=args.budget, relax_budget=args.relax_budget, top=args.top,
        batch_size=args.batch_size, seed=args.seed, workers=args.workers, train="mp_20_reduced",
    )  # fmt: skip
    rows = []
    for feed in args.feeds.split(","):
        if feed not in FEEDS:
            raise SystemExit(f"unknown feed {feed!r}: use {', '.join(FEEDS)}")
        run = args.work / feed
        t0 = time.perf_counter()
        if feed == "pyxtal":
            train = list(api.load_dataset("mp_20_reduced", "train", root=root))
            spec = base.replace(model="pyxtal", route="none", out=str(run))
            result = run_design(spec, generate=pyxtal_feed(train), progress=api.progress_bar)
        else:
            spec = base.replace(route="importance" if feed == "steered" else "none", out=str(run))
            result = api.design(spec, progress=api.progress_bar)
        wall = time.perf_counter() - t0
        print(result.summary(), flush=True)
        quality = judge_top(run, spec, args.judge, args.workers, root)
        stages = {k: dict(v) for k, v in result.stages.items()}
        rows.append({"feed": feed, "funnel": dict(result.funnel), "stages": stages,
                     "design_wall_s_this_call": round(wall, 1), **quality})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    table = [
        "| feed | generated | filtered | new | relaxed | top | metastable % | in window % (judge) | hit % | novel % "
        "| median E_hull |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r["funnel"]
        table.append(f"| {r['feed']} | {f.get('generate')} | {f.get('filter')} | {f.get('dedupe')} | "
                     f"{f.get('relax')} | {r['n_top']} | {r['metastable']} | {r['in_window_judge']} | {r['hit']} | "
                     f"{r['novel']} | {r['median_e_hull']} |")  # fmt: skip
    print("\n".join(table))
    if args.json:
        record = {"machine": machine(), "date": str(date.today()), "argv": sys.argv, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
