"""``crystalforge convert``: structures between CIF, POSCAR, extxyz, npz and crystal text."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crystalforge.cli.options import add_parser, positive_float

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.api import Crystal

FORMATS = ["cif", "poscar", "extxyz", "npz", "text"]
SUFFIXES = {"cif": ".cif", "poscar": ".vasp", "extxyz": ".extxyz", "npz": ".npz", "text": ".txt"}
"""The file suffix of each format when writing one file per structure into a folder."""
MAX_STEM = 100
"""Longest file name stem written into a folder (a material id can be longer than a file system allows)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert``."""
    p = add_parser(
        subparsers,
        "convert",
        help="convert structures between CIF, POSCAR, extxyz, npz and crystal text",
        epilog=textwrap.dedent(
            """\
            Input is a file or a folder (all structure files in it). Output is a file, or a folder
            (name ending in / or an existing folder) with one file per structure. Bad records are
            skipped and listed at the end; the output is written atomically.

            examples:
              crystalforge convert structures/ all.extxyz
              crystalforge convert all.extxyz cifs/ --to cif --symmetrize --symprec 0.01
              crystalforge convert POSCAR structure.txt          # crystal text format"""
        ),
    )
    p.add_argument("input", help="file or folder")
    p.add_argument("output", help="file, or folder ending in /")
    p.add_argument("--from", dest="from_format", choices=FORMATS, help="input format")
    p.add_argument("--to", choices=FORMATS, help="output format (default: from the name)")
    p.add_argument("--symmetrize", action="store_true", help="CIF: write the symmetrised conventional cell (spglib)")
    p.add_argument(
        "--symprec", type=positive_float, default=0.1, help="symmetry tolerance in Å for --symmetrize (default 0.1)"
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any record was skipped")


def file_stems(crystals: Sequence[Crystal]) -> list[str]:
    """One distinct, safe file name stem per crystal, in order.

    The material id with letters, digits and ``-_.`` kept (others become ``_``), at most ``MAX_STEM``
    characters and no leading dot (``structure_<i>`` when nothing is left); a stem already taken
    gets ``_<i>`` (and more) appended, so no structure overwrites another.
    """
    stems: list[str] = []
    taken: set[str] = set()
    for i, crystal in enumerate(crystals):
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in crystal.material_id or "")
        base = name[:MAX_STEM].lstrip(".") or f"structure_{i}"
        stem, k = base, i
        while stem in taken:
            stem, k = f"{base}_{k}", k + 1
        stems.append(stem)
        taken.add(stem)
    return stems


def run(args: argparse.Namespace) -> int:
    """Convert; bad records are skipped and reported (exit 1 if nothing converted, or any skipped with --strict)."""
    from crystalforge import api

    out = Path(args.output)
    to_folder = args.output.endswith(("/", "\\")) or out.is_dir()
    fmt = args.to
    if fmt is None and not to_folder:
        fmt = api.detect_format(out)  # .txt and .cftxt are crystal text
    if to_folder and fmt is None:
        print("error: converting into a folder needs --to FORMAT", file=sys.stderr)
        return 2
    good: list[api.Candidate] = []
    bad: list[api.Candidate] = []
    with api.progress_bar(None, "reading") as bar:
        for record in api.iter_records(args.input, fmt=args.from_format):
            (good if record.crystal is not None else bad).append(record)
            bar.update(1)
    if good and to_folder:
        pairs = [(r, r.crystal) for r in good if r.crystal is not None]
        written: list[api.Candidate] = []
        for stem, (record, crystal) in zip(file_stems([c for _, c in pairs]), pairs, strict=True):
            try:
                api.write_structures([crystal], out / f"{stem}{SUFFIXES[fmt]}", fmt=fmt,
                                     symmetrize=args.symmetrize, symprec=args.symprec)  # fmt: skip
                written.append(record)
            except api.CrystalError as exc:  # this structure cannot be written so (symmetrisation failed)
                bad.append(record.failed(f"not written: {exc.problem}"))
        good = written
    elif good:
        crystals = [r.crystal for r in good if r.crystal is not None]
        try:
            api.write_structures(crystals, out, fmt=fmt, symmetrize=args.symmetrize, symprec=args.symprec)
        except api.CrystalError as exc:
            print(f"error: {out}: not written: {exc}", file=sys.stderr)
            return 2
    print(f"converted {len(good)} structure(s) to {out}; skipped {len(bad)}")
    for record in bad:
        print(f"  skipped {record.source}: {record.error}", file=sys.stderr)
    if not good:
        return 1
    return 1 if (bad and args.strict) else 0
