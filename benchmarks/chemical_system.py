"""Chemical-system targeting: our generators against random symmetric structures at an equal relaxation budget.

For each of three ternary chemical systems of the mp_20 test split (default: the three with the most
test entries, ties broken alphabetically: O-F-V with 48, Li-F-V and O-F-Mn with 21 each, the next
being Li-O-Mn with 20; ``--systems`` to choose), every method proposes
``--budget`` structures, all of which are relaxed with CHGNet (the same budget for every method) and
scored against the shipped reference hull (``ReferenceHull.load()``, CHGNet 0.3.0 energies):

- ``csp``: ``mp_20-csp`` on the system's charge-balanced cell compositions with at most
  ``--max-atoms`` atoms (``api.csp(system=...)``); when there are more compositions than the budget,
  ``--budget`` of them evenly spread over the enumeration order, one prediction each;
- ``dng``: ``mp_20-dng`` restricted to the element set (``api.Steering(elements=...)``); allowed is
  not required (a Li-F-V run also gives LiF or VF3), so it samples a pool of ``--dng-pool`` times
  the budget (generation is cheap next to relaxation) and relaxes the first ``--budget`` samples
  holding every element of the system, topped up with the others in order if too few do
  (``--dng-pool 1``: no filter; ``pool_all_elements`` is the pool's raw rate);
- ``pyxtal``: random symmetric structures (PyXtal ``from_random``, a uniformly drawn space group
  2-230, redrawn until PyXtal can place the atoms) on the same compositions as ``csp``.

Per system and method: the fraction of proposals inside the system (elements within it) and with
all of its elements, the validity of the unrelaxed structures (CDVAE rule: distances and SMACT
charge balance), then after relaxation the lowest energy above the hull, how many structures lie
within 0.1 eV/atom of the hull and at or below it, and relaxation failures. Every rate is over all
proposals: a proposal that gave no structure counts as invalid and outside the system (for ``dng``
the proposals are the ``--budget`` samples chosen from the pool).

PyXtal is optional (``pip install "crystalforge[baselines]"``); without it the script stops with
a message unless ``--methods`` leaves ``pyxtal`` out. Relaxations are cached in ``--work`` (a rerun
resumes), and so are the generated structures. System ``i`` samples with seed ``--seed + 1000 i``.

Cost: 3 systems x 3 methods x 30 = 270 CHGNet relaxations (FIRE, fmax 0.1 eV/Å, at most 150
steps). A smoke run (3 per system and method, 100-step cap, one core) took 7.3 s per relaxation of
these 4-12-atom cells, about half of them stopping at the cap; at 150 steps expect about 9-10 s,
so roughly 20 minutes with ``--workers 2`` on two cores (``--budget 40``: about 27 minutes).

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/chemical_system.py \
        --work runs/bench/chemical-system --json benchmarks/results/chemical-system-mp_20.json
    # smoke size (about 3.5 minutes on one core):
    #   --budget 3 --steps 10 --relax-steps 100 --workers 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition

from crystalforge import api
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.stability import METASTABLE_THRESHOLD, stability
from crystalforge.evaluation.metrics.validity import validity
from crystalforge.relax import CachedRelaxer, get_relaxer
from crystalforge.sampling.composition import enumerate_compositions, formula_string, in_chemical_system

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, machine

METHODS = ("csp", "dng", "pyxtal")


def pick_systems(test: list[Crystal], count: int) -> list[tuple[str, int]]:
    """The ``count`` ternary systems with the most test entries (ties: alphabetical), as ``("O-F-V", n)``."""
    counts = Counter(tuple(sorted(set(c.atomic_numbers.tolist()))) for c in test)
    ternary = [("-".join(api.z_to_symbol(z) for z in zs), n) for zs, n in counts.items() if len(zs) == 3]
    return sorted(ternary, key=lambda item: (-item[1], item[0]))[:count]


def entries_in(test: list[Crystal], system: str) -> int:
    """Test entries whose elements are exactly the system's."""
    return sum(in_chemical_system(c, system, require_all=True) for c in test)


def spread(cells: list[dict[str, int]], budget: int) -> list[dict[str, int]]:
    """``budget`` compositions evenly spread over ``cells`` (cycling through them when there are fewer)."""
    if len(cells) >= budget:
        return [cells[int(i)] for i in np.linspace(0, len(cells) - 1, budget).round()]
    return [cells[i % len(cells)] for i in range(budget)]


