"""``crystalforge csp``: predict crystal structures for compositions."""

from __future__ import annotations

import argparse
import textwrap

from crystalforge.cli.options import add_parser, add_root, add_sampling_options, print_written


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``csp``."""
    p = add_parser(
        subparsers,
        "csp",
        help="predict crystal structures for compositions",
        epilog=textwrap.dedent(
            """\
            Outputs are named by the reference material_id (<id> for k=1, <id>_<j> for k>1), ready for
            `crystalforge evaluate OUT/cif --reference NAME --task csp`.

            examples:
              crystalforge csp --model perov_5-csp --formula SrTiO3 BaTiO3 --out pred/
              crystalforge csp --model perov_5-csp --reference perov_5 --split test --limit 100 --out pred/
              crystalforge csp --model mp_20-csp --reference mp_20 --k 20 --out pred20/"""
        ),
    )
    add_sampling_options(p)
    p.add_argument("--model", default="perov_5-csp", help="shipped CSP model or model.pt")
    p.add_argument("--formula", nargs="+", help="cell contents, e.g. SrTiO3 (taken literally)")
    p.add_argument("--reference", help="benchmark name or CSV: predict every composition of --split")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="only the first N reference compositions")
    p.add_argument("--k", type=int, default=1, help="predictions per composition")
    add_root(p, "data directory for benchmark names")


def run(args: argparse.Namespace) -> int:
    """Predict for ``--formula`` and/or every composition of ``--reference``."""
    from crystalforge import api

    with api.progress_bar(None, "predicting") as bar:
        crystals = api.csp(
            args.model,
            out=args.out,
            formulas=args.formula or (),
            reference=args.reference,
            split=args.split,
            limit=args.limit,
            k=args.k,
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            root=args.root,
            progress=bar.update,
        )
    print_written(len(crystals), args.out)
    return 0
