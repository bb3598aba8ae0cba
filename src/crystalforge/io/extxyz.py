"""Cutting extxyz text into frames, so that one broken frame spoils only itself.

An extxyz file is a sequence of frames, each an atom-count line, a comment line and one line per
atom; the counts are the only frame boundaries. ``split_frames`` follows them. Where a count does
not fit (no number, over the atom limit, running past the end or into the next frame, or followed
by a line that is neither the next count nor a broken count before a comment line), it reports
that frame and resumes at the next line that starts a frame: a lone count followed by a comment
line with ``Lattice=`` or ``Properties=`` (every extxyz writer puts one of them there). Parsing a
frame is ASE's job (``io.files``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_COUNT = re.compile(r"\s*([+-]?[0-9]+)\s*")
_FRAME_KEYS = ("Lattice=", "Properties=")
_MATERIAL_ID = re.compile(r'material_id=(?:"([^"]*)"|(\S+))')


@dataclass(frozen=True)
class Frame:
    """One frame: its first line number (from 1), its text, and what is wrong with it (None if nothing)."""

    line: int
    text: str
    problem: str | None = None

    @property
    def material_id(self) -> str | None:
        """The ``material_id=...`` value of the comment line, as written (ASE would read "3961_0" as 39610)."""
        lines = self.text.splitlines()
        m = _MATERIAL_ID.search(lines[1]) if len(lines) > 1 else None
        return None if m is None else (m.group(1) or m.group(2))


def split_frames(text: str, *, count_problem: Callable[[int], str | None]) -> list[Frame]:
    """The frames of ``text``; a count for which ``count_problem`` gives a reason is a problem, never parsed."""
    lines = text.splitlines()
    frames: list[Frame] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        problem, end = _frame_end(lines, i, count_problem)
        if problem is not None:
            end = _next_start(lines, i + 1)
        frames.append(Frame(i + 1, "\n".join(lines[i:end]) + "\n", problem))
        i = end
    return frames


def _is_count(lines: list[str], j: int) -> bool:
    return j < len(lines) and _COUNT.fullmatch(lines[j]) is not None


def _has_frame_keys(lines: list[str], j: int) -> bool:
    """Whether line ``j`` reads as a frame's comment line."""
    return j < len(lines) and any(key in lines[j] for key in _FRAME_KEYS)


def _next_start(lines: list[str], j: int) -> int:
    """The first line at or after ``j`` that starts a frame (``len(lines)`` when none does)."""
    for k in range(j, len(lines) - 1):
        if _is_count(lines, k) and _has_frame_keys(lines, k + 1):
            return k
    return len(lines)


def _frame_end(lines: list[str], i: int, count_problem: Callable[[int], str | None]) -> tuple[str | None, int]:
    """What is wrong with the frame whose count line is ``lines[i]`` (None if nothing), and where it ends."""
    match = _COUNT.fullmatch(lines[i])
    if match is None:
        return f"expected an atom count, got {lines[i][:40]!r}", i
    count = int(match.group(1))
    if count < 0:
        return f"negative atom count {count}", i
    if (problem := count_problem(count)) is not None:
        return problem, i
    end = i + 2 + count
    inner = _next_start(lines, i + 2)
    if inner < min(end, len(lines)):
        return f"{count} atoms announced, but a new frame starts at line {inner + 1}", i
    if end > len(lines):
        return f"frame is truncated ({count} atoms announced, {max(len(lines) - i - 2, 0)} atom lines follow)", i
    if end < len(lines) and lines[end].strip() and not (_is_count(lines, end) or _has_frame_keys(lines, end + 1)):
        return f"{count} atoms announced, but line {end + 1} after them is not the next frame's atom count", i
    return None, end
