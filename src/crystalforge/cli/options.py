"""Options shared by several commands: ``--root``, ``--workers``/``--ray``, the sampling options."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.api import ExecutorConfig

FORMATTER = argparse.RawDescriptionHelpFormatter
"""Every parser keeps its epilog's line breaks (the examples)."""

RAY_HELP = (
    "run the parallel work on a Ray cluster: 'auto' (a running cluster, else a local one) or an address "
    "such as ray://host:10001; --workers is then the number of Ray actors"
)


def add_parser(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, epilog: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with the shared help formatter."""
    return subparsers.add_parser(name, help=help, epilog=epilog, formatter_class=FORMATTER, **kwargs)


def add_root(parser: argparse.ArgumentParser, help: str = "data directory") -> None:
    """``--root``: the data directory holding the benchmark files."""
    parser.add_argument("--root", help=help)


def add_workers(parser: argparse.ArgumentParser, *, default: int | None, help: str) -> None:
    """``--workers N`` and ``--ray ADDRESS`` (read back with ``executor``)."""
    parser.add_argument("--workers", type=int, default=default, help=help)
    parser.add_argument("--ray", metavar="ADDRESS", help=RAY_HELP)


def executor(args: argparse.Namespace) -> int | ExecutorConfig | None:
    """The ``workers=`` argument for the api: ``--workers`` itself, or an ``ExecutorConfig`` with ``--ray``.

    Without ``--workers``, a Ray run gets as many actors as the local default (all cores, at most 8).
    """
    if args.ray is None:
        return args.workers
    from crystalforge import api

    workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, 8)
    return api.ExecutorConfig(workers=workers, ray=args.ray)


def positive_float(text: str) -> float:
    """The argparse type of a tolerance or scale: a finite number above 0 (``nan``, ``inf``, 0 and -1 are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text!r}")
    return value


def anti_annealing(text: str) -> float | dict[str, float]:
    """The argparse type of ``--anti-annealing``: one scale, or ``FIELD=S[,FIELD=S]``."""
    from crystalforge import api

    try:
        return api.parse_anti_annealing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The options ``generate`` and ``csp`` share (output folder, steps, seed, device, batch size)."""
    parser.add_argument("--out", required=True, help="output folder (resumable: existing chunks are kept)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument(
        "--anti-annealing",
        type=anti_annealing,
        metavar="S | FIELD=S[,FIELD=S]",
        help="flow velocity scale 1 + S·t (FlowMM): one value for every flow field or per field, "
        "e.g. frac_coords=5 (default: the model's setting)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (chunk k uses seed + k)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--batch-size", type=int, default=256, help="crystals per sampling batch")


def print_written(count: int, out: str) -> None:
    """The closing line of ``generate`` and ``csp``: what the sampling runner wrote."""
    print(f"wrote {count} structures to {out} (samples.extxyz, cif/, cif_symmetrized/)")
