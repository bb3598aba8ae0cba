"""Where a CDVAE's ``z`` comes from: the same weights sampled with each ``latent_prior`` setting.

    python benchmarks/cdvae_latent_prior.py mp_20-cdvae --priors normal posterior \\
        [--n 100] [--reference mp_20_reduced] [--work runs/bench/cdvae-prior] [--json OUT.json]

For each setting: the checkpoint with that ``latent_prior`` written into its stored config, ``n``
crystals generated (seed 0), ``crystalforge evaluate --no-coverage`` against the reference test set,
and the mean number of elements per cell; plus the same count for the posterior means of the first
300 test crystals (what the decoder gives for ``z`` where the data are). ``ddpm`` needs a checkpoint
whose latent DDPM was trained (``latent_prior: ddpm`` in training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine


def _elements_per_cell(crystals) -> float:
    return float(np.mean([len(set(c.atomic_numbers.tolist())) for c in crystals]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", help="a cdvae model.pt or shipped name (e.g. mp_20-cdvae)")
    parser.add_argument("--priors", nargs="+", default=["normal", "posterior"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--reference", default="mp_20_reduced")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/cdvae-prior"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from crystalforge import api
    from crystalforge.core.batch import CrystalBatch
    from crystalforge.core.elements import MASK_Z
    from crystalforge.generative.vae import CDVAE
    from crystalforge.generative.vae.networks import composition_fractions
    from crystalforge.training.adapters import resolve_init

    torch.set_num_threads(1)
    data = torch.load(resolve_init(args.checkpoint), map_location="cpu", weights_only=True)
    rows = []
    for prior in args.priors:
        folder = args.work / prior
        folder.mkdir(parents=True, exist_ok=True)
        data["config"]["model"]["latent_prior"] = prior
        torch.save(data, folder / "model.pt")
        made = api.generate(folder / "model.pt", n=args.n, out=folder / "samples", seed=0)
        report = api.evaluate(folder / "samples", reference=args.reference, coverage=False, out=folder / "eval")
        keys = ("validity", "validity_struct", "validity_comp", "wdist_density", "wdist_num_elements")
        rows.append({"latent_prior": prior, "n": args.n, **{k: report[k] for k in keys},
                     "elements_per_cell": _elements_per_cell(made)})  # fmt: skip
        print(rows[-1])
    model, *_ = api.load_model(args.work / args.priors[0] / "model.pt")
    if not isinstance(model, CDVAE):
        raise SystemExit(f"{args.checkpoint} is not a cdvae checkpoint")
    test = api.load_dataset(args.reference, "test")
    crystals = [test[i] for i in range(min(300, len(test)))]
    batch = CrystalBatch.collate(crystals, dtype=torch.float32)
    # the heads' atoms for z = μ, assembled as sampling does (Con-CDVAE: given the data's own properties)
    with torch.no_grad():
        mu, _ = model.encode(batch)
        start, _ = model.assemble(mu, batch.replace(atomic_numbers=torch.full_like(batch.atomic_numbers, MASK_Z)))
        present = composition_fractions(start, model.vocab) > 0
    posterior_means = {
        "elements_per_cell": float(present.sum(-1).double().mean()),
        "data_elements_per_cell": _elements_per_cell(crystals),
        "mean_norm": float(mu.norm(dim=-1).mean()),
    }
    print(f"posterior means of {len(crystals)} test crystals:", posterior_means)
    if args.json:
        payload = {"machine": machine(), "argv": sys.argv, "rows": rows, "posterior_means": posterior_means}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
