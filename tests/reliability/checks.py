"""Run one input through one entry point and judge the result (shared by the tests and the fuzz benchmark).

Outcomes: ``accepted`` (read or run without complaint), ``clean`` (an error that names the file and
the record), ``unnamed`` (an error that does not), ``lost`` (a good record next to a bad one did not
come back), ``silent`` (a record that gave neither a result nor an error) and ``crash`` (an
exception escaped; ``detail`` holds the traceback). A hang is the
caller's to detect (``benchmarks/fuzz_inputs.py`` runs each input under a time limit).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crystalforge.core.errors import CrystalError
from crystalforge.io.run_folder import FAILURES_FILE
from tests.reliability.malformed import Sample

EVALUATE_FAST = ("--reference", "none", "--train", "none", "--no-coverage", "--workers", "1")
"""``evaluate`` options that skip every slow step (no reference, no novelty, no coverage, no relaxation)."""
_CONVERTED = re.compile(r"converted (\d+) structure")


@dataclass(frozen=True)
class Outcome:
    """How an entry point took one input."""

    status: str
    detail: str = ""


def _crash() -> Outcome:
    return Outcome("crash", traceback.format_exc(limit=-12))


def _names(source: str, path: Path) -> bool:
    """Whether a record's source names its file: ``path``, ``path:record``, a file in the folder ``path``,
    ``<file name> row N`` (CSV) or ``failures.csv: <name>`` (a generation run's failures)."""
    prefixes = (f"{path}:", f"{path}/", f"{path.name} row ", f"{FAILURES_FILE}: ")
    return source == str(path) or source.startswith(prefixes)


def check_reader(path: Path, sample: Sample) -> Outcome:
    """The reader of ``path``: no exception, every record's source names the file and the record.

    Structure files go through ``io.files.iter_records``; CSVs and folders (a generation run's
    included) through ``data.samples.read_samples``, what ``evaluate`` and ``predict`` read with.
    A ``CrystalError`` naming ``path`` before any record (nothing to skip to) is a clean error, and
    ``lost`` when the sample holds a good record.
    """
    from crystalforge.data.samples import read_samples
    from crystalforge.io.files import iter_records

    try:
        records = read_samples(path) if path.is_dir() or path.suffix == ".csv" else list(iter_records(path))
    except CrystalError as exc:  # nothing to skip to (an unreadable CSV, a folder without structures): named
        if sample.intact:  # ...unless a good record was there: refusing the whole file lost it
            return Outcome("lost", f"records {list(sample.intact)} not read: the whole file was refused ({exc})"[:400])
        return Outcome("clean" if str(path) in str(exc) else "unnamed", str(exc)[:300])
    except Exception:  # noqa: BLE001 - any escape is the finding
        return _crash()
    for r in records:
        if not _names(r.source, path) or (r.crystal is None and not r.error):
            return Outcome("unnamed", f"{r.source}: {r.error}")
    read = {r.source for r in records if r.crystal is not None}
    ids = {r.crystal.material_id for r in records if r.crystal is not None}
    lost = [
        label
        for label in sample.intact
        if f"{path}:{label}" not in read and label not in ids and f"{path.name} {label}" not in read
    ]
    if lost:
        errors = "; ".join(f"{r.source}: {r.error}" for r in records if r.error)[:400]
        return Outcome("lost", f"records {lost} not read ({errors})")
    bad = [r for r in records if r.error]
    return Outcome("clean", f"{bad[0].source}: {bad[0].error}"[:300]) if bad else Outcome("accepted")


def run_main(argv: Sequence[str]) -> tuple[int | str | None, str]:
    """``crystalforge.cli.main.main(argv)`` in this process: ``(exit status, stdout + stderr)``.

    An exception other than ``SystemExit`` propagates.
    """
    from crystalforge.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()


def check_command(argv: Sequence[str], path: Path, sample: Sample | None = None, output: Path | None = None) -> Outcome:
    """A CLI command on ``path``: exit 0, or a non-zero exit whose message names the file (or ``output``).

    ``output`` is what the command writes: for a ``convert`` that ran, a sample's intact records
    must all be in it (the count it prints, or the files of an output folder); for ``predict --out x.json``,
    every record must have values or an error (``silent`` when it has neither).
    """
    try:
        code, text = run_main(argv)
    except Exception:  # noqa: BLE001
        return _crash()
    if "Traceback" in text:
        return Outcome("unnamed", text[-600:])
    converted = _CONVERTED.search(text)
    if argv[0] == "convert" and sample is not None and sample.intact and converted is not None:
        written = len(list(output.iterdir())) if output is not None and output.is_dir() else None
        if int(converted.group(1)) < len(sample.intact) or (written is not None and written < len(sample.intact)):
            return Outcome("lost", f"{len(sample.intact)} intact records, {written} files written; {text[-400:]}")
    if argv[0] == "predict" and output is not None and output.is_file():
        silent = [r for r in json.loads(output.read_text()) if not r["error"] and None in r.values()]
        if silent:
            return Outcome("silent", f"{len(silent)} record(s) without values or error: {silent[0]}")
    if code in (0, None):
        return Outcome("accepted")
    named = str(path) in text or path.name in text or (output is not None and str(output) in text)
    return Outcome("clean" if named else "unnamed", text.strip()[-300:])


def check_options(argv: Sequence[str]) -> Outcome:
    """A CLI command with fuzzed options: exit 0, or a usage error / ``error:`` line, never a traceback."""
    try:
        code, text = run_main(argv)
    except Exception:  # noqa: BLE001
        return _crash()
    if code in (0, None):
        return Outcome("accepted")
    ok = "Traceback" not in text and ("error:" in text or "usage:" in text or "skipped" in text)
    return Outcome("clean" if ok else "unnamed", text.strip()[-300:])


def check_parse(tokens: Sequence[str], build_parser: Callable[[], argparse.ArgumentParser]) -> Outcome:
    """Parsing only (every subcommand): a namespace, or argparse's own exit; nothing else."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            build_parser().parse_args(list(tokens))
    except SystemExit as exc:
        return Outcome("clean" if exc.code in (0, 2) else "unnamed", out.getvalue()[-300:])
    except Exception:  # noqa: BLE001
        return _crash()
    return Outcome("accepted")


def check_store(path: Path) -> Outcome:
    """``design.store.CandidateStore`` on a damaged ``.db``: every row read, or an error naming the file."""
    from crystalforge.design.store import CandidateStore

    try:
        store = CandidateStore(path)
        store.candidates()
        store.table()
    except ValueError as exc:  # StoreError and CrystalError are ValueErrors
        return Outcome("clean" if str(path) in str(exc) else "unnamed", str(exc)[:300])
    except Exception:  # noqa: BLE001
        return _crash()
    return Outcome("accepted")
