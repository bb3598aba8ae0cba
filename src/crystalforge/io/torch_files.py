"""Reading ``torch.save`` files that may be damaged or hostile: weights-only, one-line errors naming the file.

Every model and predictor file goes through ``read_torch_file``: ``weights_only=True`` (a pickle
that asks for any global is refused, nothing in it runs), and a missing, empty, truncated or
foreign file gives one line naming the file instead of torch's multi-line message.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = ["one_line", "read_torch_file"]

_GLOBAL = re.compile(r"GLOBAL (\S+)")
"""How torch's weights-only unpickler names a refused import (``Trying to load unsupported GLOBAL posix.system``)."""


def one_line(message: object, limit: int = 240) -> str:
    """``str(message)`` (an exception's message) on one line, whitespace runs collapsed, cut to ``limit``."""
    text = " ".join(str(message).split()) or "no message"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_torch_file(path: str | Path, *, what: str = "checkpoint") -> object:
    """The data of a ``torch.save`` file, loaded with ``weights_only=True``; one-line errors naming it.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an empty, truncated or
    foreign one, or one whose pickle asks for a global (nothing in it is run).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what}")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: an empty file, not a crystalforge {what}")
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; a cut one has lost its directory
        raise ValueError(f"{p}: not a crystalforge {what} (not a PyTorch archive: truncated, or another kind of file)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _GLOBAL.search(str(exc))
        held = f"asks for {named.group(1)}" if named else "holds more than tensors and plain data"
        raise ValueError(f"{p}: refused, not a crystalforge {what}: its pickle {held} (nothing was run)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged archives
        raise ValueError(f"{p}: not a readable crystalforge {what} ({type(exc).__name__}: {one_line(exc)})") from None
