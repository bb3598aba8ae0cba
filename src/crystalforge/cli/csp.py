"""``crystalforge csp``: predict crystal structures for compositions, reference entries or a chemical system."""

from __future__ import annotations

import argparse
import textwrap

from crystalforge.cli.generate import WORKERS_HELP, guarded
from crystalforge.cli.options import add_parser, add_root, add_sampling_options, add_workers, executor, print_written


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``csp``."""
    p = add_parser(
        subparsers,
        "csp",
        help="predict crystal structures for compositions",
        epilog=textwrap.dedent(
            """\
            Outputs are named by the reference material_id (<id> for k=1, <id>_<j> for k>1), ready for
            `crystalforge evaluate OUT/cif --reference NAME --task csp`, or by formula (--formula, --system).
            --system enumerates every cell composition holding all its elements with at most --max-atoms
            atoms (multiples included: Li3PS4 and Li6P2S8), charge balanced with SMACT's icsd24 oxidation
            states (needs crystalforge[evaluation]) unless --no-charge-balance.

            examples:
              crystalforge csp --model perov_5-csp --formula SrTiO3 BaTiO3 --out pred/
              crystalforge csp --model perov_5-csp --reference perov_5 --split test --limit 100 --out pred/
              crystalforge csp --model mp_20-csp --reference mp_20 --k 20 --workers 4 --out pred20/
              crystalforge csp --model mp_20-csp --system Li-P-S --max-atoms 12 --k 5 --out lps/
              crystalforge csp --model mp_20-csp --system Li,P,S --max-formulas 10 --no-charge-balance --out lps/"""
        ),
    )
    add_sampling_options(p)
    add_workers(p, default=1, help=WORKERS_HELP)
    p.add_argument("--model", default="perov_5-csp", help="shipped CSP model or model.pt")
    p.add_argument("--formula", nargs="+", help="cell contents, e.g. SrTiO3 (taken literally)")
    p.add_argument("--reference", help="benchmark name or CSV: predict every composition of --split")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="only the first N reference compositions")
    p.add_argument("--k", type=int, default=1, help="predictions per composition")
    system = p.add_argument_group("a chemical system (every composition of it)")
    system.add_argument("--system", metavar="A-B-C", help="elements, e.g. Li-P-S or Li,P,S")
    system.add_argument("--max-atoms", type=int, default=20, help="largest cell to enumerate (default 20)")
    system.add_argument("--max-formulas", type=int, metavar="N", help="only the first N reduced formulas")
    system.add_argument(
        "--no-charge-balance",
        dest="charge_balanced",
        action="store_false",
        help="keep compositions that no oxidation states balance",
    )
    add_root(p, "data directory for benchmark names")


def run(args: argparse.Namespace) -> int:
    """Predict for ``--formula``, every composition of ``--reference`` and/or of ``--system`` (resumable)."""
    return guarded(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
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
            system=args.system,
            max_atoms=args.max_atoms,
            max_formulas=args.max_formulas,
            charge_balanced=args.charge_balanced,
            steps=args.steps,
            anti_annealing=args.anti_annealing,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            root=args.root,
            progress=bar.update,
            workers=executor(args) or 1,
        )
    print_written(len(crystals), args.out)
    return 0
