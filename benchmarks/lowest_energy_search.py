"""k candidates per composition, relaxed, the lowest energy kept: the random-symmetric baseline's published form.

    python benchmarks/lowest_energy_search.py --model mp_20-random-symmetric --reference mp_20_reduced \\
        --limit 20 --k 10 --work runs/bench/rs-search --json OUT.json

Any CSP model can be put through the same search (``--model mp_20-csp``), so the generative model
and the baseline can be compared at the same budget of relaxations.

For the first ``--limit`` test compositions: ``k`` structures each from the model (``crystalforge csp``), every one
relaxed with CHGNet against the shipped hull (``crystalforge evaluate --relax chgnet``, cached in
``--work``: a rerun resumes), then per composition the candidate of lowest relaxed energy per atom is
kept. Reported for the kept candidates, for the first candidate alone (relaxed: what one relaxation per
composition gives) and for the first candidate unrelaxed: the CSP match rate and RMSE against the
test structure (the protocol's matcher) and the stability rates (% of the compositions; a failed
relaxation counts as neither stable nor metastable; S.U.N. = stable and novel, the kept structures
having distinct compositions).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

from crystalforge import api, read_structures
from crystalforge.core.crystal import Crystal


def _reference_id(name: str, k: int) -> str:
    """``mp-123_4`` → ``mp-123`` (csp names its k > 1 predictions ``<id>_<j>``)."""
    return name.rsplit("_", 1)[0] if k > 1 else name


def _rows(eval_dir: Path) -> list[dict[str, str]]:
    with open(eval_dir / "per_structure.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _energy(row: dict[str, str]) -> float | None:
    value = row.get("relaxed_energy_per_atom") or ""
    return float(value) if value and not row.get("relax_failure") else None


def _stability(rows: list[dict[str, str]], total: int) -> dict[str, float]:
    """Rates in % of ``total`` compositions; S.U.N. = stable and novel (the compositions are distinct)."""

    def share(flag: str, also: str | None = None) -> float:
        hits = [r for r in rows if r.get(flag) == "true" and (also is None or r.get(also) == "true")]
        return round(100.0 * len(hits) / total, 2)

    hulls = [float(r["e_above_hull"]) for r in rows if r.get("e_above_hull")]
    return {
        "stable_rate": share("stable"),
        "metastable_rate": share("metastable"),
        "sun_rate": share("stable", "novel"),
        "msun_rate": share("metastable", "novel"),
        "mean_e_above_hull": round(sum(hulls) / len(hulls), 4) if hulls else None,
        "relaxed": len(hulls),
    }


def _match(crystals: list[Crystal], reference: str, out: Path, total: int) -> dict[str, float | None]:
    """Match rate in % of ``total`` compositions (a composition without a prediction is a miss), mean RMSE."""
    api.evaluate(crystals, reference=reference, task="csp", coverage=False, out=out)
    details = json.loads((out / "summary.json").read_text())["details"]["csp_match"]["references"]
    rms = [r["rms"] for r in details if r["matched"]]
    return {"match_rate": round(100.0 * len(rms) / total, 2), "rmse": round(sum(rms) / len(rms), 4) if rms else None}


def _renamed(crystal: Crystal, name: str) -> Crystal:
    from dataclasses import replace

    return replace(crystal, material_id=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mp_20-random-symmetric")
    parser.add_argument("--reference", default="mp_20_reduced")
    parser.add_argument("--limit", type=int, default=20, help="first N test compositions")
    parser.add_argument("--k", type=int, default=10, help="candidates per composition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.k < 2:
        parser.error("--k must be at least 2 (the point is choosing among candidates)")

    start = time.perf_counter()
    pred = args.work / "pred"
    crystals = api.csp(args.model, out=pred, reference=args.reference, limit=args.limit, k=args.k, seed=args.seed)
    sampled = time.perf_counter() - start
    eval_dir = args.work / "eval"
    api.evaluate(pred, reference=args.reference, task="dng", relax="chgnet", coverage=False, out=eval_dir,
                 workers=args.workers)  # fmt: skip
    relax_s = time.perf_counter() - start - sampled
    rows = _rows(eval_dir)
    relaxed = {str(c.material_id): c for c in read_structures(eval_dir / "relaxed.extxyz")}
    unrelaxed = {str(c.material_id): c for c in crystals}
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(_reference_id(row["material_id"], args.k), []).append(row)
    if len(groups) != args.limit or any(len(g) != args.k for g in groups.values()):
        sys.exit(f"{eval_dir}: expected {args.limit} compositions × {args.k} candidates, got "
                 f"{ {k: len(v) for k, v in groups.items()} }")  # fmt: skip

    lowest, first = [], []
    for group in groups.values():
        energies = [(e, r) for r in group if (e := _energy(r)) is not None]
        first.append(group[0])
        if energies:
            lowest.append(min(energies, key=lambda pair: pair[0])[1])

    def named(pool: dict[str, Crystal], chosen: list[dict[str, str]]) -> list[Crystal]:
        """The chosen candidates from ``pool``, named after their reference (failed relaxations left out)."""
        ids = [r["material_id"] for r in chosen if r["material_id"] in pool]
        return [_renamed(pool[i], _reference_id(i, args.k)) for i in ids]

    def scored(chosen: list[dict[str, str]], pool: dict[str, Crystal], folder: str) -> dict:
        matched = _match(named(pool, chosen), args.reference, args.work / folder, args.limit)
        return {**_stability(chosen, args.limit), **matched}

    result = {
        "compositions": args.limit,
        "k": args.k,
        "lowest_energy_of_k": scored(lowest, relaxed, "csp-lowest"),
        "first_candidate_relaxed": scored(first, relaxed, "csp-first-relaxed"),
        "first_candidate_unrelaxed": _match(named(unrelaxed, first), args.reference, args.work / "csp-raw", args.limit),
        "relaxations_failed": sum(1 for r in rows if _energy(r) is None),
        "sampling_s": round(sampled, 1),
        "relax_s": round(relax_s, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        payload = {"machine": platform.machine(), "date": date.today().isoformat(), "argv": sys.argv[1:], **result}
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
