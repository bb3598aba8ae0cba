"""``crystalforge refine``: integrate given structures from an intermediate time with a flow/diffusion model."""

from __future__ import annotations

import argparse
import textwrap

from crystalforge.cli.options import add_parser, add_sampling_options, print_written


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``refine``."""
    p = add_parser(
        subparsers,
        "refine",
        help="refine rough structures (proposals) with a flow or diffusion model",
        epilog=textwrap.dedent(
            """\
            Each proposal is put on the model's path at --start-time (noised: the lower, the more the
            model may move it) and integrated to the end (SDEdit; FlowLLM's refinement stage). A CSP model
            keeps each proposal's composition. Outputs are named after the proposals, in a resumable
            run folder like generate's.

            examples:
              crystalforge generate --model mp_20-gpt -n 100 --out proposals/
              crystalforge refine proposals/samples.extxyz --model mp_20-csp --start-time 0.6 --out refined/
              crystalforge refine my_guesses/ --model mp_20-csp --start-time 0.8 --k 5 --out refined/"""
        ),
    )
    add_sampling_options(p)
    p.add_argument("proposals", help="structure file or folder (CIF, POSCAR, extxyz, ...); bad records are skipped")
    p.add_argument("--model", default="mp_20-csp", help="shipped flow/diffusion model or model.pt")
    p.add_argument("--start-time", type=float, default=0.6, help="time in (0, 1) the refinement starts at")
    p.add_argument("--k", type=int, default=1, help="refinements per proposal")
    # --steps counts the steps over [start-time, 1]; its default is the model's, scaled by 1 - start-time


def run(args: argparse.Namespace) -> int:
    """Refine every proposal."""
    from crystalforge import api

    with api.progress_bar(None, "refining") as bar:
        crystals = api.refine(
            args.model, args.proposals, out=args.out, start_time=args.start_time, k=args.k, steps=args.steps,
            anti_annealing=args.anti_annealing, seed=args.seed, device=args.device, batch_size=args.batch_size,
            progress=bar.update,
        )  # fmt: skip
    print_written(len(crystals), args.out)
    return 0
