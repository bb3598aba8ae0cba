"""MatGAN's published-style composition statistics of a trained ``matgan`` model.

Dan et al. (2020) reported > 98 % new compositions and about 60 % recovery of a leave-out set
(ICSD/MP/OQMD). This script draws ``--n`` compositions from the generator (``--seed``; raw draws,
one latent each, unless ``--screen``) and reports, via
``crystalforge.generative.gan.statistics`` (``usable_draws``, ``statistics_of_draws``):

- ``valid``: share of draws with 1..max_atoms atoms;
- ``charge_neutral``: share of valid draws passing SMACT (smact's default list, Pauling test, alloys pass);
- ``unique`` and ``novel`` (reduced formula not in the training split) over valid draws;
- ``recovery``: share of the ``--held-out`` split's reduced formulas that are not training formulas
  and that some draw has (the leave-out test: the model never saw them).

It also reports ``validity_comp_cdvae``: the share of valid draws passing the evaluation protocol's
SMACT rule (CDVAE's, smact14 list, ``crystalforge.evaluation``), the figure ``crystalforge evaluate``
prints as ``validity_comp``. The structure stage (the CSP model) is not run: these are statistics of
compositions. Recovery grows with ``--n`` (MatGAN drew millions); report the ``n`` with the figure.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/matgan_stats.py --model runs/mp_20-matgan/model.pt \
        --n 20000 --json benchmarks/results/mp_20-matgan-stats.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch
from _common import data_root, machine

from crystalforge import api
from crystalforge.evaluation.metrics.validity import composition_validity
from crystalforge.generative.gan import MatGAN
from crystalforge.generative.gan.statistics import statistics_of_draws, usable_draws


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--json`` write) the statistics."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a matgan model.pt or shipped name (e.g. mp_20-matgan)")
    parser.add_argument("--n", type=int, default=10_000, help="compositions to draw")
    parser.add_argument("--dataset", help="training dataset (default: the model's own)")
    parser.add_argument("--held-out", default="test", help="split whose new formulas count for recovery")
    parser.add_argument("--screen", action="store_true", help="statistics of screened (sampled) compositions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from crystalforge.training.adapters import resolve_init
    from crystalforge.training.loading import load_checkpoint_model

    model, config, _ = load_checkpoint_model(resolve_init(args.model))  # the CSP model is not needed here
    if not isinstance(model, MatGAN):
        raise SystemExit(f"{args.model} is a {config.family} model, not a matgan one")
    dataset = args.dataset or config.data.dataset
    root = data_root()
    train = [c.atomic_numbers for c in api.load_dataset(dataset, config.data.train_split, root=root)]
    held = [c.atomic_numbers for c in api.load_dataset(dataset, args.held_out, root=root)]
    start = time.perf_counter()
    drawn = usable_draws(model, args.n, screen=args.screen, generator=torch.Generator().manual_seed(args.seed))
    stats = statistics_of_draws(drawn, args.n, train=train, held_out=held, screened=args.screen)
    cdvae = sum(composition_validity(c).valid for c in drawn) / len(drawn) if drawn else None
    result = {
        **stats.to_dict(),
        "validity_comp_cdvae": cdvae,
        "model": str(args.model),
        "dataset": dataset,
        "held_out_split": args.held_out,
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine(),
        "date": date.today().isoformat(),
    }
    for key, value in result.items():
        shown = f"{100 * value:.2f} %" if isinstance(value, float) and key not in ("wall_s",) else value
        print(f"{key:<22}{shown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
