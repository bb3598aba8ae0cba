"""``crystalforge design``: property targets → generated, screened, relaxed and ranked candidates (docs/design.md)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from crystalforge.cli.generate import ROUTES, guarded
from crystalforge.cli.options import RAY_HELP, add_parser

UNSTEERED = "none"  # design.spec.UNSTEERED (kept here: the CLI parser loads no torch)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``design``."""
    p = add_parser(
        subparsers,
        "design",
        help="inverse design: generate, filter, deduplicate, screen, relax, hull-check, predict and rank candidates",
        epilog=textwrap.dedent(
            """\
            Stages: generate (rounds of batches, steered) → filter (validity, minimum distance, elements)
            → dedupe (structure matching, against the run and the training set) → screen (predictor on
            the generated structures: a pre-rank) → relax (MLIP, only the best --relax-budget by screen)
            → hull (E_hull against the shipped CHGNet hull) → predict (mean ± std on the relaxed
            structures) → rank (Pareto fronts, or a weighted score) → RUN/top/*.cif and RUN/top.csv.
            Everything is stored in RUN/candidates.db (`ase db RUN/candidates.db`) and RUN/design.json.
            Rerunning the same command resumes (also after kill -9); a larger --budget adds a round of
            new candidates, a larger --relax-budget relaxes more of the screened ones. --rounds R splits
            the budgets over R rounds run one after another; with --active-learning the screen's
            stability head is fine-tuned after each round on the relaxed candidates' MLIP E_hull
            (RUN/surrogate/round_<r>.pt) and screens the next round.
            Flags override the values of --config; every flag is a key of the YAML file
            (configs/design-example.yaml).

            examples:
              crystalforge design --target band_gap=2.5±0.5 --elements Li,Mn,O --out runs/limno
              crystalforge design --target band_gap=2.5±0.5 --elements Li,Mn,O --motif kagome:Mn \\
                  --num-atoms 6 --budget 500 --top 10 --out runs/kagome
              crystalforge design --config configs/design-example.yaml --out runs/example
              crystalforge design --config configs/design-example.yaml --budget 4000 --out runs/example  # extend
              crystalforge design --model perov_5-dng --predictor perov_5-properties --target dir_gap=2..3 \\
                  --budget 200 --relax-budget 10 --out runs/perov
              crystalforge design --target "formation_energy_per_atom<-1.5" --objective hull_e_above_hull:min \\
                  --objective predict_formation_energy_per_atom_mean:min:0.5 --ranking score --out runs/stable
              crystalforge design --config design.yaml --workers 8 --ray auto --out runs/big
              crystalforge design --target band_gap=1..3 --budget 600 --relax-budget 60 --rounds 3 \
                  --active-learning --out runs/learned  # the screen learns from each round's relaxations"""
        ),
    )
    p.add_argument("--config", metavar="YAML", help="design spec file (flags override its values)")
    p.add_argument("--out", help="run folder (resumable); required unless the config sets out")
    what = p.add_argument_group("targets and generation")
    what.add_argument("--target", action="append", metavar="WINDOW",
                      help="property window (repeatable): NAME=VALUE±TOL, NAME=LOW..HIGH, NAME<V, NAME>V")  # fmt: skip
    what.add_argument("--tolerance", type=float, help="half-width of a NAME=VALUE target (default 0.25)")
    what.add_argument("--elements", metavar="A,B,C", help="only these elements (e.g. Li,Mn,O)")
    what.add_argument("--motif", metavar="MOTIF:ELEMENT", help="inpaint a lattice motif, e.g. kagome:Mn")
    what.add_argument("--num-atoms", type=int, help="atoms per cell (default: drawn from the training data)")
    what.add_argument("--model", help="generative model: shipped name or model.pt (default mp_20-dng)")
    what.add_argument(
        "--route",
        choices=(*ROUTES, UNSTEERED),
        metavar="ROUTE",
        help=f"steering route: {', '.join(ROUTES)}, or {UNSTEERED} (targets only rank; default importance)",
    )
    what.add_argument("--guidance", type=float, help="gradient guidance scale / classifier-free guidance weight")
    what.add_argument("--oversample", type=int, help="importance route: pool of K × batch (default 4)")
    what.add_argument("--temperature", type=float, help="importance, smc: weights exp(J / temperature)")
    what.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    what.add_argument("--seed", type=int, help="random seed (default 0)")
    what.add_argument("--device", help="torch device for generation (default cpu)")
    budget = p.add_argument_group("budgets")
    budget.add_argument("--budget", type=int, help="candidates to generate in total (default 2000)")
    budget.add_argument("--batch-size", type=int, help="candidates per generation batch (default 256)")
    budget.add_argument("--relax-budget", type=int, help="candidates relaxed, best by screen (default 3 × --top)")
    budget.add_argument("--top", type=int, help="candidates exported with CIFs (default 20)")
    budget.add_argument("--rounds", type=int, help="rounds the budgets are split over, run one after another (1)")
    learn = p.add_argument_group("active learning")
    learn.add_argument(
        "--active-learning", action="store_true", help="after each round, fine-tune the screen's e_above_hull"
    )
    learn.add_argument("--fine-tune-epochs", type=int, help="fine-tune steps (full batch Adam; default 300)")
    learn.add_argument("--fine-tune-lr", type=float, help="fine-tune learning rate (default 0.02)")
    judge = p.add_argument_group("filters, models and ranking")
    judge.add_argument("--predictor", help="predictor: shipped name or predictor.pt (default mp_20-properties)")
    judge.add_argument("--relaxer", help="MLIP relaxer (default chgnet: the shipped hull holds CHGNet energies)")
    judge.add_argument("--train", help="training set for novelty: auto (the model's), a dataset or file, or none")
    judge.add_argument("--keep-known", action="store_true", help="keep candidates that match a training structure")
    judge.add_argument("--min-distance", type=float, help="shortest allowed interatomic distance, Å (default 0.5)")
    judge.add_argument("--max-e-hull", type=float, metavar="EV", help="reject relaxed candidates above this E_hull")
    judge.add_argument("--suspect-e-hull", type=float, metavar="EV",
                       help="flag E_hull below this as a likely MLIP/hull artefact (default -0.2)")  # fmt: skip
    judge.add_argument("--objective", action="append", type=objective, metavar="KEY:GOAL[:WEIGHT[:SCALE]]",
                       help="ranking objective (repeatable; replaces the defaults): a column such as "
                       "hull_e_above_hull or predict_band_gap_std, goal min or max")  # fmt: skip
    judge.add_argument("--ranking", choices=("pareto", "score"), help="Pareto fronts then score, or score only")
    run = p.add_argument_group("execution")
    run.add_argument("--workers", type=int, help="parallel workers for matching and relaxation (default 1)")
    run.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP)
    run.add_argument("--no-report", action="store_true", help="do not write the HTML report")


