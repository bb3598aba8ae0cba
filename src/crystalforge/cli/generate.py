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
              crystalforge generate --model runs/mine/model.pt --num-atoms 8 -n 50 --out gen/
              crystalforge generate --model runs/gap/model.pt --condition band_gap=2.5 -n 50 --out gap/"""
        ),
    )
    add_sampling_options(p)
    p.add_argument("--model", default="perov_5-dng", help="shipped model name (crystalforge models) or model.pt")
    p.add_argument("-n", type=int, default=100, help="number of crystals")
    p.add_argument("--num-atoms", type=int, help="DNG: atoms per cell (default: drawn from the training data)")
    p.add_argument("--composition", help="cell content as a formula, e.g. SrTiO3 (CSP models)")
    p.add_argument(
        "--condition",
        action="append",
        type=condition,
        metavar="NAME=VALUE",
        help="target of a property-conditioned model (repeatable); refused for a property it was not trained on",
    )


def condition(text: str) -> tuple[str, float]:
    """The argparse type of ``--condition``: ``NAME=VALUE`` with a finite number."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not name.strip() or number != number or number in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a finite number, got {text!r}")
    return name.strip(), number


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
            properties=dict(args.condition or []),
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            progress=bar.update,
        )
    print_written(len(crystals), args.out)
    return 0 if len(crystals) == args.n else 1
