"""CachedRelaxer: resumable runs, truncated last lines, keys that ignore execution settings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crystalforge.core.crystal import Crystal
from crystalforge.relax import CachedRelaxer, Relaxer, RelaxResult, ResultCache, structure_key


class CountingRelaxer:
    """Fake relaxer: energy per atom = -mean(Z); records every structure it is asked for."""

    def __init__(
        self, *, fmax: float = 0.1, workers: int = 1, fail_on: str | None = None, timeout_on: str = ""
    ) -> None:
        self.fmax = fmax
        self.workers = workers
        self.fail_on = fail_on
        self.timeout_on = timeout_on
        self.seen: list[str | None] = []

    @property
    def name(self) -> str:
        return "counting-1"

    @property
    def settings(self) -> dict[str, Any]:
        return {"fmax": self.fmax, "workers": self.workers, "timeout_s": 10.0}

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        out = []
        for c in crystals:
            if c.material_id == self.fail_on:
                raise KeyboardInterrupt("killed mid-run")
            self.seen.append(c.material_id)
            if c.material_id == self.timeout_on:
                out.append(RelaxResult.failed("timeout: 10 s exceeded", material_id=c.material_id))
                continue
            e = -float(np.mean(c.atomic_numbers))
            out.append(
                RelaxResult(
                    c, e * c.num_atoms, e, e + 0.1, rmsd=0.01, steps=3, converged=True, material_id=c.material_id
                )
            )
        return out


def crystals(n: int, start: int = 0) -> list[Crystal]:
    return [
        Crystal([1 + k, 8], [[0, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 3.0, material_id=f"m{k}")
        for k in range(start, start + n)
    ]


def test_second_run_relaxes_only_missing_structures(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    inner = CountingRelaxer()
    assert isinstance(inner, Relaxer)
    first = CachedRelaxer(inner, path, chunk_size=2).relax(crystals(3))
    assert inner.seen == ["m0", "m1", "m2"] and len(path.read_text().splitlines()) == 3

    inner2 = CountingRelaxer(workers=8)  # execution settings do not change keys
    progress: list[tuple[int, int]] = []
    cached = CachedRelaxer(inner2, path, chunk_size=2, progress=lambda d, t: progress.append((d, t)))
    second = cached.relax(crystals(4))
    assert inner2.seen == ["m3"]
    assert progress[0] == (3, 4) and progress[-1] == (4, 4)
    for a, b in zip(first, second[:3], strict=True):
        assert a.energy_per_atom == b.energy_per_atom and b.crystal is not None and b.crystal.allclose(a.crystal)
    assert cached.name == "counting-1" and cached.settings["workers"] == 8


def test_physics_settings_change_keys(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    CachedRelaxer(CountingRelaxer(fmax=0.1), path).relax(crystals(2))
    other = CountingRelaxer(fmax=0.05)
    CachedRelaxer(other, path).relax(crystals(2))
    assert other.seen == ["m0", "m1"]


def test_interrupted_run_resumes_and_truncated_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    with pytest.raises(KeyboardInterrupt):
        CachedRelaxer(CountingRelaxer(fail_on="m3"), path, chunk_size=2).relax(crystals(5))
    assert len(path.read_text().splitlines()) == 2  # the first chunk was persisted
    with path.open("a") as handle:  # a crash in the middle of a write
        handle.write('{"key": "abc", "result": {"crystal": nu')
    inner = CountingRelaxer()
    results = CachedRelaxer(inner, path, chunk_size=2).relax(crystals(5))
    assert inner.seen == ["m2", "m3", "m4"]
    assert [r.material_id for r in results] == ["m0", "m1", "m2", "m3", "m4"]
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["key"] for line in lines)
    assert len(ResultCache(path)) == 5


def test_duplicates_are_computed_once_and_relabelled(tmp_path: Path) -> None:
    inner = CountingRelaxer()
    same = crystals(1)[0]
    twin = same.replace(material_id="twin")
    results = CachedRelaxer(inner, tmp_path / "c.jsonl").relax([same, twin, same])
    assert inner.seen == ["m0"]
    assert [r.material_id for r in results] == ["m0", "twin", "m0"]
    assert results[1].crystal is not None and results[1].crystal.material_id == "twin"


def test_timeouts_are_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    first = CachedRelaxer(CountingRelaxer(timeout_on="m1"), path).relax(crystals(2))
    assert first[1].failure_kind == "timeout"
    inner = CountingRelaxer()
    second = CachedRelaxer(inner, path).relax(crystals(2))
    assert inner.seen == ["m1"] and second[1].ok


def test_structure_key_ignores_noise_below_1e8_and_identity() -> None:
    c = crystals(1)[0]
    noisy = Crystal(c.atomic_numbers, c.frac_coords + 1e-11, c.lattice - 1e-11, material_id="other")
    assert structure_key(c, "p") == structure_key(noisy, "p")
    assert structure_key(c, "p") != structure_key(c, "q")
    moved = Crystal(c.atomic_numbers, c.frac_coords + 1e-6, c.lattice)
    assert structure_key(c, "p") != structure_key(moved, "p")


class CtrlCAsFailureRelaxer(CountingRelaxer):
    """A calculator that turns a Ctrl-C into its own error, which the relaxer reports as a failure."""

    def relax(self, crystals: Sequence[Crystal]) -> list[RelaxResult]:
        from tests.test_interrupt import swallowing_library

        swallowing_library()
        return [RelaxResult.failed("calculator error: interrupted", material_id=c.material_id) for c in crystals]


def test_failures_made_of_a_ctrl_c_are_not_cached(tmp_path: Path) -> None:
    from crystalforge.interrupt import catching_interrupts

    path = tmp_path / "cache.jsonl"
    with catching_interrupts(), pytest.raises(KeyboardInterrupt):
        CachedRelaxer(CtrlCAsFailureRelaxer(), path, chunk_size=2).relax(crystals(2))
    assert not path.exists() or not path.read_text().strip()  # the rerun relaxes them for real
    inner = CountingRelaxer()
    assert all(r.failure is None for r in CachedRelaxer(inner, path, chunk_size=2).relax(crystals(2)))
    assert inner.seen == ["m0", "m1"]