def objective(text: str) -> dict[str, object]:
    """The argparse type of ``--objective``: ``KEY:GOAL[:WEIGHT[:SCALE]]`` as the YAML mapping."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4 or parts[1] not in ("min", "max") or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected KEY:min|max[:WEIGHT[:SCALE]], got {text!r}")
    out: dict[str, object] = {"key": parts[0], "goal": parts[1]}
    try:
        for name, value in zip(("weight", "scale"), parts[2:], strict=False):
            out[name] = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight and scale must be numbers, got {text!r}") from None
    return out


FLAGS = ("out", "tolerance", "elements", "motif", "num_atoms", "model", "route", "guidance", "oversample",
         "temperature", "steps", "seed", "device", "budget", "batch_size", "relax_budget", "top", "predictor",
         "relaxer", "train", "min_distance", "ranking", "workers", "ray", "rounds", "fine_tune_epochs",
         "fine_tune_lr")  # fmt: skip
"""Flags whose value is the spec field of the same name."""


def spec_options(args: argparse.Namespace) -> dict[str, object]:
    """The spec fields the command line sets (flags not given are left to the config or the defaults)."""
    options: dict[str, object] = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    if args.target:
        options["targets"] = list(args.target)
    if args.objective:
        options["objectives"] = list(args.objective)
    if args.max_e_hull is not None:
        options["max_e_above_hull"] = args.max_e_hull
    if args.suspect_e_hull is not None:
        options["suspect_e_hull"] = args.suspect_e_hull
    if args.keep_known:
        options["novel_only"] = False
    if args.no_report:
        options["report"] = False
    if args.active_learning:
        options["active_learning"] = True
    return options


def run(args: argparse.Namespace) -> int:
    """Run, resume or extend the design run; print the one-line summary (130 after Ctrl-C, 2 for a refused write)."""
    return guarded(lambda: _design(args))


def _design(args: argparse.Namespace) -> int:
    from crystalforge import api

    options: dict[str, Any] = spec_options(args)  # spec fields, checked by the spec
    result = api.design(args.config, progress=api.progress_bar, **options)
    print(result.summary())
    if result.report is not None:
        print(f"report: {result.report}")
    return 0
