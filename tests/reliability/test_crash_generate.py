"""``crystalforge generate`` killed (``kill -9``, Ctrl-C) at random points resumes to the files of an unbroken run.

Real subprocesses of the CLI. A kill point is chosen by polling the output folder for a file (the
first chunk record, a later one, the first CIF) and then waiting a random delay drawn from a seeded
RNG. After every kill, finished chunks must hold what their records list; the final rerun must give
byte for byte the folder of an uninterrupted run with the same seed, with no temporary left, and
chunks finished before a kill must not have been written again. Ctrl-C (SIGINT to the process
group, as a terminal sends it) must end the run with exit 130 and one line, no traceback. The
helpers here are shared by the other crash tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from crystalforge.io.files import read_structures
from crystalforge.io.run_folder import RunFolder
from tests.conftest import REPO, shared_data_dir

GENERATE = ["generate", "--model", "perov_5-dng", "-n", "16", "--steps", "50", "--batch-size", "2", "--seed", "7"]


def child_env() -> dict[str, str]:
    """The environment of a CLI subprocess: one thread, the benchmark data, this test's cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CRYSTALFORGE_DATA_DIR": str(shared_data_dir())}


def cli(args: Sequence[str]) -> list[str]:
    """The command line of ``crystalforge ARGS`` as the tests run it.

    The code of the installed ``crystalforge`` script, given with ``-c`` (this interpreter, whatever
    is on PATH). Not ``-m``: there CPython ends with SIGINT itself (status -2, not 130) when a
    ``KeyboardInterrupt`` had passed through a library's ``PyRun_String`` call, even one the command
    then caught. ``-X faulthandler``: a run that a test gives up on is sent SIGABRT, and its stderr
    then shows where every thread was (``stop_when``).
    """
    script = "import sys; from crystalforge.cli.main import main; sys.exit(main())"
    return [sys.executable, "-X", "faulthandler", "-c", script, *args]


