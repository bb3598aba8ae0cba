"""``crystalforge design`` stopped at random points resumes to the results of an unbroken run.

Stops (each plus a random delay from a seeded RNG): ``kill -9`` while the first batch's importance
pool is sampled, ``kill -9`` while the second batch is sampled (the first one stored), Ctrl-C
(SIGINT) once the second batch is generated (storing it, filter, dedupe, screen), and ``kill -9``
once relaxations have begun (relax, hull, predict, rank, export). After each stop the store holds
whole batches, each candidate once; the final rerun must give the uninterrupted run's candidate
table, funnel and top list, the same ``top.csv``, top CIFs and generation folders byte for byte,
and no temporary left behind.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable
from pathlib import Path

from crystalforge.design.store import CandidateStore
from tests.reliability.test_crash_generate import Stop, run_cli, snapshot, stop_when, temporaries

DESIGN = ["design", "--model", "perov_5-dng", "--predictor", "perov_5-properties", "--target", "dir_gap=0..3",
          "--budget", "8", "--batch-size", "4", "--oversample", "2", "--steps", "10", "--relax-budget", "2",
          "--top", "2", "--relaxer", "chgnet-static", "--train", "none", "--no-report", "--seed", "5"]  # fmt: skip
BATCHES = [[f"r000-{i:06d}" for i in range(b, b + 4)] for b in (0, 4)]


def results(run: Path) -> dict[str, object]:
    """What a design run decided: its candidate table, funnel, top list, top.csv, top CIFs, generation folders."""
    meta = json.loads((run / "design.json").read_text())
    meta["spec"].pop("out")
    return {
        "table": CandidateStore(run / "candidates.db").table(),
        "design": {k: meta[k] for k in ("spec", "rounds", "funnel", "top", "targets", "objectives", "round_results")},
        "top.csv": (run / "top.csv").read_bytes(),
        "top": snapshot(run / "top"),
        "generate": snapshot(run / "generate"),
    }


def stored_keys(run: Path) -> list[str]:
    """The store's keys after a stop (none without a store), each candidate once."""
    path = run / "candidates.db"
    keys = CandidateStore(path).keys if path.exists() else []
    assert len(keys) == len(set(keys)), "a candidate was stored twice"
    return keys


def check_store(run: Path) -> list[str]:
    """The store's keys after a kill: whole batches, each candidate once."""
    keys = stored_keys(run)
    assert keys in ([], BATCHES[0], BATCHES[0] + BATCHES[1]), f"not whole batches: {keys}"
    return keys


def stop_design(args: list[str], ready: Callable[[], bool], delay: float, sig: int) -> Stop:
    """``stop_when``, then check how the run ended: killed, or Ctrl-C with exit 130 and one line.

    A point reached before this run began waits also for this run's first ``design.json`` (written
    atomically after every stage: a new file).
    """
    meta = Path(args[args.index("--out") + 1]) / "design.json"

    def identity() -> tuple[int, int] | None:  # inode and mtime: an atomic rewrite may reuse the old inode
        try:
            st = meta.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    before = identity()

    def started() -> bool:
        now = identity()
        return now is not None and now != before

    stop = stop_when(args, ready, delay, sig=sig, started=started)
    expected_code = 130 if sig == signal.SIGINT else -signal.SIGKILL
    assert stop.returncode == expected_code, f"the run ended before the signal ({stop.returncode}): {stop.stderr}"
    if sig == signal.SIGINT:  # Ctrl-C: one line, no traceback
        assert stop.stderr.strip() == "interrupted: finished work is kept; rerun the same command to resume"
    return stop


def test_three_kill_9_and_a_ctrl_c_then_resume_give_the_unbroken_run(tmp_path):
    reference = tmp_path / "reference"
    done = run_cli([*DESIGN, "--out", str(reference)])
    assert done.returncode == 0, done.stderr
    expected = results(reference)
    assert expected["design"]["funnel"]["relax"] == 2  # type: ignore[index]

    rng = random.Random(99)
    out = tmp_path / "run"
    args = [*DESIGN, "--out", str(out)]
    pool = "generate/{}/pool/chunks/chunk_00000.json"
    points = [  # (what to wait for, longest random delay after it, signal)
        (lambda: (out / pool.format("r000-b0000")).exists(), 0.3, signal.SIGKILL),
        (lambda: (out / pool.format("r000-b0001")).exists(), 0.3, signal.SIGKILL),
        (lambda: (out / "generate" / "r000-b0001" / "samples.extxyz").exists(), 0.5, signal.SIGINT),
        (lambda: (out / "relax-cache.jsonl").exists(), 0.5, signal.SIGKILL),
    ]
    stored: list[str] = []
    for i, (ready, longest, sig) in enumerate(points):
        stop = stop_design(args, ready, rng.uniform(0, longest), sig)
        keys = check_store(out)
        table = CandidateStore(out / "candidates.db").table() if keys else []
        done = {stage: sum(1 for r in table if r.get(stage) is not None) for stage in ("filter", "screen", "relax")}
        print(
            f"design stop {i + 1} ({signal.Signals(sig).name}): {stop.delay:.3f} s after its point; "
            f"{len(keys)} candidates stored, stage results {done}, a child outlived the run: {stop.outlived}"
        )
        assert len(keys) >= len(stored), "stored candidates were lost"
        stored = keys
    assert stored == BATCHES[0] + BATCHES[1]  # the last kill came after generation
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert not temporaries(out)
    assert results(out) == expected
