"""Motif inpainting (SCIGEN-style): does a steered motif survive CHGNet relaxation, and is it stable?

For each ``MOTIF:ELEMENT`` (default ``kagome:Mn`` and ``honeycomb:C``) generate ``n`` crystals with
the DNG model and ``Steering(motif=...)`` (``MotifConstraint``: the motif's sites and lattice ties
are inpainted, the other atoms generated freely), and for comparison ``n`` unconditional crystals
with the same atom counts. Every structurally valid crystal is relaxed with CHGNet (FIRE, the
package's default settings; torch on one thread per process); the others count as failed
relaxations. Each row reports, as a percentage of the ``n``
requested structures (crystals the sampler could not make count as failures everywhere):

- ``valid``: the package's validity (structure and SMACT composition, ``evaluation.metrics.validity``;
  SMACT rejects many intermetallics, so ``struct_valid`` is in the JSON too);
- ``kept raw`` / ``kept relaxed``: ``sampling.motif_check.motif_kept`` before / after relaxation
  (failed relaxations count as lost);
- ``E_hull <= 0.1``: CHGNet energy within 0.1 eV/atom of the shipped reference hull
  (``evaluation.hull.ReferenceHull.load()``, ``evaluation.metrics.stability``), and the median
  E_hull over the relaxed structures;
- ``kept & E_hull <= 0.1``: both, the number that matters for a motif-targeted search.

The unconditional rows say how often the motif appears by chance. Atom counts are drawn from the
model's training distribution restricted to at least the largest motif's site count (``--num-atoms``
fixes them instead) and shared by all rows. ``--work`` keeps samples and the relaxation cache, so a
killed run resumes.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/motif_inpainting.py -n 100 \\
        --work runs/bench/motif --json benchmarks/results/motif-inpainting-mp_20.json
    # smoke test (a few minutes): -n 4 --work runs/bench/motif-smoke --json /dev/null
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystalforge import api
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.stability import METASTABLE_THRESHOLD, stability
from crystalforge.evaluation.metrics.validity import structure_validity_many, validity
from crystalforge.relax import make_relaxer
from crystalforge.relax.interfaces import RelaxResult
from crystalforge.sampling.motif_check import DEFAULT_ANGLE_TOLERANCE, DEFAULT_TOLERANCE, motif_kept
from crystalforge.sampling.motifs import parse_motif

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

MOTIFS = ("kagome:Mn", "honeycomb:C")


def _atom_counts(model: str, n: int, at_least: int, fixed: list[int] | None, seed: int) -> list[int]:
    """``n`` atom counts: ``fixed`` cycled, or drawn from the model's training distribution (>= ``at_least``)."""
    if fixed:
        return [fixed[i % len(fixed)] for i in range(n)]
    stats = api.load_model(model).stats
    if stats is None:
        raise SystemExit(f"{model} has no dataset statistics: pass --num-atoms")
    rng = np.random.default_rng(seed)
    counts: list[int] = []
    while len(counts) < n:
        draw = stats.sample_num_atoms(4 * n, rng=rng)
        counts += [int(c) for c in draw if c >= at_least]
    return counts[:n]


def _generate(model: str, counts: list[int], folder: Path, motif: str | None, steps: int | None,
              seed: int) -> tuple[list[Crystal], float]:  # fmt: skip
    """One generation call per atom count (``<folder>/na<count>``); the crystals in count order."""
    steering = api.Steering(motif=motif) if motif else None
    crystals: list[Crystal] = []
    t0 = time.perf_counter()
    for count, how_many in sorted(Counter(counts).items()):
        out = folder / f"na{count:02d}"
        made = api.generate(model, n=how_many, out=out, num_atoms=count, steps=steps, seed=seed + count,
                            steering=steering)  # fmt: skip
        crystals += [c.replace(material_id=f"na{count:02d}_{c.material_id}") for c in made]
    return crystals, time.perf_counter() - t0


def _relax(relaxer: Any, crystals: list[Crystal]) -> tuple[list[RelaxResult], float]:
    """Relax the structurally valid crystals; the others fail as "invalid input" without reaching CHGNet.

    A degenerate generated cell (volume near 0) can make CHGNet's graph construction run for hours.
    """
    t0 = time.perf_counter()
    verdicts = structure_validity_many(crystals)
    todo = [c for c, v in zip(crystals, verdicts, strict=True) if v.valid]
    done = iter(relaxer.relax(todo) if todo else [])
    results = [
        next(done)
        if v.valid
        else RelaxResult.failed(f"invalid input: not relaxed, {v.reason}", material_id=c.material_id)
        for c, v in zip(crystals, verdicts, strict=True)
    ]
    return results, time.perf_counter() - t0


def _pct(flags: list[bool], n: int) -> float:
    return 100.0 * sum(bool(f) for f in flags) / n if n else math.nan


