"""`crystalforge evaluate --relax chgnet` killed with SIGKILL mid-relaxation resumes without losing or redoing work.

A real subprocess relaxes seven tiny structures with CHGNet (about a second each); once the result
cache holds two finished relaxations it is killed with SIGKILL. The same command is run again and
must (1) keep every cached line byte for byte and add each missing structure exactly once, (2) leave
no half-written output at any point, and (3) end with outputs identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crystalforge.core.crystal import Crystal
from crystalforge.io.files import write_structures
from crystalforge.testing import tiny_crystals

pytest.importorskip("chgnet")
pytest.importorskip("smact")

CACHE = "relax-chgnet.jsonl"
OUTPUTS = ("summary.json", "per_structure.csv", "summary.md", "relaxed.extxyz")
FCC = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
BCC = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])


def _shaken(crystal: Crystal, scale: float, seed: int) -> Crystal:
    cart = crystal.cart_coords + np.random.default_rng(seed).normal(scale=scale, size=crystal.cart_coords.shape)
    return crystal.replace(frac_coords=cart @ np.linalg.inv(crystal.lattice))


def _samples() -> list[Crystal]:
    """Seven small structures a few optimiser steps from a CHGNet minimum (about a second each)."""
    tiny = {c.material_id: c for c in tiny_crystals()}
    return [
        tiny["po_sc_1"],
        _shaken(tiny["si_fcc_2"], 0.05, 1),
        Crystal([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], FCC * 5.4, material_id="nacl_p"),
        Crystal([29], [[0, 0, 0]], FCC * 3.9, material_id="cu_p"),
        Crystal([12, 8], [[0, 0, 0], [0.5, 0.5, 0.5]], FCC * 4.5, material_id="mgo_p"),
        Crystal([26], [[0, 0, 0]], BCC * 3.0, material_id="fe_bcc"),
        _shaken(tiny["nacl_conv_8"], 0.05, 2),
    ]


def _command(samples: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "crystalforge.cli.main", "evaluate", str(samples), "--reference", "none",
            "--train", "none", "--relax", "chgnet", "--out", str(out)]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CRYSTALFORGE_CACHE_DIR": str(tmp_path / "cache")}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def _no_half_written_outputs(out: Path) -> None:
    """Each output is absent or whole (atomic writes); the cache holds only complete JSON lines."""
    for name in OUTPUTS:
        path = out / name
        if path.exists() and name == "summary.json":
            json.loads(path.read_text())
    for line in _lines(out / CACHE):
        assert line.endswith(b"\n")
        json.loads(line)


def _final(out: Path) -> dict[str, str]:
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("timings")  # wall times differ from run to run
    texts = {name: (out / name).read_text() for name in OUTPUTS[1:]}
    return {"summary.json": json.dumps(summary, sort_keys=True), **texts}


@pytest.mark.slow
def test_sigkill_mid_relaxation_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    samples = tmp_path / "samples.extxyz"
    write_structures(_samples(), samples)
    out, clean = tmp_path / "interrupted", tmp_path / "uninterrupted"
    env = _env(tmp_path)

    process = subprocess.Popen(_command(samples, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_lines(out / CACHE)) < 2:  # poll the cache: kill once two relaxations are stored
        assert process.poll() is None, f"evaluate ended before it could be killed: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "no relaxation finished within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    before = _lines(out / CACHE)
    assert 2 <= len(before) < 7  # killed mid-run: some structures relaxed, some not
    assert not (out / "summary.json").exists()  # the report is written once, at the end
    _no_half_written_outputs(out)

    resumed = subprocess.run(_command(samples, out), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _lines(out / CACHE)
    assert after[: len(before)] == before  # no finished relaxation lost or recomputed
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == len(set(keys)) == 7  # each missing structure added exactly once
    _no_half_written_outputs(out)

    reference = subprocess.run(_command(samples, clean), env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    assert _final(out) == _final(clean)
