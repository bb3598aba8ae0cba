"""``torch_threads``: run a block with a given number of torch CPU threads, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (None or 0: unchanged); the setting is restored.

    Many tiny operations (token-by-token decoding, spring relaxations) run faster on one thread than
    with thread hand-offs, and training runs pin a count from their config. The setting is global to
    the process, so blocks in concurrent threads would interfere.
    """
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
