"""The ``Representation`` protocol: an encoding of one crystal with a tested inverse."""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

from crystalforge.core.crystal import Crystal

X = TypeVar("X")


@runtime_checkable
class Representation(Protocol[X]):
    """Encodes a ``Crystal`` to ``X`` and back.

    ``lossless`` is True when ``decode(encode(c))`` reproduces ``c`` up to the representation's
    stated precision (``tolerance``, documented per class); a lossy one (voxels) states the
    tolerance within which it is tested to recover small structures.
    """

    name: str
    lossless: bool

    def encode(self, crystal: Crystal) -> X:
        """The representation of one crystal."""
        ...

    def decode(self, encoded: X) -> Crystal:
        """A crystal back from its representation; raises ``CrystalError`` when it cannot."""
        ...
