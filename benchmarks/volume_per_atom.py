"""Volume per atom of generated samples against a reference set: where collapsed cells lie.

    python benchmarks/volume_per_atom.py SAMPLES [SAMPLES ...] --reference mp_20_reduced

The figures behind ``MIN_FINGERPRINT_VOLUME_PER_ATOM`` (docs/metrics.md, "Coverage"): for each
samples file, how many cells lie below the threshold (with their volumes and whether they pass
the structure-validity rule), and the smallest volume per atom above it; for the reference test
split, its smallest volume per atom.
"""

from __future__ import annotations

import argparse

from _common import data_root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("samples", nargs="+", help="structure files (e.g. a bench row's samples.extxyz)")
    parser.add_argument("--reference", default="mp_20_reduced")
    args = parser.parse_args()

    from crystalforge import api
    from crystalforge.evaluation.metrics.validity import structure_validity
    from crystalforge.representations.fingerprints import MIN_FINGERPRINT_VOLUME_PER_ATOM

    limit = MIN_FINGERPRINT_VOLUME_PER_ATOM
    reference = api.load_dataset(args.reference, "test", root=data_root())
    print(f"{args.reference} test: smallest volume per atom {min(c.volume / c.num_atoms for c in reference):.2f} Å³")
    for path in args.samples:
        crystals = api.read_structures(path)
        below = [c for c in crystals if c.volume / c.num_atoms < limit]
        above = min(c.volume / c.num_atoms for c in crystals if c.volume / c.num_atoms >= limit)
        valid = sum(structure_validity(c).valid for c in below)
        print(f"{path}: {len(below)} of {len(crystals)} below {limit} Å³ per atom ({valid} of them valid); ", end="")
        print(f"smallest above: {above:.2f} Å³ per atom")
        for c in below:
            print(f"  {c.material_id}: {c.num_atoms} atoms, cell volume {c.volume:.3g} Å³")


if __name__ == "__main__":
    main()
