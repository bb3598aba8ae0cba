"""Trained generators side by side under the evaluation protocol: CSP match rates, DNG metrics, speed.

    python benchmarks/bench_models.py csp --runs MODEL:STEPS[@S] [MODEL:STEPS ...] --reference perov_5
        [--k 20] [--limit N] [--work DIR] [--json OUT.json]
    python benchmarks/bench_models.py dng --runs MODEL:STEPS [...] --reference perov_5 [--n 1000]
        [--coverage] [--relax 100] [--work DIR] [--json OUT.json]

MODEL is a shipped name or a ``model.pt``; each ``MODEL:STEPS`` pair (``@S`` or ``@frac_coords=S``
adds anti-annealing, as ``--anti-annealing`` in the CLI) is one row of the table, all
measured in the same process one after the other (so their times compare). ``csp`` predicts ``k``
structures per test composition (the first ``--limit`` compositions; rates are then over those)
and reports k=1 (the first prediction, DiffCSP's rule) and best-of-k match rate / RMSE, and
sampling throughput (CIF and extxyz writing included). ``dng`` generates ``n`` crystals and
reports validity, coverage (``--coverage``), Wasserstein distances, uniqueness, novelty, and with
``--relax N`` stability and S.U.N. of the first N samples relaxed with CHGNet against the shipped
hull. Seed 0 throughout.

``--work DIR`` keeps each row's samples in ``DIR/<row>/``: a killed run rerun with the same command
resumes sampling (the row's time is then marked ``resumed``) and reuses the relaxation cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import data_root, machine


def _parse_run(text: str) -> tuple[str, int, str | None]:
    """``MODEL:STEPS[@ANTI_ANNEALING]``, the last in the CLI's ``--anti-annealing`` syntax."""
    spec, _, anneal = text.partition("@")
    model, sep, steps = spec.rpartition(":")
    if not sep or not steps.isdigit():
        raise SystemExit(f"--runs wants MODEL:STEPS[@S|@FIELD=S], got {text!r}")
    return model, int(steps), anneal or None


def _anneal_value(text: str | None) -> float | dict[str, float] | None:
    from crystalforge.cli.main import _anti_annealing

    return None if text is None else _anti_annealing(text)


def _row_dir(work: Path, model: str, steps: int, anneal: str | None) -> Path:
    name = Path(model).parent.name if model.endswith(".pt") else model
    return work / (f"{name}-{steps}" + (f"-aa{anneal.replace('=', '').replace(',', '-')}" if anneal else ""))


def _label(model: str, anneal: str | None) -> str:
    return model + (f" (anti-annealing {anneal})" if anneal else "")


def _sample(fn: Any, row: Path, **kwargs: Any) -> tuple[list, float, bool]:
    resumed = (row / "samples.extxyz").exists()
    t0 = time.perf_counter()
    crystals = fn(out=row, **kwargs)
    return crystals, time.perf_counter() - t0, resumed


def _timing(model: str, steps: int, anneal: str | None, crystals: list, wall: float, resumed: bool) -> dict:
    return {
        "model": model,
        "steps": steps,
        "anti_annealing": anneal,
        "structures": len(crystals),
        "sampling_s": round(wall, 2),
        "resumed": resumed,
        "structures_per_s": round(len(crystals) / wall, 2),
    }


def bench_csp(args: argparse.Namespace, work: Path) -> list[dict]:
    from crystalforge import api

    print(f"machine: {machine()}; reference {args.reference}/test; k={args.k}; limit={args.limit}")
    head = "| model | steps | structures | sampling s | structures/s | match % k=1 | RMSE k=1 |"
    if args.k > 1:
        head += f" match % k={args.k} | RMSE k={args.k} |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    rows = []
    for model, steps, anneal in map(_parse_run, args.runs):
        row = _row_dir(work, model, steps, anneal)
        crystals, wall, resumed = _sample(
            api.csp,
            row,
            model=model,
            reference=args.reference,
            limit=args.limit,
            k=args.k,
            steps=steps,
            anti_annealing=_anneal_value(anneal),
            root=data_root(),
        )
        report = api.evaluate(
            row / "samples.extxyz", reference=args.reference, task="csp", root=data_root(), workers=args.workers
        )
        s, d = report.summary, report.details["csp_match"]
        # a partial run (--limit) reports its rates over the references it predicted
        partial = args.limit is not None
        rate1 = d["match_rate_over_predicted"] if partial else s["match_rate"]
        rate_k = d["match_rate_k_over_predicted"] if partial else s["match_rate_k"]
        result = {
            **_timing(model, steps, anneal, crystals, wall, resumed),
            "match_rate": rate1,
            "rmse": s["rmse"],
            "match_rate_k": rate_k,
            "rmse_k": s["rmse_k"],
            "references": d["n_references"] if not partial else min(args.limit, d["n_references"]),
        }
        rows.append(result)
        speed = f"{result['structures_per_s']:.1f}" + (" (resumed)" if resumed else "")
        line = f"| {_label(model, anneal)} | {steps} | {len(crystals)} | {wall:.1f} | {speed} "
        line += f"| {rate1:.2f} | {s['rmse']:.4f} |"
        if args.k > 1:
            line += f" {rate_k:.2f} | {s['rmse_k']:.4f} |"
        print(line, flush=True)
    return rows


def bench_dng(args: argparse.Namespace, work: Path) -> list[dict]:
    from crystalforge import api

    print(f"machine: {machine()}; {args.n} crystals per row; reference {args.reference}/test")
    rows = []
    for model, steps, anneal in map(_parse_run, args.runs):
        row = _row_dir(work, model, steps, anneal)
        crystals, wall, resumed = _sample(
            api.generate, row, model=model, n=args.n, steps=steps, anti_annealing=_anneal_value(anneal)
        )
        report = api.evaluate(
            row / "samples.extxyz",
            reference=args.reference,
            task="dng",
            coverage=args.coverage,
            root=data_root(),
            workers=args.workers,
        )
        result: dict[str, Any] = {**_timing(model, steps, anneal, crystals, wall, resumed), **report.summary}
        if args.relax:
            t0 = time.perf_counter()
            stab = api.evaluate(
                crystals[: args.relax],
                reference=args.reference,
                task="dng",
                coverage=False,
                relax="chgnet",
                out=row / "relax",
                root=data_root(),
                workers=1,
            )
            keys = ("stable_rate", "metastable_rate", "sun_rate", "msun_rate", "mean_e_hull", "mean_rmsd")
            result["relaxed"] = {
                "n": min(args.relax, len(crystals)),
                "relax_s": round(time.perf_counter() - t0, 1),
                **{k: v for k, v in stab.summary.items() if k in keys or "hull" in k or "sun" in k},
            }
        rows.append(result)
        print(
            f"\n{_label(model, anneal)} at {steps} steps: {len(crystals)} crystals in {wall:.1f} s"
            f" ({len(crystals) / wall:.1f} structures/s{', resumed' if resumed else ''})"
        )
        for key, value in result.items():
            if key not in ("model", "steps", "anti_annealing"):
                print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        sys.stdout.flush()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["csp", "dng"])
    parser.add_argument("--runs", nargs="+", required=True, help="MODEL:STEPS pairs, measured in this order")
    parser.add_argument("--reference", default="perov_5")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("--relax", type=int, default=0, help="relax the first N samples with CHGNet (S.U.N.)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads for sampling (1 avoids oversubscription)")
    parser.add_argument("--work", type=Path, help="keep samples here (resumable); default a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = bench_csp(args, work) if args.what == "csp" else bench_dng(args, work)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:], "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
