"""Trained generators side by side under the evaluation protocol: CSP match rates, DNG metrics, speed.

    python benchmarks/bench_models.py csp --runs MODEL:STEPS[@S] [MODEL:STEPS ...] --reference perov_5
        [--k 20] [--limit N] [--work DIR] [--json OUT.json]
    python benchmarks/bench_models.py dng --runs MODEL:STEPS [...] --reference perov_5 [--n 1000]
        [--coverage] [--relax 100] [--work DIR] [--json OUT.json]

(``--reference``, ``--workers``, ``--threads``, ``--work`` and ``--json`` go after the subcommand.)

MODEL is a shipped name or a ``model.pt``; each ``MODEL:STEPS`` pair (``@S`` or ``@frac_coords=S``
adds anti-annealing, as ``--anti-annealing`` in the CLI) is one row of the table, all
measured in the same process one after the other (so their times compare). ``csp`` predicts ``k``
structures per test composition (the first ``--limit`` compositions; rates are then over those)
and reports k=1 (the first prediction, DiffCSP's rule) and best-of-k match rate / RMSE, and
sampling throughput (CIF and extxyz writing included). ``dng`` generates ``n`` crystals and
reports validity (structures the sampler could not turn into a crystal, listed in the row's
``failures.csv``, count as invalid; ``failed`` in the JSON), coverage (``--coverage``),
Wasserstein distances, uniqueness, novelty, and with ``--relax N`` stability and S.U.N. of the
first N samples relaxed with CHGNet against the shipped hull. Seed 0 throughout.

``--work DIR`` keeps each row's samples in ``DIR/<row>/``: a killed run rerun with the same command
resumes sampling and reuses the relaxation cache and the samples' fingerprints (``DIR/<row>/eval``,
cached 100 crystals at a time); a row that found earlier samples (or relaxations)
is marked ``resumed`` and its time is not reported. Each row records the sampler settings the
runner actually used (``run.json``: a shipped card's default anti-annealing included).
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


def _row_dir(work: Path, model: str, steps: int, anneal: str | None) -> Path:
    name = Path(model).parent.name if model.endswith(".pt") else model
    return work / (f"{name}-{steps}" + (f"-aa{anneal.replace('=', '').replace(',', '-')}" if anneal else ""))


def _label(model: str, anneal: str | None) -> str:
    return model + (f" (anti-annealing {anneal})" if anneal else "")


def _sample(fn: Any, model: str, steps: int, anneal: str | None, row: Path, **kwargs: Any) -> tuple[list, dict]:
    """Sample one row; the row's record: model, the sampler the runner used, count and timing."""
    from crystalforge.io.run_folder import RunFolder
    from crystalforge.sampling.samplers import parse_anti_annealing

    folder = RunFolder(row)
    resumed = folder.is_generation_folder()
    t0 = time.perf_counter()
    scale = None if anneal is None else parse_anti_annealing(anneal)
    crystals = fn(model, out=row, steps=steps, anti_annealing=scale, **kwargs)
    wall = time.perf_counter() - t0
    sampler = json.loads(folder.run_file.read_text())["sampler"]
    return crystals, {
        "model": model,
        "steps": sampler["steps"],
        "anti_annealing": sampler["anti_annealing"],
        "structures": len(crystals),
        "failed": len(folder.failures()),
        "resumed": resumed,
        "sampling_s": None if resumed else round(wall, 2),
        "structures_per_s": None if resumed else round(len(crystals) / wall, 2),
    }


