"""``crystalforge generate``: sample crystals from a shipped or trained model."""

from __future__ import annotations

import argparse
import textwrap

from crystalforge.cli.options import add_parser, add_sampling_options, print_written


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate``."""
    p = add_parser(
        subparsers,
        "generate",
        help="generate crystals with a shipped or trained model",
        epilog=textwrap.dedent(
            """\
            examples:
              crystalforge generate --model perov_5-dng -n 100 --out gen/
              crystalforge generate --model mp_20-dng -n 1000 --steps 20 --out gen/ --device cuda
              crystalforge generate --model perov_5-csp --composition SrTiO3 -n 10 --out srtio3/
              crystalforge generate --model runs/mine/model.pt --num-atoms 8 -n 50 --out gen/"""
        ),
    )
    add_sampling_options(p)
    p.add_argument("--model", default="perov_5-dng", help="shipped model name (crystalforge models) or model.pt")
    p.add_argument("-n", type=int, default=100, help="number of crystals")
    p.add_argument("--num-atoms", type=int, help="DNG: atoms per cell (default: drawn from the training data)")
    p.add_argument("--composition", help="cell content as a formula, e.g. SrTiO3 (CSP models)")


def run(args: argparse.Namespace) -> int:
    """Generate; exit 1 when fewer than ``-n`` crystals came out."""
    from crystalforge import api

    with api.progress_bar(args.n, "generating") as bar:
        crystals = api.generate(
            args.model,
            n=args.n,
            out=args.out,
            num_atoms=args.num_atoms,
            composition=args.composition,
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            progress=bar.update,
        )
    print_written(len(crystals), args.out)
    return 0 if len(crystals) == args.n else 1
