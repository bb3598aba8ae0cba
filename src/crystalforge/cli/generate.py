"""``crystalforge generate``: sample crystals from a shipped or trained model.

``guarded`` is how ``generate``, ``csp`` and ``design`` stop on a write the disk refuses (full,
read-only, no permission): a one-line error naming the file or folder (exit 2). Ctrl-C, in every
command, is ``cli.main``'s clean stop (exit 130, one line). Either way what was finished stays on
disk and the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import sys
import textwrap
from collections.abc import Callable

from crystalforge.cli.options import add_parser, add_sampling_options, add_workers, executor, print_written
from crystalforge.interrupt import check_interrupted


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
              crystalforge generate --model mp_20-dng -n 1000 --workers 4 --out gen/      # or --ray auto
              crystalforge generate --model perov_5-csp --composition SrTiO3 -n 10 --out srtio3/
              crystalforge generate --model mp_20-dng --composition Li3PS4 -n 50 --out li3ps4/
              crystalforge generate --model runs/mine/model.pt --num-atoms 8 -n 50 --out gen/
              crystalforge generate --model runs/gap/model.pt --condition band_gap=2.5 -n 50 --out gap/
              crystalforge generate --model runs/sg/model.pt --condition crystal_system=cubic -n 50 --out cubic/

            steering (docs/steering.md):
              crystalforge generate --model mp_20-dng -n 100 --target band_gap=1.5..2.5 \
                  --target "formation_energy_per_atom<-1" --out gap/          # importance route, 4x pool
              crystalforge generate --model mp_20-dng -n 100 --target band_gap=2.0 --route gradient \
                  --guidance 2.0 --out gap/
              crystalforge generate --model mp_20-dng -n 100 --target band_gap=1.5..2.5 --route smc --out gap/
              crystalforge generate --model runs/mp_20-dng-cond/model.pt -n 100 --target band_gap=1.5..2.5 \
                  --route condition --guidance 2 --out gap/       # classifier-free guidance (docs/conditioning.md)
              crystalforge generate --model mp_20-dng -n 100 --elements Li,P,S --out lips/
              crystalforge generate --model mp_20-dng -n 50 --num-atoms 6 --motif kagome:Mn --out kagome/
            --target windows: NAME=VALUE (± --tolerance), NAME=VALUE±TOL, NAME=LOW..HIGH, NAME<VALUE, NAME>VALUE.
            Every kept structure's predicted properties are in <out>/predictions.csv (the guide's own
            opinion: judge hits with `crystalforge evaluate --target` and another predictor)."""
        ),
    )
    add_sampling_options(p)
    steered = "steered runs (--target, --elements, --motif, --route) sample in this process"
    add_workers(p, default=1, help=f"{WORKERS_HELP}; {steered}")
    p.add_argument("--model", default="perov_5-dng", help="shipped model name (crystalforge models) or model.pt")
    p.add_argument("-n", type=int, default=100, help="number of crystals")
    p.add_argument("--num-atoms", type=int, help="DNG: atoms per cell (default: drawn from the training data)")
    p.add_argument(
        "--composition",
        help="cell content as a formula, e.g. Li6P2S8 (taken literally): a CSP model predicts its structure, "
        "a DNG model generates with exactly these atoms (FixedComposition constraint)",
    )
    p.add_argument(
        "--condition",
        action="append",
        type=condition,
        metavar="NAME=VALUE",
        help="value for a conditioned model (repeatable): a number, or a name for crystal_system; refused for a "
        "condition it was not trained on",
    )
    steer = p.add_argument_group("steering towards property targets, element sets and motifs")
    steer.add_argument("--target", action="append", metavar="WINDOW", help="property window to hit (repeatable)")
    steer.add_argument("--predictor", default="mp_20-properties", help="guiding predictor (name or predictor.pt)")
    steer.add_argument(
        "--route",
        default="importance",
        choices=ROUTES,
        help="importance: resample a larger pool; gradient: predictor gradients on flow velocities; smc: "
        "resample during sampling; condition: a conditioned model with classifier-free guidance",
    )
    steer.add_argument(
        "--guidance", type=float, default=1.0, metavar="SCALE",
        help="gradient guidance scale; for route condition the classifier-free guidance weight (1: plain conditioning)",
    )  # fmt: skip
    steer.add_argument("--oversample", type=int, default=4, metavar="K", help="importance: pool of K·n crystals")
    steer.add_argument("--temperature", type=float, default=1.0, help="importance, smc: weights exp(J / temperature)")
    steer.add_argument("--ess-threshold", type=float, default=0.5, help="smc: resample below this share of n")
    steer.add_argument("--smc-every", type=int, default=1, metavar="K", help="smc: score every K steps")
    steer.add_argument("--tolerance", type=float, default=0.25, help="half-width of a NAME=VALUE window")
    steer.add_argument("--elements", metavar="A,B,C", help="DNG: only these elements (e.g. Li,P,S)")
    steer.add_argument("--motif", metavar="MOTIF:ELEMENT", help="inpaint a lattice motif, e.g. kagome:Mn")


WORKERS_HELP = (
    "processes sampling chunks (--batch-size crystals each) at once, each loading the model once; the files are "
    "those of --workers 1"
)
"""The help of ``--workers`` for ``generate`` and ``csp``."""

ROUTES = ("importance", "gradient", "smc", "condition", "gradient+importance", "smc+importance",
          "condition+importance", "condition+gradient")  # fmt: skip
"""The routes offered (``sampling.steering`` accepts any ``+``-join of its steps)."""


def condition(text: str) -> tuple[str, str]:
    """The argparse type of ``--condition``: ``NAME=VALUE`` (the value is checked by the model's conditions)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
"""``OSError`` numbers only a write gets: full disk or quota, read-only file system, file too large."""
DENIED = frozenset({errno.EACCES, errno.EPERM})
"""``OSError`` numbers of a file or folder the user may not use (a ``chmod``-ed output folder)."""


def guarded(work: Callable[[], int]) -> int:
    """``work()``; a refused write or access → exit 2 with one line on stderr (Ctrl-C: ``cli.main``).

    Every output is written atomically and in resumable steps, so a stop leaves finished work intact.
    """
    try:
        return work()
    except OSError as exc:
        if exc.errno not in CANNOT_WRITE | DENIED:
            raise
        check_interrupted()  # an error made of a Ctrl-C is the Ctrl-C: no error line
        verb = "cannot write " if exc.errno in CANNOT_WRITE else ""
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {verb}{where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Generate; exit 1 when fewer than ``-n`` crystals came out (130 after Ctrl-C, 2 for a refused write)."""
    return guarded(lambda: _generate(args))


def _generate(args: argparse.Namespace) -> int:
    from crystalforge import api

    steering = None
    if args.target or args.elements or args.motif or args.route != "importance":
        steering = api.Steering(
            targets=tuple(api.parse_target(t, tolerance=args.tolerance) for t in args.target or ()),
            predictor=args.predictor, route=args.route, guidance_scale=args.guidance, oversample=args.oversample,
            temperature=args.temperature, elements=args.elements, motif=args.motif, ess_threshold=args.ess_threshold,
            smc_every=args.smc_every,
        )  # fmt: skip
    total = args.n * (args.oversample if steering is not None and steering.uses_importance else 1)
    with api.progress_bar(total, "generating") as bar:
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
            steering=steering,
            workers=executor(args) or 1,
        )
    print_written(len(crystals), args.out)
    return 0 if len(crystals) == args.n else 1
