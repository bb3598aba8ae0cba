"""Progress bars for long stages: a tqdm bar on stderr, or nothing.

A *progress factory* is ``factory(total, desc) -> bar`` with ``bar.update(n)`` and ``bar.close()``;
library code takes one as a value (default ``null_progress``) and never prints by itself.
``progress_bar`` bars are also context managers that close on exit.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol


class ProgressBar(Protocol):
    """What a stage does with its bar."""

    def update(self, n: int = 1) -> object:
        """Count ``n`` more items done."""

    def close(self) -> None:
        """Finish the bar."""


class ClosingProgressBar(ProgressBar, Protocol):
    """A bar that is also a context manager, closed when the ``with`` block ends; ``n`` is the count so far."""

    n: int

    def __enter__(self) -> ClosingProgressBar:
        """The bar itself."""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the bar."""


class _NullBar:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def null_progress(total: int | None, desc: str) -> ProgressBar:
    """A progress factory that shows nothing."""
    return _NullBar()


def progress_bar(total: int | None, desc: str, *, leave: bool = True) -> ClosingProgressBar:
    """A tqdm bar on stderr counting structures, with rate and ETA (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    bar: ClosingProgressBar = tqdm(
        total=total, desc=desc, unit="struct", file=sys.stderr, disable=None, dynamic_ncols=True, leave=leave
    )
    return bar
