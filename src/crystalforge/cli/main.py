"""``crystalforge`` command: top-level options, logging, dispatch to one module per command, errors.

Each command module (``data``, ``convert``, ``evaluate``, ``models``, ``generate``, ``csp``,
``train``, ``design``, ``serve``, ...) has ``register(subparsers)`` and ``run(args) -> int`` and calls
only ``crystalforge.api``, imported inside ``run`` so that ``crystalforge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from crystalforge import __version__
from crystalforge.cli import (
    convert,
    csp,
    data,
    design,
    evaluate,
    generate,
    models,
    predict,
    refine,
    serve,
    train,
    train_predictor,
)
from crystalforge.cli.options import FORMATTER
from crystalforge.interrupt import catching_interrupts, check_interrupted

COMMANDS: dict[str, ModuleType] = {
    "data": data,
    "convert": convert,
    "evaluate": evaluate,
    "models": models,
    "train": train,
    "train-predictor": train_predictor,
    "generate": generate,
    "csp": csp,
    "refine": refine,
    "predict": predict,
    "design": design,
    "serve": serve,
}
"""Subcommand → its module, in the order of ``crystalforge --help``."""

EPILOG_MAIN = """\
examples:
  crystalforge data list
  crystalforge data info perov_5 --root ../shared/data
  crystalforge data prepare mp_20_reduced --workers 2
  crystalforge convert structures/ all.extxyz
  crystalforge convert mp-1234.cif mp-1234.vasp
  crystalforge convert generated.extxyz cifs/ --to cif --symmetrize
  crystalforge evaluate generated/ --reference mp_20 --task dng --out eval/
  crystalforge evaluate predictions/ --reference perov_5 --task csp --out eval/
  crystalforge models
  crystalforge generate --model perov_5-dng -n 100 --out gen/
  crystalforge csp --model perov_5-csp --formula SrTiO3 --out pred/
  crystalforge train configs/perov_5-csp-flow.yaml --out runs/perov_5-csp
  crystalforge design --target band_gap=2.5±0.5 --elements Li,Mn,O --out runs/limno
  crystalforge serve runs/limno
"""

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the --help smoke tests)."""
    parser = argparse.ArgumentParser(
        prog="crystalforge",
        description="Generative inverse design of crystalline materials.",
        epilog=EPILOG_MAIN,
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"crystalforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status.

    A clean error (bad input, a file that cannot be read or written, a missing optional package)
    prints one ``error:`` line and returns 2; Ctrl-C (at any point, start-up included) prints one
    line and returns 130 (the commands keep finished work, so rerunning resumes). A Ctrl-C that
    library code swallowed is raised again at the command's next unit of work
    (``crystalforge.interrupt``), or gives 130 when the work had run to its end; an error raised after
    a Ctrl-C (a C extension's import turns it into ``ImportError: initialization failed``) is the
    Ctrl-C.
    """
    try:
        return _dispatch(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    with catching_interrupts() as ctrl_c:  # before the api's imports (seconds of torch, ASE, pymatgen)
        try:
            status = _run(args)
        except Exception:
            if not ctrl_c.received:
                raise
            # a library turned the Ctrl-C into its own error ("ImportError: initialization failed")
            logger.debug("an error after Ctrl-C, taken for it", exc_info=True)
            raise KeyboardInterrupt from None
    if ctrl_c.received:  # library code swallowed it and the work ran on: still a Ctrl-C
        raise KeyboardInterrupt
    return status


def _run(args: argparse.Namespace) -> int:
    """The command; a clean error is one ``error:`` line and 2 (unless a Ctrl-C came first: then it is that)."""
    from crystalforge import api  # after parsing: --help and usage errors never import torch

    try:
        return int(COMMANDS[args.command].run(args))
    except api.MissingDependencyError as exc:  # names the extra to install
        return _error(str(exc))
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == "crystalforge":
            raise  # a broken installation of crystalforge itself: show the traceback
        return _error(str(api.MissingDependencyError(exc.name, f"crystalforge {args.command}")))
    except (api.CrystalError, OSError, KeyError, ValueError) as exc:  # ConfigError is a ValueError
        return _error(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc))


def _error(message: str) -> int:
    check_interrupted()  # an error made of a Ctrl-C is the Ctrl-C: no error line
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
