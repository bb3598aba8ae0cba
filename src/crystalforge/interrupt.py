"""A Ctrl-C that reaches the command even when library code swallows its ``KeyboardInterrupt``.

Python raises ``KeyboardInterrupt`` in whatever code runs when SIGINT arrives. A bare ``except:``
in a library (or one that catches ``BaseException`` and goes on) swallows it, and the run would
then go on to its end as if no one had pressed Ctrl-C. ``catching_interrupts()`` installs a SIGINT
handler that raises as Python's own does and also records the signal; ``check_interrupted()``,
called between units of work (a sampled chunk, a design stage's chunk, a relaxation chunk), raises
``KeyboardInterrupt`` again for a recorded Ctrl-C; ``Interrupts.received`` tells the command's top
that a Ctrl-C came even when the work ran to its end. Code for which a Ctrl-C is the normal end (a
server) calls ``interrupt_handled()`` where it catches it.

Outside ``catching_interrupts()`` (library use) nothing is recorded and ``check_interrupted()``
does nothing; inside it, a worker thread's ``check_interrupted()`` sees the main thread's record.
A leaf module (standard library only): the CLI installs it before importing anything heavy.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass
class Interrupts:
    """What the handler saw during one ``catching_interrupts()`` block."""

    received: bool = False


_current: Interrupts | None = None


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived in this block (also when something swallowed it).

    Call it where work may stop cleanly (before a chunk, a stage, a relaxation), never in clean-up code.
    """
    if _current is not None and _current.received:
        raise KeyboardInterrupt("Ctrl-C received earlier in this run")


def interrupt_handled() -> None:
    """The code that caught the ``KeyboardInterrupt`` ends normally on it (a server's Ctrl-C): forget it."""
    if _current is not None:
        _current.received = False


def _record_and_raise(signum: int, frame: FrameType | None) -> None:
    if _current is not None:
        _current.received = True
    raise KeyboardInterrupt


@contextmanager
def catching_interrupts() -> Iterator[Interrupts]:
    """Record every SIGINT of the block (main thread only; elsewhere the block changes nothing).

    The previous SIGINT handler is restored at the end, and the record of an earlier block is dropped.
    """
    global _current
    if threading.current_thread() is not threading.main_thread():
        yield Interrupts()
        return
    record, outer, before = Interrupts(), _current, signal.getsignal(signal.SIGINT)
    try:
        _current = record  # first: a SIGINT between the two lines is recorded here, not lost
        signal.signal(signal.SIGINT, _record_and_raise)
        yield record
    finally:
        signal.signal(signal.SIGINT, before)
        _current = outer
