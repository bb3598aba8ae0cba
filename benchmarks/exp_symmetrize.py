"""Ablation (flagship-quality issue, sampling lever "a final denoising step for coordinates"):
snap sampled perov_5 CSP crystals onto their symmetry, then score them.

Each row samples every perov_5 test composition once (k = 1) with the shipped ``perov_5-csp``
model and the runner's seeds (chunks of 256, as ``exp_time_grid.py``), then replaces each crystal
by spglib's idealised primitive cell at tolerance ``SYMPREC`` Å (``standardize_cell(to_primitive=
True, no_idealize=False)``: positions moved onto the Wyckoff positions of the space group found at
that tolerance, lattice made exactly that of its crystal system). ``SYMPREC = 0`` keeps the raw
samples. A crystal spglib finds no symmetry for is kept raw. Rows are ``STEPS:ANTI_ANNEALING:SYMPREC``.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/exp_symmetrize.py --runs 10:0:0 10:0:0.1 \\
        --json benchmarks/results/perov_5-csp-symmetrize.json
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _common import perov_5_ablation, sample_flow

from crystalforge.core.crystal import Crystal


def symmetrized(crystal: Crystal, symprec: float) -> tuple[Crystal, bool]:
    """spglib's idealised primitive cell of ``crystal`` at ``symprec`` Å, and whether spglib gave one."""
    import spglib

    if symprec <= 0:
        return crystal, False
    cell = (np.asarray(crystal.lattice), np.asarray(crystal.frac_coords), np.asarray(crystal.atomic_numbers))
    out = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=symprec)
    if out is None:
        return crystal, False
    lattice, frac, numbers = out
    return Crystal(np.asarray(numbers), np.asarray(frac), np.asarray(lattice), material_id=crystal.material_id), True


def main() -> None:
    from crystalforge import api

    args, model, jobs, specs = perov_5_ablation(__doc__, "STEPS:ANTI_ANNEALING:SYMPREC rows")
    samples: dict[tuple[int, float], list] = {}
    rows = {}
    for spec, steps, anneal, symprec in specs:
        if (steps, anneal) not in samples:
            samples[(steps, anneal)] = sample_flow(model, jobs, torch.linspace(0, 1, steps + 1), anneal)
        start = time.perf_counter()
        pairs = [symmetrized(c, symprec) for c in samples[(steps, anneal)]]
        wall = time.perf_counter() - start
        report = api.evaluate([c for c, _ in pairs], reference="perov_5", task="csp", workers=args.workers)
        rows[spec] = {
            "match_rate": report["match_rate"],
            "rmse": report["rmse"],
            "symmetrized": sum(done for _, done in pairs),
            "symmetrize_s": round(wall, 1),
        }
        print(spec, rows[spec], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