def run_csp(args: argparse.Namespace, system: str, cells: list[dict[str, int]], out: Path, seed: int) -> list[Crystal]:
    """``--budget`` CSP predictions over the system's compositions."""
    common = {"out": out, "steps": args.steps, "seed": seed}
    if len(cells) >= args.budget:  # more compositions than the budget: one try each of an even spread
        formulas = [formula_string(c) for c in spread(cells, args.budget)]
        return api.csp(args.csp_model, formulas=formulas, **common)
    k = math.ceil(args.budget / len(cells))  # every composition, k tries each; the first rounds count
    return api.csp(args.csp_model, system=system, max_atoms=args.max_atoms, k=k, **common)[: args.budget]


def run_dng(args: argparse.Namespace, system: str, out: Path, seed: int) -> tuple[list[Crystal], float]:
    """``--budget`` DNG samples restricted to the system's elements, those with every element first.

    Returns the samples to relax and the percentage of the whole pool that holds every element.
    """
    n = args.budget * args.dng_pool
    steering = api.Steering(elements=system)
    pool = api.generate(args.dng_model, n=n, out=out, steps=args.steps, seed=seed, steering=steering)
    full = [c for c in pool if in_chemical_system(c, system, require_all=True)]
    rest = [c for c in pool if not in_chemical_system(c, system, require_all=True)]
    return (full + rest)[: args.budget], 100.0 * len(full) / n


def run_pyxtal(args: argparse.Namespace, cells: list[dict[str, int]], out: Path, seed: int) -> list[Crystal]:
    """``--budget`` random symmetric structures on the same compositions as ``run_csp`` (cached in ``out``)."""
    path = out / "samples.extxyz"
    if path.exists():
        return api.read_structures(path)
    from pyxtal import pyxtal

    rng = np.random.default_rng(seed)
    made = []
    for i, cell in enumerate(spread(cells, args.budget)):
        for _ in range(args.pyxtal_tries):
            group, state = int(rng.integers(2, 231)), int(rng.integers(2**31))
            xtal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    xtal.from_random(3, group, list(cell), list(cell.values()), random_state=state)
            except Exception:  # noqa: BLE001 - PyXtal raises many kinds for an impossible group/composition
                continue
            if xtal.valid:
                made.append(Crystal.from_pymatgen(xtal.to_pymatgen(), material_id=f"{formula_string(cell)}_{i}"))
                break
    if made:
        api.write_structures(made, path)
    return made


