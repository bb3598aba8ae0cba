"""Where a Ctrl-C lands when it comes right after launch: exit status of ``crystalforge design`` per delay.

    CRYSTALFORGE_DATA_DIR=../shared/data python benchmarks/ctrl_c_startup.py [--delays 0.02 0.05 ...]

Starts the design of the crash test (``tests/reliability/test_crash_design.py``'s settings, a fresh
output folder each time), sends SIGINT to its process group after each delay, and prints the exit
status and the last line of stderr. 130 with the one-line message is a clean stop; anything else
means the signal landed in the interpreter's start-up (imports), which is why the crash tests wait
for the run's first ``design.json`` before a Ctrl-C. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.02, 0.05, 0.09, 0.15, 0.25, 0.4, 0.6, 0.9, 1.3])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for i, delay in enumerate(args.delays):
            out = Path(tmp) / f"run{i}"
            command = cli([*DESIGN, "--out", str(out)])
            proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate()
            last = (err.decode(errors="replace").strip().splitlines() or [""])[-1][:100]
            print(f"SIGINT {delay:.2f} s after launch: exit {proc.returncode}, stderr ends {last!r}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
