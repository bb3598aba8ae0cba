"""Fingerprints of seeded samples from every shipped model: the same digests mean the same samples.

Used to show that a refactor leaves sampling outputs unchanged: run it on two checkouts (for an
older one, put its ``src`` first on ``PYTHONPATH``) and compare the printed SHA-256 digests of the
generated atomic numbers, fractional coordinates and lattices (float32 bytes). Only API that both
old and new code have is used (``api.load_model(name)[0]``, ``sampling.samplers.sample``).

    python benchmarks/sampling_identity.py --json benchmarks/results/sampling-identity.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

CASES = [  # model, sampler settings: Euler, Heun, predictor-corrector, anti-annealing, DNG and CSP
    ("perov_5-csp", {"steps": 10}),
    ("perov_5-dng", {"steps": 10, "heun": True}),
    ("perov_5-dng-diffusion", {"steps": 20}),
    ("perov_5-csp-diffusion", {"steps": 20}),
    ("mp_20-csp", {"steps": 12, "anti_annealing": 5.0}),
    ("mp_20-dng", {"steps": 15}),
    ("mp_20-csp-diffusion", {"steps": 10}),
    ("mp_20-dng-diffusion", {"steps": 10}),
    ("carbon_24-dng", {"steps": 10}),
]
COMPOSITIONS = [[38, 22, 8, 8, 8], [3, 3, 25, 8, 8, 8], [14, 14]]
NUM_ATOMS = [5, 6, 10, 4]


def digest(batch: object) -> str:
    h = hashlib.sha256()
    for name in ("atomic_numbers", "frac_coords", "lattice"):
        h.update(getattr(batch, name).detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    from crystalforge import api
    from crystalforge.sampling.samplers import SamplerConfig, sample
    from crystalforge.sampling.templates import template_from_compositions, template_from_num_atoms

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name, settings in CASES:
        model = api.load_model(name)[0]
        csp = "csp" in name.split("-")[1]
        template = template_from_compositions(COMPOSITIONS) if csp else template_from_num_atoms(NUM_ATOMS)
        result = sample(model, template, SamplerConfig(**settings), generator=torch.Generator().manual_seed(3))
        rows[name] = {"settings": settings, "sha256_16": digest(result)}
        print(f"{name:24s} {json.dumps(settings):44s} {rows[name]['sha256_16']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