def score(crystals: list[Crystal], proposed: int, system: str, relaxer: Any, hull: ReferenceHull) -> dict[str, Any]:
    """Inside-system and validity rates over ``proposed``, then relaxation and energies above the hull."""

    def pct(count: int) -> float:
        return 100.0 * count / proposed

    report = validity(crystals)
    t0 = time.perf_counter()
    results = relaxer.relax(crystals) if crystals else []
    relax_s = time.perf_counter() - t0
    stab = stability(results, hull, relaxer=relaxer)
    e_hull = stab.e_above_hull
    finite = e_hull[np.isfinite(e_hull)]
    best = int(np.nanargmin(e_hull)) if finite.size else None
    rows = [
        {"id": c.material_id, "formula": Composition(c.composition).reduced_formula, "valid": v.valid,
         "e_above_hull": None if not math.isfinite(s.e_above_hull) else round(s.e_above_hull, 5), "relax": s.reason}
        for c, v, s in zip(crystals, report.crystals, stab.structures, strict=True)
    ]  # fmt: skip
    return {
        "proposed": proposed,
        "produced": len(crystals),
        "in_system": pct(sum(in_chemical_system(c, system) for c in crystals)),
        "all_elements": pct(sum(in_chemical_system(c, system, require_all=True) for c in crystals)),
        "valid": pct(sum(c.valid for c in report.crystals)),
        "valid_struct": pct(sum(c.struct_valid for c in report.crystals)),
        "valid_comp": pct(sum(c.comp_valid for c in report.crystals)),
        "relaxed": len(results),
        "relax_failed": stab.num_failed,
        "no_reference": stab.num_no_reference,
        "min_e_above_hull": float(finite.min()) if finite.size else None,
        "best": None if best is None else rows[best]["formula"],
        "median_e_above_hull": float(np.median(finite)) if finite.size else None,
        "within_0.1": int(sum(s.metastable for s in stab.structures)),
        "on_or_below_hull": int(sum(s.stable for s in stab.structures)),
        "relax_s": relax_s,
        "structures": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", help="chemical systems, e.g. O-F-V (default: picked from the data)")
    parser.add_argument("--num-systems", type=int, default=3, help="how many systems to pick from the test split")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget", type=int, default=30, help="structures proposed and relaxed per system and method")
    parser.add_argument("--max-atoms", type=int, default=12, help="largest cell for csp and pyxtal compositions")
    parser.add_argument("--csp-model", default="mp_20-csp")
    parser.add_argument("--dng-model", default="mp_20-dng")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--dng-pool", type=int, default=4, help="dng: sample K x budget, relax full-system ones first")
    parser.add_argument("--pyxtal-tries", type=int, default=100, help="space groups tried per pyxtal structure")
    parser.add_argument("--relax-steps", type=int, default=150, help="CHGNet FIRE steps at most (fmax 0.1 eV/Å)")
    parser.add_argument("--relax-timeout", type=float, default=60.0, help="seconds per relaxation at most")
    parser.add_argument("--workers", type=int, default=2, help="relaxation worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (generation; each relax worker)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True, help="folder for generated structures and caches")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.budget < 1 or args.dng_pool < 1:
        parser.error("--budget and --dng-pool must be >= 1")
    if "pyxtal" in args.methods:
        try:
            api.require("pyxtal", "the random-structure baseline (--methods pyxtal)", extra="baselines")
        except api.MissingDependencyError as exc:
            raise SystemExit(f"error: {exc}; or leave it out with --methods csp dng") from None
    torch.set_num_threads(args.threads)
    test = list(api.load_dataset("mp_20", "test", data_root()))
    systems = [(s, entries_in(test, s)) for s in args.systems] if args.systems else pick_systems(test, args.num_systems)
    hull = ReferenceHull.load()
    relaxer = CachedRelaxer(
        get_relaxer("chgnet", workers=args.workers, torch_threads=args.threads, max_steps=args.relax_steps,
                    timeout_s=args.relax_timeout),
        args.work / "relax-chgnet.jsonl",
    )  # fmt: skip
    rows = []
    try:
        for index, (system, entries) in enumerate(systems):
            seed = args.seed + 1000 * index
            cells = enumerate_compositions(system, max_atoms=args.max_atoms)
            if not cells:
                raise SystemExit(
                    f"error: {system} has no charge-balanced composition with at most {args.max_atoms} atoms"
                )
            for method in args.methods:
                folder = args.work / system / method
                t0 = time.perf_counter()
                extra: dict[str, float] = {}
                if method == "csp":
                    crystals = run_csp(args, system, cells, folder, seed)
                elif method == "dng":
                    crystals, extra["pool_all_elements"] = run_dng(args, system, folder, seed)
                else:
                    crystals = run_pyxtal(args, cells, folder, seed)
                generate_s = time.perf_counter() - t0
                result = score(crystals, args.budget, system, relaxer, hull)
                row = {"system": system, "test_entries": entries, "compositions": len(cells), "method": method,
                       "seed": seed, "generate_s": generate_s, **extra, **result}  # fmt: skip
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "structures"}, default=float), flush=True)
    finally:
        relaxer.close()
    print(
        "| system | method | in system % | all elements % | valid % | relaxed | min E_hull | best | within 0.1 | <= 0 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        low = "-" if r["min_e_above_hull"] is None else f"{r['min_e_above_hull']:.3f}"
        print(f"| {r['system']} | {r['method']} | {r['in_system']:.0f} | {r['all_elements']:.0f} | {r['valid']:.0f} | "
              f"{r['relaxed']} | {low} | {r['best']} | {r['within_0.1']} | {r['on_or_below_hull']} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(), "date": date.today().isoformat(), "argv": sys.argv,
            "selection": "ternary systems of the mp_20 test split with the most entries (ties alphabetical)"
            if not args.systems else "given by --systems",
            "budget": args.budget, "max_atoms": args.max_atoms, "dng_pool": args.dng_pool,
            "metastable_threshold": METASTABLE_THRESHOLD,
            "hull": hull.describe(), "relaxer": relaxer.name, "relaxer_settings": dict(relaxer.settings),
            "rows": rows,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
