"""Ctrl-C at a random moment of a running design: how many runs stop cleanly (exit 130, one line).

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/ctrl_c_midrun.py [--runs 120] [--seed 1] [--form c|m]
        [--shortest 0 --longest 3.5] [--workers 1]

Starts the design of the crash test (``tests/reliability/test_crash_design.py``'s settings, a fresh
output folder each time), waits for the run's first ``design.json`` (start-up is over: see
``benchmarks/ctrl_c_startup.py``), then a delay drawn uniformly from ``[--shortest, --longest]`` seconds
(seeded), sends SIGINT to its process group, and counts the exit statuses. Every other outcome is
printed with its delay and stderr. A run whose SIGINT came after all its work (``design.json`` has
``finished``), while the interpreter was exiting, ends with exit 0 and is counted apart; a run that
ends before its delay is counted as "finished first". ``--form c`` runs the installed script's code
with ``-c`` (as the ``crystalforge`` command does); ``--form m`` runs ``python -m
crystalforge.cli.main``, where CPython itself ends with SIGINT (status -2) after a
``KeyboardInterrupt`` passed through a library's ``PyRun_String`` call.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.reliability.test_crash_design import DESIGN  # noqa: E402  (the test's settings)
from tests.reliability.test_crash_generate import child_env, cli  # noqa: E402

LINE = "interrupted: finished work is kept; rerun the same command to resume"


def finished(run: Path) -> bool:
    """Whether the design had written its last ``design.json`` (``finished`` set: all its work done)."""
    try:
        return json.loads((run / "design.json").read_text()).get("finished") is not None
    except (OSError, ValueError):
        return False


def command(args: list[str], form: str) -> list[str]:
    if form == "m":
        return [sys.executable, "-X", "faulthandler", "-m", "crystalforge.cli.main", *args]
    return cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shortest", type=float, default=0.0, help="shortest delay after design.json (s)")
    parser.add_argument("--longest", type=float, default=3.5, help="longest delay after design.json (s)")
    parser.add_argument("--workers", type=int, default=1, help="the design's --workers")
    parser.add_argument("--form", choices=("c", "m"), default="c")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            with open(Path(tmp) / "stderr", "w+") as err:
                design = [*DESIGN, "--workers", str(args.workers), "--out", str(out)]
                proc = subprocess.Popen(command(design, args.form), cwd=REPO, env=child_env(),
                                        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)  # fmt: skip
                while not (out / "design.json").exists() and proc.poll() is None:
                    time.sleep(0.002)
                delay = rng.uniform(args.shortest, args.longest)
                time.sleep(delay)
                if proc.poll() is not None:
                    outcomes["finished first"] += 1
                    continue
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait()
                err.seek(0)
                text = err.read().strip()
            clean = proc.returncode == 130 and text == LINE
            if clean:
                outcomes["exit 130, one line"] += 1
            elif proc.returncode == 0 and not text and finished(out):
                outcomes["exit 0, the run had finished (signal during the interpreter's exit)"] += 1
            else:
                outcomes[f"exit {proc.returncode}"] += 1
            if not clean:
                print(f"run {i}: SIGINT {delay:.3f} s after design.json: exit {proc.returncode}, "
                      f"stderr {text[-300:]!r}")  # fmt: skip
    took = time.perf_counter() - start
    print(f"{args.runs} runs (form {args.form}, seed {args.seed}) in {took:.0f} s: {dict(outcomes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