def _speed(record: dict) -> tuple[str, str]:
    if record["resumed"]:
        return "resumed", "–"
    return f"{record['sampling_s']:.1f}", f"{record['structures_per_s']:.1f}"


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
        crystals, result = _sample(
            api.csp, model, steps, anneal, row, reference=args.reference, limit=args.limit, k=args.k, root=data_root()
        )
        report = api.evaluate(row, reference=args.reference, task="csp", root=data_root(), workers=args.workers)
        s, d = report.summary, report.details["csp_match"]
        # a partial run (--limit) reports its rates over the references it predicted
        partial = args.limit is not None
        result.update(
            {
                "k": args.k,
                "match_rate": d["match_rate_over_predicted"] if partial else s["match_rate"],
                "rmse": s["rmse"],
                "match_rate_k": d["match_rate_k_over_predicted"] if partial else s["match_rate_k"],
                "rmse_k": s["rmse_k"],
                "references": d["n_references_with_predictions"] if partial else d["n_references"],
            }
        )
        rows.append(result)
        wall, speed = _speed(result)
        line = f"| {_label(model, anneal)} | {steps} | {len(crystals)} | {wall} | {speed} "
        line += f"| {result['match_rate']:.2f} | {s['rmse']:.4f} |"
        if args.k > 1:
            line += f" {result['match_rate_k']:.2f} | {s['rmse_k']:.4f} |"
        print(line, flush=True)
    return rows


def _stability(crystals: list, args: argparse.Namespace, row: Path) -> dict:
    """Relax the first ``--relax`` samples with CHGNet; stability rates and relaxation statistics."""
    from crystalforge import api

    cache = row / "relax" / "relax-chgnet.jsonl"
    resumed = cache.exists()
    t0 = time.perf_counter()
    report = api.evaluate(
        crystals[: args.relax],
        reference=args.reference,
        task="dng",
        coverage=False,
        relax="chgnet",
        out=row / "relax",
        root=data_root(),
        workers=args.workers,
    )
    keys = ("stable_rate", "metastable_rate", "sun_rate", "msun_rate", "mean_rmsd_relax")
    return {
        "n": min(args.relax, len(crystals)),
        **{k: report.summary[k] for k in keys if k in report.summary},
        **report.details["stability"],
        "resumed": resumed,
        "relax_s": None if resumed else round(time.perf_counter() - t0, 1),
    }


def bench_dng(args: argparse.Namespace, work: Path) -> list[dict]:
    from crystalforge import api

    print(f"machine: {machine()}; {args.n} crystals per row; reference {args.reference}/test")
    rows = []
    for model, steps, anneal in map(_parse_run, args.runs):
        row = _row_dir(work, model, steps, anneal)
        crystals, result = _sample(api.generate, model, steps, anneal, row, n=args.n)
        report = api.evaluate(
            row,  # the generation folder: structures that failed (failures.csv) count as invalid
            reference=args.reference,
            task="dng",
            coverage=args.coverage,
            out=row / "eval",  # report files and a resumable cache of the samples' fingerprints
            root=data_root(),
            workers=args.workers,
        )
        result.update(report.summary)
        if args.coverage:
            result["coverage_details"] = report.details["coverage"]
        if args.relax:
            result["relaxed"] = _stability(crystals, args, row)
        rows.append(result)
        wall, speed = _speed(result)
        print(f"\n{_label(model, anneal)} at {steps} steps: {len(crystals)} crystals, {wall} s ({speed} structures/s)")
        for key, value in result.items():
            if key not in ("model", "steps", "anti_annealing"):
                print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        sys.stdout.flush()
    return rows


def main() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", nargs="+", required=True, help="MODEL:STEPS[@S] rows, measured in this order")
    common.add_argument("--reference", default="perov_5")
    common.add_argument("--workers", type=int, default=2, help="processes for fingerprints, matching, relaxation")
    common.add_argument("--threads", type=int, help="torch threads for sampling (1 avoids oversubscription)")
    common.add_argument("--work", type=Path, help="keep samples here (resumable); default a temporary folder")
    common.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    csp = sub.add_parser("csp", parents=[common], help="match rate / RMSE per row")
    csp.add_argument("--k", type=int, default=1, help="predictions per composition (best of k)")
    csp.add_argument("--limit", type=int, help="only the first N test compositions")
    dng = sub.add_parser("dng", parents=[common], help="DNG metrics per row")
    dng.add_argument("--n", type=int, default=1000, help="crystals per row")
    dng.add_argument("--coverage", action="store_true", help="also COV-R/P (CrystalNN fingerprints: slow)")
    dng.add_argument("--relax", type=int, default=0, help="relax the first N samples with CHGNet (S.U.N.)")
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
