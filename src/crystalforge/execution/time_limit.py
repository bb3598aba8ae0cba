"""``map_with_time_limit``: each call of a per-structure step under a wall-time limit.

Cell reduction, matching, fingerprints and symmetry analysis call into C routines that can hang
(pymatgen's neighbour search on an extremely skewed cell). The calls run in a forked child process
the caller watches, and a call that outlives its limit is ended with SIGKILL, so such a structure
costs itself, not the run. It composes with any executor: a chunk function handed to ``map`` calls
it on its own items. Ctrl-C belongs to the caller: the child ignores SIGINT and is killed when
the caller stops.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class StepAbortedError(Exception):
    """A call of a step was stopped from outside (its process was killed or died); the slot of its item."""

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:  # keyword arguments survive pickling (results of pool workers)
        return _rebuild, (type(self), str(self), self.__dict__)


class StepTimeoutError(StepAbortedError):
    """A call ran past its time limit and its process was killed."""

    def __init__(self, seconds: float, step: str) -> None:
        super().__init__(f"timed out after {seconds:g} s in {step}", step=step)
        self.seconds = seconds


def _rebuild(cls: type[StepAbortedError], message: str, state: dict[str, Any]) -> StepAbortedError:
    error = Exception.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def _serve(conn: Any, parent_end: Any, fn: Callable[[Any], Any], items: Sequence[Any], start: int) -> None:
    """Child process body: ``fn`` of ``items[start:]`` one at a time, each ``(ok, value)`` sent back at once.

    The child closes its inherited copy of the parent's reading end first: otherwise, with the
    parent killed, a full pipe would block the child forever instead of ending it (EPIPE).
    """
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this child (no traceback here)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent around the fork
    for item in items[start:]:
        try:
            reply: tuple[bool, Any] = (True, fn(item))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable value or exception
            conn.send((False, RuntimeError(f"cannot return the result of {fn!r}: {type(exc).__name__}: {exc}")))
    conn.close()


def _stop(process: Any) -> None:
    if process.pid is None:  # never started
        return
    if process.is_alive():
        process.kill()
    process.join()


def map_with_time_limit(
    fn: Callable[[T], R], items: Iterable[T], *, seconds: float | None, step: str, preload: Sequence[str] = ()
) -> list[R | StepAbortedError]:
    """``[fn(x) for x in items]`` with each call limited to ``seconds`` of wall time.

    The calls run in order in a forked child process; a call that runs past ``seconds`` is ended
    by killing the child (SIGKILL stops a C routine that ignores signals), its slot holds a
    ``StepTimeoutError`` ("timed out after N s in <step>") and a fresh child goes on with the
    next item. A child that dies on its own (a segfault, the kernel's OOM killer) leaves a
    ``StepAbortedError`` in its item's slot. An exception raised by ``fn`` is raised here, as in a plain
    loop. ``fn`` and the items reach the child by fork (nothing is pickled); results are pickled
    back. With ``seconds=None``, where the platform cannot fork, or in a daemonic process (which
    may not start children), the calls run in this process without a limit.

    ``preload`` names modules ``fn`` imports lazily (pymatgen, spglib): they are imported here
    first, so each child inherits them instead of spending its first item's time on the import.

    Raises:
        ValueError: for a non-positive ``seconds``.

    """
    work = list(items)
    if seconds is None or not work:
        return [fn(x) for x in work]
    if not seconds > 0:
        raise ValueError(f"seconds must be positive or None, got {seconds}")
    if "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
        logger.warning("no child process possible here: %s runs without its %g s time limit", step, seconds)
        return [fn(x) for x in work]
    for module in preload:
        importlib.import_module(module)
    context = multiprocessing.get_context("fork")
    out: list[R | StepAbortedError] = []
    while len(out) < len(work):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_serve, args=(sender, receiver, fn, work, len(out)), daemon=True)
        try:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # until the child ignores it
            try:
                child.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C held back is raised here
            sender.close()
            while len(out) < len(work):
                if not receiver.poll(seconds):
                    out.append(StepTimeoutError(seconds, step))
                    break
                try:
                    ok, value = receiver.recv()
                except EOFError:
                    child.join()
                    died = f"the worker process died (exit code {child.exitcode}) in {step}"
                    out.append(StepAbortedError(died, step=step))
                    break
                if not ok:
                    raise value
                out.append(value)
        finally:
            _stop(child)
            sender.close()
            receiver.close()
    return out
