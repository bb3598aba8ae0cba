"""``crystalforge design --rounds 2 --active-learning`` stopped at random points resumes to the unbroken run.

Two rounds of two generation batches each; after each round the screen's stability head is
fine-tuned on the (as-generated → relaxed E_hull) pairs so far and saved as ``surrogate/round_<r>.pt``.
Stops (each plus a random delay from a seeded RNG): ``kill -9`` inside round 0's generation,
``kill -9`` once its relaxations have begun, ``kill -9`` once round 0's surrogate is saved (round 1
generating), Ctrl-C once round 1 is generated, and ``kill -9`` once round 1's surrogate is saved
(ranking, export). After each stop the store holds whole batches, each candidate once, and no
saved surrogate is refitted by the rerun. The final rerun must give the unbroken run's candidate
table, funnel, round records, surrogates (weights and records), ``top.csv``, top CIFs and
generation folders, and no temporary left behind.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import torch

from crystalforge.io.torch_files import read_torch_file
from tests.reliability.test_crash_design import results as design_results
from tests.reliability.test_crash_design import stop_design, stored_keys
from tests.reliability.test_crash_generate import run_cli, temporaries

DESIGN = ["design", "--model", "mp_20-dng", "--predictor", "mp_20-properties", "--budget", "16", "--batch-size", "4",
          "--rounds", "2", "--active-learning", "--fine-tune-epochs", "5", "--steps", "10", "--relax-budget", "6",
          "--top", "3", "--relaxer", "chgnet-static", "--train", "none", "--no-report", "--seed", "7"]  # fmt: skip
BATCHES = [f"r{r:03d}-{i:06d}" for r in (0, 1) for i in range(8)]
"""The candidates in store order: round 0's two batches of 4, then round 1's."""


def _without_seconds(value: object) -> object:
    """``value`` with every ``seconds`` entry removed (fine-tune timings differ between two runs)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _tensors(prefix: str, value: object, out: dict[str, object]) -> None:
    """Every tensor inside ``value`` (nested dicts and lists) as a list, under its path."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value.tolist()
    elif isinstance(value, dict):
        for k, v in value.items():
            _tensors(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _tensors(f"{prefix}/{i}", v, out)


def surrogates(run: Path) -> dict[str, object]:
    """Each saved surrogate → its weights (as lists) and its record without timings."""
    out: dict[str, object] = {}
    for path in sorted((run / "surrogate").glob("*.pt")):
        payload = read_torch_file(path)
        tensors: dict[str, object] = {}
        _tensors("", payload, tensors)
        record = payload.get("record", {}) if isinstance(payload, dict) else {}
        out[path.name] = {"tensors": tensors, "record": _without_seconds(json.loads(json.dumps(record, default=str)))}
    return out


def results(run: Path) -> dict[str, object]:
    """What the run decided (``test_crash_design.results``, timings left out) and its surrogates."""
    decided = design_results(run)
    return {**decided, "design": _without_seconds(decided["design"]), "surrogates": surrogates(run)}


def check_store(run: Path) -> list[str]:
    """The store's keys after a stop: whole batches of 4 in order, each candidate once."""
    keys = stored_keys(run)
    assert keys == BATCHES[: len(keys)] and len(keys) % 4 == 0, f"not whole batches: {keys}"
    return keys


def test_kills_and_a_ctrl_c_across_rounds_and_fine_tunes_resume_to_the_unbroken_run(tmp_path):
    reference = tmp_path / "reference"
    done = run_cli([*DESIGN, "--out", str(reference)])
    assert done.returncode == 0, done.stderr
    expected = results(reference)
    rounds = expected["design"]["round_results"]  # type: ignore[index]
    assert [r["fine_tune"]["surrogate"] for r in rounds] == ["surrogate/round_000.pt", "surrogate/round_001.pt"]
    assert rounds[1]["surrogate"] == "surrogate/round_000.pt"  # round 1 was screened by round 0's surrogate

    rng = random.Random(2026)
    out = tmp_path / "run"
    args = [*DESIGN, "--out", str(out)]
    surrogate = out / "surrogate"
    points = [  # (what to wait for, longest random delay after it, signal)
        (lambda: (out / "generate" / "r000-b0001" / "chunks" / "chunk_00000.json").exists(), 0.2, signal.SIGKILL),
        (lambda: (out / "relax-cache.jsonl").exists(), 0.3, signal.SIGKILL),
        (lambda: (surrogate / "round_000.pt").exists(), 0.4, signal.SIGKILL),
        (lambda: (out / "generate" / "r001-b0001" / "samples.extxyz").exists(), 0.3, signal.SIGINT),
        (lambda: (surrogate / "round_001.pt").exists(), 0.2, signal.SIGKILL),
    ]
    stored: list[str] = []
    saved: dict[str, int] = {}
    for i, (ready, longest, sig) in enumerate(points):
        stop = stop_design(args, ready, rng.uniform(0, longest), sig)
        keys = check_store(out)
        for path in sorted(surrogate.glob("*.pt")):  # a saved surrogate is never written again
            assert saved.setdefault(path.name, path.stat().st_ino) == path.stat().st_ino, f"{path.name} was refitted"
        print(
            f"design rounds stop {i + 1} ({signal.Signals(sig).name}): {stop.delay:.3f} s after its point; "
            f"{len(keys)} candidates stored, surrogates {sorted(saved)}, a child outlived the run: {stop.outlived}"
        )
        assert keys[: len(stored)] == stored, "stored candidates were lost"
        stored = keys
    assert sorted(saved) == ["round_000.pt", "round_001.pt"]  # the last stop came after both fine-tunes
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.stat().st_ino for p in surrogate.glob("*.pt")} == saved  # the rerun refitted neither
    assert not temporaries(out)
    got = results(out)
    for key in expected:
        assert got[key] == expected[key], f"{key} differs from the unbroken run"
