"""``crystalforge evaluate``: score generated or predicted structures by the pinned protocol."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from crystalforge.cli.options import add_parser, add_root, add_workers, executor


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    p = add_parser(
        subparsers,
        "evaluate",
        help="evaluate generated or predicted structures by the pinned protocol",
        epilog=textwrap.dedent(
            """\
            SAMPLES is a folder of CIF/POSCAR/extxyz files, one such file, a CDVAE-format CSV or an
            .npz archive. Unreadable records are counted, with their reason, never dropped.
            An output folder of `generate`/`csp` gives its samples.extxyz plus one invalid
            sample per structure listed in its failures.csv.
            For --task csp, predictions link to reference material_ids by name: mp-1234.cif,
            mp-1234_0.cif ... mp-1234_19.cif (best of k), or an extxyz material_id field.
            Relaxation results are cached per structure in --out, so a rerun resumes.
            A structure over a resource limit (CRYSTALFORGE_MAX_ATOMS, default 1000 atoms; cell
            size and density) is rejected and reported, not evaluated. Each structure gets at most
            --time-limit seconds (default: CRYSTALFORGE_TIME_LIMIT_S, else 60) in each step a library
            can hang on (Niggli reduction, structure matching, spglib, CrystalNN); one over it is
            reported as failed ("timed out after N s in <step>") and the run goes on.

            examples:
              crystalforge evaluate generated/ --reference mp_20 --task dng --out eval/
              crystalforge evaluate samples.extxyz --reference perov_5 --relax chgnet --workers 2 --out eval/
              crystalforge evaluate predictions/ --reference perov_5 --task csp --k 20 --out eval/
              crystalforge evaluate generated/ --reference my_test.csv --train my_train.csv --no-coverage
              crystalforge evaluate generated/ --reference none --target band_gap:1.0:2.0
              crystalforge evaluate gap/ --reference mp_20 --target band_gap=1.5..2.5 --judge runs/judge-mp20/"""
        ),
    )
    p.add_argument("samples", help="folder or file of structures, or a CDVAE-format CSV")
    p.add_argument(
        "--reference",
        default="mp_20",
        help="benchmark name (its --split is used), CSV/structure file, or 'none' (default mp_20)",
    )
    p.add_argument("--task", choices=["dng", "csp"], default="dng", help="de novo generation or structure prediction")
    p.add_argument("--split", default="test", help="reference split for a benchmark name (default test)")
    p.add_argument(
        "--train", help="training set for novelty: name, path or 'none' (default: the protocol's train split)"
    )
    p.add_argument("--relax", choices=["chgnet"], help="relax with this MLIP and compute stability and S.U.N.")
    p.add_argument("--no-coverage", action="store_true", help="skip COV-R/P (CrystalNN fingerprints are slow)")
    p.add_argument(
        "--cov-cutoffs", metavar="STRUCT,COMP", help="coverage cutoffs (default: CDVAE's for a benchmark reference)"
    )
    p.add_argument("--k", type=int, help="CSP: predictions per reference for best-of-k (default: all given)")
    p.add_argument(
        "--target",
        help="property window for the targeting success rate: NAME:LOW:HIGH, or a generate --target form "
        "(NAME=LOW..HIGH, NAME<VALUE, ...)",
    )
    p.add_argument(
        "--judge",
        metavar="PREDICTOR",
        help="score --target on this predictor's values (never the one that steered): a predictor.pt, a shipped "
        "predictor, a <property>.gbm or a folder of them (train-predictor --baseline)",
    )
    p.add_argument("--out", help="output folder for summary.json, per_structure.csv and summary.md")
    add_workers(p, default=1, help="processes for fingerprints, matching and relaxation")
    p.add_argument(
        "--time-limit",
        type=_seconds_or_none,
        default="env",
        metavar="SECONDS",
        help="per structure, in each step a library can hang on ('none': no limit; default $CRYSTALFORGE_TIME_LIMIT_S "
        "or 60)",
    )
    add_root(p, "data directory for benchmark names")
    p.add_argument("--format", choices=["cif", "poscar", "extxyz", "npz", "text", "csv"], help="sample file format")


def _seconds_or_none(text: str) -> float | str | None:
    """``--time-limit``: positive seconds, ``none``, or ``env`` (the default: the environment's setting)."""
    if text.strip().lower() in ("none", "env"):
        return None if text.strip().lower() == "none" else "env"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected positive seconds, not {text!r}")
    return value


def parse_target(text: str | None) -> tuple[str, float | None, float | None] | None:
    """``NAME:LOW:HIGH`` (either bound may be empty), or a window form of ``generate --target`` → (name, low, high)."""
    if text is None:
        return None
    if ":" not in text:
        from crystalforge import api

        window = api.parse_target(text)
        return window.name, window.low, window.high
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"--target must be NAME:LOW:HIGH (a bound may be empty), not {text!r}")
    try:
        low, high = (float(v) if v.strip() else None for v in parts[1:])
    except ValueError:
        raise ValueError(f"--target bounds must be numbers or empty, not {text!r}") from None
    return parts[0], low, high


def parse_cutoffs(text: str | None) -> tuple[float, float] | None:
    """``"0.4,10"`` → (0.4, 10.0)."""
    if text is None:
        return None
    try:
        struct, comp = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--cov-cutoffs must be STRUCT,COMP (two numbers), not {text!r}") from None
    return struct, comp


def run(args: argparse.Namespace) -> int:
    """Evaluate; write summary.json, per_structure.csv, summary.md; exit 1 if any metric failed."""
    from crystalforge import api

    reference = None if args.reference.lower() == "none" else args.reference
    train: str | bool | None = None
    if args.train is not None:
        train = False if args.train.lower() == "none" else args.train
    report = api.evaluate(
        args.samples,
        reference=reference,
        task=args.task,
        split=args.split,
        train=train,
        relax=args.relax,
        coverage=not args.no_coverage,
        coverage_cutoffs=parse_cutoffs(args.cov_cutoffs),
        k=args.k,
        target=parse_target(args.target),
        judge=args.judge,
        out=args.out,
        workers=executor(args) or 1,
        root=args.root,
        fmt=args.format,
        show_progress=True,
        time_limit_s=args.time_limit,
    )
    print(report.to_markdown(), end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'summary.json'}, per_structure.csv and summary.md")
    errors = report.protocol.get("errors")
    if errors:
        print(f"error: {len(errors)} metric(s) failed: {', '.join(errors)} (see protocol.errors)", file=sys.stderr)
        return 1
    return 0
