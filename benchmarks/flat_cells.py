"""Collapsed cells from the shipped samplers, with and without the final cell floor, from one sampling pass.

    python benchmarks/flat_cells.py --runs mp_20-dng:5:2000 mp_20-dng-diffusion:1000:400 [--json OUT.json]
    python benchmarks/flat_cells.py --data mp_20_reduced perov_5 carbon_24_reduced

Each ``MODEL:STEPS:N`` row samples N de novo crystals exactly as ``crystalforge generate --model MODEL
--steps STEPS -n N --seed 0`` does (the same jobs, chunks of 256, chunk k seeded with k), with the
final floor switched off (``SamplerConfig(min_volume_fraction=0)``), then applies the floor the
sampler now applies after its last step (``core.lattice.raise_flat_cells``, V/(a·b·c) ≥ 0.5) to
the same final states: the floor touches only the final lattice, so both columns come from one
trajectory per crystal. Counted per column: cells the readers refuse (``core.limits``: thinner
than 0.5 Å after LLL reduction, or outside the density range; these were listed in
``failures.csv`` before the floor), cells under 1 Å³ per atom (the flagship-quality issue's
"collapsed"), cells with V/(a·b·c) < 0.5, and, for the cells the floor changed, how many then
pass the structure-validity rule (every distance ≥ 0.5 Å, volume ≥ 0.1 Å³).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace

import torch
from _common import data_root, machine


def _row(name: str, steps: int, n: int, batch: int = 256) -> dict[str, object]:
    from crystalforge.core.lattice import raise_flat_cells, volume_fraction
    from crystalforge.evaluation.metrics.validity import structure_validity
    from crystalforge.generative.interfaces import SamplePlan, model_dtype
    from crystalforge.sampling.jobs import generation_jobs
    from crystalforge.sampling.runner import _to_crystals, jobs_template
    from crystalforge.sampling.samplers import sample
    from crystalforge.training.loading import load_model

    loaded = load_model(name)
    model, config = loaded.model, replace(loaded.sampler, steps=steps, min_volume_fraction=0.0)
    jobs = generation_jobs(model, loaded.stats, n=n, seed=0, name=name)
    counts = {"raw": dict.fromkeys(("refused", "under_1_A3", "fraction_below_0.5"), 0)}
    counts["floor"] = dict(counts["raw"])
    changed = changed_valid = 0
    start = time.perf_counter()
    for k in range(math.ceil(n / batch)):
        part = jobs[k * batch : (k + 1) * batch]
        template = jobs_template(part, model_dtype(model))
        raw = sample(model, template, SamplePlan(config), generator=torch.Generator().manual_seed(k))
        floored = raw.replace(lattice=raise_flat_cells(raw.lattice))
        same = (raw.lattice == floored.lattice) | (raw.lattice.isnan() & floored.lattice.isnan())
        moved = ~same.flatten(1).all(1)
        for column, batch_out in (("raw", raw), ("floor", floored)):
            tally = counts[column]
            tally["fraction_below_0.5"] += int((volume_fraction(batch_out.lattice) < 0.5).sum())
            tally["under_1_A3"] += int((batch_out.volume.abs() / batch_out.num_atoms < 1.0).sum())
            crystals, failed = _to_crystals(batch_out.replace(material_ids=tuple(j.name for j in part)))
            tally["refused"] += len(failed)  # what the runner lists in failures.csv instead of writing
            if column == "floor":
                by_name = {c.material_id: c for c in crystals}
                for i in torch.nonzero(moved).flatten().tolist():
                    changed += 1
                    crystal = by_name.get(part[i].name)
                    changed_valid += crystal is not None and structure_validity(crystal).valid
    return {
        "model": name, "steps": steps, "n": n, "raw": counts["raw"], "floor": counts["floor"],
        "changed_by_floor": changed, "changed_then_structurally_valid": changed_valid,
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def _data_floor(names: list[str]) -> dict[str, float]:
    """Per training split: the smallest V/(a·b·c) of its cells (the floor must stay below it)."""
    from crystalforge import api
    from crystalforge.core.lattice import volume_fraction

    return {
        name: round(
            min(float(volume_fraction(c.lattice)) for c in api.load_dataset(name, "train", root=data_root())), 4
        )
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="MODEL:STEPS:N rows")
    parser.add_argument("--data", nargs="*", default=[], help="training splits whose smallest V/(abc) to print")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data:
        print(json.dumps({"smallest_volume_fraction_in_train": _data_floor(args.data)}), flush=True)
    rows = []
    for text in args.runs:
        name, steps, n = text.rsplit(":", 2)
        row = _row(name, int(steps), int(n))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "argv": sys.argv, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
