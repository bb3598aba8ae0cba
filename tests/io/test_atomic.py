"""Atomic writes: all or nothing, and the permissions a plain open would give."""

from __future__ import annotations

import os
import stat

import pytest

from crystalforge.io.atomic import atomic_write


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    before = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as handle:
            handle.write("x")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("old")

    def write_then_fail() -> None:
        with atomic_write(path) as handle:
            handle.write("new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
