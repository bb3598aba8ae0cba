"""A full disk or a read-only output folder: a clear error naming the file, non-zero exit, nothing corrupted.

The faults are simulated in-process, so they work as root too: the atomic writer sees an ``os``
whose files take half a write and then raise ``ENOSPC``, or a ``tempfile`` whose ``mkstemp`` raises
``EROFS``; the candidate store sees SQLite connections that are read-only or cannot grow (SQLite's
own "database or disk is full"). A real ``chmod 0o555`` of the output folder is tried as well and
skipped only where it does not stop writes (as root). In every case the complete output that was
there before is byte for byte unchanged, no temporary is left, and the same command resumes once
the disk is writable again.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from typing import Any

import ase.db.sqlite
import pytest

from crystalforge.cli.main import main
from crystalforge.design.store import CandidateStore
from crystalforge.io import atomic
from crystalforge.io.atomic import atomic_write
from tests.reliability.test_crash_generate import snapshot, temporaries


class _HalfWriter:
    """A file that takes half of the first write, then fails as a full disk does."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, text: str) -> int:
        self._handle.write(text[: len(text) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _FullDisk:
    """``os`` as the atomic writer sees it on a full disk."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def fdopen(fd: int, *args: Any, **kwargs: Any) -> _HalfWriter:
        return _HalfWriter(os.fdopen(fd, *args, **kwargs))


class _ReadOnly:
    """``tempfile`` as the atomic writer sees it in a read-only folder."""

    @staticmethod
    def mkstemp(prefix: str = "", suffix: str = "", dir: str | None = None) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir or ".", f"{prefix}x{suffix}"))


def _fault(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    if kind == "ENOSPC":
        monkeypatch.setattr(atomic, "os", _FullDisk())
    else:
        monkeypatch.setattr(atomic, "tempfile", _ReadOnly())


@pytest.mark.parametrize("kind", ["ENOSPC", "EROFS"])
def test_the_atomic_writer_keeps_the_old_file_and_names_the_target(tmp_path, monkeypatch, kind):
    path = tmp_path / "a.csv"
    path.write_text("old,complete\n")
    _fault(monkeypatch, kind)
    with pytest.raises(OSError, match=os.strerror(getattr(errno, kind))) as info, atomic_write(path) as handle:
        handle.write("new," * 1000)
    assert info.value.errno == getattr(errno, kind) and info.value.filename == str(path)
    assert path.read_text() == "old,complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]  # no temporary left


GENERATE = ["generate", "--model", "perov_5-dng", "--steps", "3", "--batch-size", "2", "--seed", "1"]


@pytest.mark.parametrize("kind", ["ENOSPC", "EROFS"])
def test_generate_on_a_full_or_read_only_disk(tmp_path, monkeypatch, capsys, kind):
    out = tmp_path / "gen"
    assert main([*GENERATE, "-n", "4", "--out", str(out)]) == 0
    complete = snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        _fault(m, kind)
        assert main([*GENERATE, "-n", "6", "--out", str(out)]) == 2  # asks for more: a new chunk to write
    err = capsys.readouterr().err
    chunk = out / "chunks" / "chunk_00002.extxyz"
    assert err.strip() == f"error: cannot write {chunk}: {os.strerror(getattr(errno, kind))}"
    assert snapshot(out) == complete and not temporaries(out)
    assert main([*GENERATE, "-n", "6", "--out", str(out)]) == 0  # writable again: it resumes
    fresh = tmp_path / "fresh"
    assert main([*GENERATE, "-n", "6", "--out", str(fresh)]) == 0
    assert snapshot(out) == snapshot(fresh)


def test_generate_into_a_chmod_read_only_folder(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main([*GENERATE, "-n", "2", "--out", str(out)]) == 0
    complete = snapshot(out)
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        probe = out / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("chmod does not stop writes here (running as root); the simulated EROFS test covers it")
        capsys.readouterr()
        assert main([*GENERATE, "-n", "4", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out / 'chunks'}") and err.strip().endswith("Permission denied")
        assert snapshot(out) == complete
    finally:
        for folder in folders:
            folder.chmod(stat.S_IRWXU)


DESIGN = ["design", "--model", "perov_5-dng", "--predictor", "perov_5-properties", "--target", "dir_gap=0..3",
          "--batch-size", "4", "--steps", "4", "--relax-budget", "0", "--top", "2", "--train", "none",
          "--no-report"]  # fmt: skip


def _read_only(self: ase.db.sqlite.SQLite3Database) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{self.filename}?mode=ro", uri=True, timeout=20)


def _cannot_grow(self: ase.db.sqlite.SQLite3Database) -> sqlite3.Connection:
    connection = sqlite3.connect(self.filename, timeout=20)
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    return connection


@pytest.mark.parametrize(
    ("connect", "message"),
    [(_read_only, "attempt to write a readonly database"), (_cannot_grow, "database or disk is full"), (None, None)],
    ids=["store-read-only", "store-full", "design.json-full"],
)
def test_design_on_a_full_or_read_only_disk(tmp_path, monkeypatch, capsys, connect, message):
    out = tmp_path / "run"
    assert main([*DESIGN, "--budget", "4", "--out", str(out)]) == 0
    complete = {name: (out / name).read_bytes() for name in ("design.json", "candidates.db", "top.csv")}
    table = CandidateStore(out / "candidates.db").table()
    capsys.readouterr()
    with monkeypatch.context() as m:
        if connect is not None:
            m.setattr(ase.db.sqlite.SQLite3Database, "_connect", connect)
        else:
            _fault(m, "ENOSPC")
        assert main([*DESIGN, "--budget", "8", "--out", str(out)]) == 2  # a larger budget: a new round to store
    err = capsys.readouterr().err
    if connect is not None:  # the new round was generated, but the store refused it
        records = "records r001-000000..r001-000003"
        assert err.strip() == f"error: {out / 'candidates.db'}: cannot write {records} ({message})"
        assert (out / "candidates.db").read_bytes() == complete["candidates.db"]
    else:  # the first write of the rerun is the design record
        assert err.strip() == f"error: cannot write {out / 'design.json'}: {os.strerror(errno.ENOSPC)}"
        assert {name: (out / name).read_bytes() for name in complete} == complete
    assert CandidateStore(out / "candidates.db").table() == table
    assert (out / "top.csv").read_bytes() == complete["top.csv"] and not temporaries(out)
    assert main([*DESIGN, "--budget", "8", "--out", str(out)]) == 0  # writable again: it resumes and extends
    assert len(CandidateStore(out / "candidates.db")) == 8


def test_a_store_killed_before_its_format_record_opens(tmp_path):
    path = tmp_path / "candidates.db"
    ase.db.connect(str(path), type="db").metadata  # noqa: B018 - creates the tables only, as a kill would leave
    assert path.stat().st_size > 0
    store = CandidateStore(path)
    assert len(store) == 0 and CandidateStore(path).keys == []
