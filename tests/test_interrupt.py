"""A Ctrl-C is recorded inside ``catching_interrupts()`` and raised again where work may stop."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

from crystalforge.interrupt import catching_interrupts, check_interrupted


def swallowing_library() -> None:
    """What a bare ``except:`` in library code does to a Ctrl-C that lands in it."""
    with contextlib.suppress(BaseException):
        signal.raise_signal(signal.SIGINT)


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_check():
    with catching_interrupts() as record:
        check_interrupted()  # nothing yet
        swallowing_library()
        assert record.received
        with pytest.raises(KeyboardInterrupt):
            check_interrupted()


def test_the_handler_raises_like_pythons_own():
    with catching_interrupts() as record, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert record.received


def test_the_block_restores_the_handler_and_a_new_block_starts_clean():
    before = signal.getsignal(signal.SIGINT)
    with catching_interrupts():
        assert signal.getsignal(signal.SIGINT) is not before
        swallowing_library()
    assert signal.getsignal(signal.SIGINT) is before
    check_interrupted()  # outside a block: the earlier record is gone
    with catching_interrupts() as record:
        check_interrupted()
        assert not record.received


def test_outside_the_main_thread_the_block_changes_nothing():
    seen: list[object] = []

    def work() -> None:
        with catching_interrupts() as record:
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append(record.received)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [before, False]


def _ctrl_c_reaches_the_child(x: int) -> int:
    """A Ctrl-C goes to the whole process group: here it reaches the time-limit child alone."""
    os.kill(os.getpid(), signal.SIGINT)
    return 2 * x


def test_the_time_limit_child_leaves_ctrl_c_to_its_parent(capfd):
    """No traceback from the child and no lost item: the parent, which owns Ctrl-C, ends the child."""
    from crystalforge.execution.time_limit import map_with_time_limit

    assert map_with_time_limit(_ctrl_c_reaches_the_child, [1, 2], seconds=60, step="test") == [2, 4]
    assert "Traceback" not in capfd.readouterr().err
