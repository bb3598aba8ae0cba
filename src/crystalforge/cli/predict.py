"""``crystalforge predict``: predicted properties, with uncertainty, for structures or a generation run."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap

from crystalforge.cli.options import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict``."""
    p = add_parser(
        subparsers,
        "predict",
        help="predict properties (mean ± calibrated std) of structures with a GNN ensemble",
        epilog=textwrap.dedent(
            """\
            STRUCTURES: a folder or file of CIF/POSCAR/extxyz, a CDVAE CSV, or a generation run folder.
            Unreadable records are kept in the table with their error.

            examples:
              crystalforge predict gen/ --predictor mp_20-properties --out gen/predicted.csv
              crystalforge predict mp-1234.cif --property band_gap
              crystalforge predict cifs/ --predictor runs/gap/predictor.pt --out gap.json"""
        ),
    )
    p.add_argument("structures", help="structures to predict")
    p.add_argument("--predictor", default="mp_20-properties", help="shipped predictor name or predictor.pt")
    p.add_argument("--property", action="append", dest="props", metavar="NAME", help="only these (repeatable)")
    p.add_argument("--out", help="write the table to this .csv or .json (default: print it)")


def run(args: argparse.Namespace) -> int:
    """Predict; print a short table unless --out is given; exit 1 when no structure got a prediction."""
    from crystalforge import api

    rows = api.predict_properties(args.structures, predictor=args.predictor, properties=args.props, out=args.out)
    names = [k for k in rows[0] if k not in ("id", "source", "error") and not k.endswith("_std")]
    bad = sum(1 for r in rows if r["error"])  # no structure, or refused / not finite (the reason in "error")
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out} ({bad} without a prediction)")
    else:
        print("id\t" + "\t".join(f"{n} (± std)" for n in names))
        for r in rows:
            cells = ["—" if math.isnan(r[n]) else f"{r[n]:.4g} ± {r[n + '_std']:.2g}" for n in names]
            print(f"{r['id']}\t" + "\t".join(cells) + (f"\t{r['error']}" if r["error"] else ""))
    if bad == len(rows):
        print(f"error: none of the {len(rows)} records got a prediction", file=sys.stderr)
        return 1
    return 0