def _row(label: str, spec: str, crystals: list[Crystal], results: list[RelaxResult], hull: ReferenceHull,
         n: int, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """The row's numbers (percent of the ``n`` requested) and its per-structure verdicts."""
    tol = {"tolerance": args.tolerance, "angle_tolerance": args.angle_tolerance}
    report = validity(crystals).crystals if crystals else ()
    valid = [c.valid for c in report]
    kept_raw = [motif_kept(c, spec, **tol) for c in crystals]
    kept_relaxed = [r.ok and r.crystal is not None and motif_kept(r.crystal, spec, **tol) for r in results]
    verdicts = stability(results, hull).structures if results else ()
    e_hull = [v.e_above_hull for v in verdicts]
    near = [v.metastable for v in verdicts]
    finite = [e for e in e_hull if math.isfinite(e)]
    return {
        "row": label,
        "motif": spec,
        "steered": label == "steered",
        "requested": n,
        "generated": len(crystals),
        "valid": _pct(valid, n),
        "struct_valid": _pct([c.struct_valid for c in report], n),
        "kept_raw": _pct(kept_raw, n),
        "relax_failed": sum(not r.ok for r in results),
        "kept_relaxed": _pct(kept_relaxed, n),
        "e_hull_le_0.1": _pct(near, n),
        "median_e_hull": float(np.median(finite)) if finite else math.nan,
        "kept_and_e_hull_le_0.1": _pct([k and s for k, s in zip(kept_relaxed, near, strict=True)], n),
        "valid_kept_and_e_hull_le_0.1": _pct(
            [v and k and s for v, k, s in zip(valid, kept_relaxed, near, strict=True)], n
        ),
        "structures": {
            "id": [c.material_id for c in crystals],
            "formula": [c.formula for c in crystals],
            "valid": valid,
            "kept_raw": kept_raw,
            "kept_relaxed": kept_relaxed,
            "e_above_hull": [None if not math.isfinite(e) else round(e, 5) for e in e_hull],
        },
    }


def _table(rows: list[dict[str, Any]]) -> None:
    print("| motif | samples | valid % | kept raw % | kept relaxed % | E_hull <= 0.1 % | median E_hull | "
          "kept & E_hull <= 0.1 % | generate s | relax s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        what = "steered" if r["steered"] else "unconditional"
        cells = [r["valid"], r["kept_raw"], r["kept_relaxed"], r["e_hull_le_0.1"]]
        numbers = " | ".join(f"{v:.1f}" for v in cells)
        print(f"| {r['motif']} | {what} ({r['generated']}/{r['requested']}) | {numbers} | {r['median_e_hull']:.3f} | "
              f"{r['kept_and_e_hull_le_0.1']:.1f} | {r['generate_s']:.0f} | {r['relax_s']:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mp_20-dng")
    parser.add_argument("--motifs", nargs="+", default=list(MOTIFS), help="MOTIF:ELEMENT, e.g. kagome:V lieb:Cu")
    parser.add_argument("-n", type=int, default=100, help="structures per motif (and unconditional)")
    parser.add_argument("--num-atoms", type=int, nargs="*", default=None, help="fixed atom counts, cycled")
    parser.add_argument("--no-unconditional", action="store_true", help="skip the chance baseline")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--angle-tolerance", type=float, default=DEFAULT_ANGLE_TOLERANCE)
    parser.add_argument("--workers", type=int, default=2, help="relaxation processes (one torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/motif-inpainting"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/motif-inpainting-mp_20.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sites = max(parse_motif(m)[0].num_sites for m in args.motifs)
    counts = _atom_counts(args.model, args.n, sites, args.num_atoms, args.seed)
    if min(counts) < sites:
        raise SystemExit(f"--num-atoms must be at least {sites} (the largest motif's site count)")
    hull = ReferenceHull.load()
    relaxer = make_relaxer("chgnet", workers=args.workers, cache_file=args.work / "relax-chgnet.jsonl")
    rows: list[dict[str, Any]] = []
    try:
        baseline: tuple[list[Crystal], list[RelaxResult], float, float] | None = None
        if not args.no_unconditional:
            crystals, gen_s = _generate(args.model, counts, args.work / "unconditional", None, args.steps, args.seed)
            results, relax_s = _relax(relaxer, crystals)
            baseline = (crystals, results, gen_s, relax_s)
        for spec in args.motifs:
            slug = spec.replace(":", "-")
            crystals, gen_s = _generate(args.model, counts, args.work / slug, spec, args.steps, args.seed)
            results, relax_s = _relax(relaxer, crystals)
            new = [_row("steered", spec, crystals, results, hull, args.n, args) | {"generate_s": gen_s,
                                                                                  "relax_s": relax_s}]  # fmt: skip
            if baseline is not None:
                row = _row("unconditional", spec, baseline[0], baseline[1], hull, args.n, args)
                new.append(row | {"generate_s": baseline[2], "relax_s": baseline[3]})
            for row in new:
                print(json.dumps({k: v for k, v in row.items() if k != "structures"}, default=float), flush=True)
            rows += new
    finally:
        relaxer.close()
    _table(rows)
    payload = {
        "machine": machine(), "date": date.today().isoformat(), "argv": sys.argv, "model": args.model, "n": args.n,
        "seed": args.seed, "atom_counts": dict(sorted(Counter(counts).items())), "metastable_threshold":
        METASTABLE_THRESHOLD, "motif_check": {"tolerance": args.tolerance, "angle_tolerance": args.angle_tolerance},
        "relaxer": {"name": relaxer.name, "settings": dict(relaxer.settings), "workers": args.workers},
        "hull": hull.describe(),
        "note": "percentages of the n requested structures; times are this invocation's (resumed work is not redone)",
        "rows": rows,
    }  # fmt: skip
    if str(args.json) != "/dev/null":
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
