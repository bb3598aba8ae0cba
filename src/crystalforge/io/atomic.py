"""Atomic file output: write to a temporary file beside the target, then ``os.replace``.

A reader never sees a half-written file: until the replace, the old file (or none) is there. A
failed write (a full disk, a read-only folder) removes the temporary file and raises ``OSError``
naming the target, not the temporary. A process killed mid-write (``kill -9``) leaves its hidden
temporary behind; ``remove_temporaries`` clears those from a folder before a run resumes in it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMPORARY_SUFFIX = ".tmp"
"""Temporary files are ``.<target name>.<random>.tmp``: hidden, so folder scans skip them."""


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _naming_target(exc: OSError, target: Path, tmp: str | None) -> OSError:
    """``exc`` as an ``OSError`` of the same kind naming ``target`` (errors of the caller's own files pass).

    ``tmp`` is None while the temporary is being made: then any error is about writing ``target``.
    """
    if exc.errno is None or (tmp is not None and exc.filename not in (None, tmp)):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: object) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` in one step.

    If the block raises, the temporary file is removed and ``path`` is left untouched; an ``OSError``
    of the write itself (no space, read-only folder) is raised naming ``path``. The file gets the
    permissions a plain ``open`` would give (``0o666`` less the umask), not ``mkstemp``'s private 0600.
    """
    target = Path(path)
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
        with os.fdopen(fd, mode, **kwargs) as handle:  # type: ignore[call-overload]
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            named = _naming_target(exc, target, tmp)
            if named is not exc:
                raise named from exc
        raise


def remove_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporaries that killed writers left in ``folder`` (not recursive); return how many.

    Only for a folder no other process is writing to (a run folder being resumed).
    """
    removed = 0
    for leftover in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed += 1
    return removed