def run_cli(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``crystalforge ARGS`` to the end."""
    return subprocess.run(cli(args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)


@dataclass
class Stop:
    """How a run that was to be stopped ended."""

    returncode: int
    stderr: str
    delay: float
    outlived: bool
    """Whether a child process of the run was still alive after the run ended."""


def stop_when(
    args: Sequence[str],
    ready: Callable[[], bool],
    delay: float,
    sig: int = signal.SIGKILL,
    timeout: float = 120,
    started: Callable[[], bool] | None = None,
) -> Stop:
    """Start ``crystalforge ARGS``, wait until ``ready()``, then ``delay`` seconds, then send ``sig``.

    A stop point that holds already at launch (a resumed run whose earlier run got past it) is not
    a point of this run: with ``started`` given, the wait then also lasts until ``started()`` (a
    file this run writes), so that a Ctrl-C does not land in the interpreter's start-up, where
    imports may turn it into any error or swallow it.

    ``SIGKILL`` goes to the main process only (as ``kill -9 PID``); ``SIGINT`` to its process group,
    as Ctrl-C in a terminal sends it. Output goes to files, so a child process that outlives the
    main one cannot hold the test up; any such child is ended afterwards.
    """
    with tempfile.TemporaryFile("w+") as err:
        first = started if started is not None and ready() else None  # the point held before launch
        proc = subprocess.Popen(cli(args), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, preexec_fn=_no_core_file)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not (ready() and (first is None or first())) and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{args[0]}: the stop point never came in {timeout:g} s; {_stuck(proc, err)}")
                time.sleep(0.005)
            time.sleep(delay)
            if proc.poll() is None:
                if sig == signal.SIGKILL:
                    proc.kill()
                else:
                    os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        finally:
            outlived = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the run's own children, if any outlived it
            except ProcessLookupError:
                outlived = False
            proc.wait()
        err.seek(0)
        return Stop(proc.returncode, err.read(), delay, outlived)


def _no_core_file() -> None:
    """In the child before exec: the SIGABRT of ``_stuck`` must not leave a core file in the repository."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _stuck(proc: subprocess.Popen[bytes], err: IO[str]) -> str:
    """Where a run that never reached its stop point is: SIGABRT makes faulthandler print its threads' stacks."""
    proc.send_signal(signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    err.seek(0)
    text = err.read().split("\nExtension modules:")[0]  # the C modules' list says nothing of where it was
    head, _, stacks = text.partition("Fatal Python error: Aborted")
    return f"its stderr:\n{head[-2000:]}\nwhere it was:{stacks[-6000:]}"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) → its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    """Leftover temporaries of the atomic writer under ``folder``."""
    return list(folder.rglob(".*.tmp"))


def check_chunks(folder: Path) -> dict[str, int]:
    """Every chunk with a record holds what the record lists; returns finished chunk file → inode."""
    run = RunFolder(folder)
    finished = {}
    for record_file in sorted(run.chunk_dir.glob("chunk_*.json")):
        k = int(record_file.stem.split("_")[1])
        record = run.chunk_record(k)
        assert record is not None, f"{record_file} is unreadable"
        path = run.chunk_path(k)
        names = [c.material_id for c in read_structures(path)] if path.stat().st_size else []
        assert names == list(record.written), f"{path} does not hold what its record lists"
        finished[path.name] = path.stat().st_ino
    return finished


def kill_repeatedly(args: Sequence[str], points: Sequence[tuple[Callable[[], bool], float]], seed: int) -> None:
    """``kill -9`` the run once per point: when ``ready()``, after a random delay in [0, longest] s.

    After each kill the finished chunks of ``--out`` hold what their records list, and none finished
    before an earlier kill was lost or written again. Then the run resumes to its end.
    """
    rng = random.Random(seed)
    out = Path(args[args.index("--out") + 1])
    kept: dict[str, int] = {}
    for i, (ready, longest) in enumerate(points):
        stop = stop_when(args, ready, rng.uniform(0, longest))
        assert stop.returncode == -signal.SIGKILL, f"the run ended before the kill ({stop.returncode}): {stop.stderr}"
        finished = check_chunks(out)
        cifs = len(list((out / "cif").glob("*.cif"))) if (out / "cif").is_dir() else 0
        shown = f"{len(finished)} chunks finished, {cifs} CIFs"
        print(f"{args[0]} kill {i + 1}: {stop.delay:.3f} s after its point; {shown}")
        assert set(kept) <= set(finished), "a chunk finished before a kill was lost"
        assert all(finished[name] == inode for name, inode in kept.items()), "a finished chunk was written again"
        kept = finished
    assert not (out / "samples.extxyz").exists()  # killed before the last file
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert all((out / "chunks" / name).stat().st_ino == inode for name, inode in kept.items())
    assert not temporaries(out)


def kill_points(out: Path) -> list[tuple[Callable[[], bool], float]]:
    """Three kill points of a generation run: after the first chunk, after the fifth, while writing CIFs."""
    chunk = RunFolder(out).chunk_record_path
    return [  # (what to wait for, longest random delay after it)
        (lambda: chunk(0).exists(), 0.6),
        (lambda: chunk(4).exists(), 0.4),
        (lambda: (out / "cif").is_dir() and any((out / "cif").iterdir()), 0.0),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "gen"
    done = run_cli([*GENERATE, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert not temporaries(out)
    return snapshot(out)


def test_kill_9_three_times_then_resume_gives_the_unbroken_run(tmp_path, reference):
    out = tmp_path / "gen"
    kill_repeatedly([*GENERATE, "--out", str(out)], kill_points(out), seed=20240501)
    assert snapshot(out) == reference
    names = [c.material_id for c in read_structures(out / "samples.extxyz")]
    assert names == [f"gen_{i:05d}" for i in range(16)]  # none lost, none twice


def test_ctrl_c_is_a_clean_stop_that_resumes(tmp_path, reference):
    rng = random.Random(7)
    out = tmp_path / "gen"
    args = [*GENERATE, "--out", str(out)]
    stop = stop_when(args, RunFolder(out).chunk_record_path(1).exists, rng.uniform(0, 0.3), sig=signal.SIGINT)
    assert stop.returncode == 130, stop.stderr
    assert stop.stderr.strip() == "interrupted: finished work is kept; rerun the same command to resume"
    assert len(check_chunks(out)) >= 2
    assert not temporaries(out)
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert snapshot(out) == reference
