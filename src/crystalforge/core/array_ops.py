"""Typed NumPy / torch dispatch for code that accepts either array library.

``ops(x)`` returns the namespace matching ``x``'s library, typed through the constrained
``Array`` TypeVar: NumPy arrays in give NumPy arrays out, tensors give tensors. Each method is
the plain NumPy or torch call, so results are exactly those of calling the library directly.
Anything that is not a ``torch.Tensor`` takes the NumPy path (as ``np.asarray`` would).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
"""A NumPy array or a torch tensor; functions typed with it return the library they were given."""


class ArrayOps(ABC, Generic[Array]):
    """The array functions shared code needs, for one library (see ``NUMPY_OPS`` / ``TORCH_OPS``)."""

    @abstractmethod
    def stack(self, parts: Sequence[Array], axis: int) -> Array:
        """Join ``parts`` along a new ``axis``."""

    @abstractmethod
    def concat(self, parts: Sequence[Array], axis: int) -> Array:
        """Join ``parts`` along the existing ``axis``."""

    @abstractmethod
    def norm(self, x: Array) -> Array:
        """Euclidean norm over the last axis."""

    @abstractmethod
    def det(self, x: Array) -> Array:
        """Determinant of the last two axes."""

    @abstractmethod
    def inv(self, x: Array) -> Array:
        """Inverse of the last two axes."""

    @abstractmethod
    def swap_last(self, x: Array) -> Array:
        """Transpose of the last two axes."""

    @abstractmethod
    def zeros_like(self, x: Array) -> Array:
        """Zeros with the shape, dtype (and device) of ``x``."""

    @abstractmethod
    def sqrt(self, x: Array) -> Array:
        """Elementwise square root."""

    @abstractmethod
    def exp(self, x: Array) -> Array:
        """Elementwise exponential."""

    @abstractmethod
    def log(self, x: Array) -> Array:
        """Elementwise natural logarithm."""

    @abstractmethod
    def cos(self, x: Array) -> Array:
        """Elementwise cosine (radians)."""

    @abstractmethod
    def sin(self, x: Array) -> Array:
        """Elementwise sine (radians)."""

    @abstractmethod
    def tanh(self, x: Array) -> Array:
        """Elementwise hyperbolic tangent."""

    @abstractmethod
    def cosh(self, x: Array) -> Array:
        """Elementwise hyperbolic cosine."""

    @abstractmethod
    def arccos(self, x: Array) -> Array:
        """Elementwise inverse cosine (radians)."""

    @abstractmethod
    def arctanh(self, x: Array) -> Array:
        """Elementwise inverse hyperbolic tangent."""

    @abstractmethod
    def deg2rad(self, x: Array) -> Array:
        """Degrees to radians."""

    @abstractmethod
    def rad2deg(self, x: Array) -> Array:
        """Radians to degrees."""

    @abstractmethod
    def clip(self, x: Array, lo: float, hi: float) -> Array:
        """Elementwise clip into ``[lo, hi]``."""

    @abstractmethod
    def maximum(self, x: Array, floor: float) -> Array:
        """Elementwise ``max(x, floor)``."""

    @abstractmethod
    def as_like(self, values: Array, like: Array) -> Array:
        """``values`` converted to the dtype (and device) of ``like``."""


class _NumpyOps(ArrayOps[np.ndarray]):
    # numpy's stubs give Any for ufuncs and ``linalg`` on arrays of unknown dtype; the
    # annotated locals record that the results are arrays.
    def stack(self, parts: Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.stack(parts, axis)

    def concat(self, parts: Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(parts, axis)

    def norm(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.linalg.norm(x, axis=-1)
        return out

    def det(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.linalg.det(x)
        return out

    def inv(self, x: np.ndarray) -> np.ndarray:
        return np.linalg.inv(x)

    def swap_last(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x.swapaxes(-1, -2)
        return out

    def zeros_like(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def sqrt(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.sqrt(x)
        return out

    def exp(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.exp(x)
        return out

    def log(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.log(x)
        return out

    def cos(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.cos(x)
        return out

    def sin(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.sin(x)
        return out

    def tanh(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.tanh(x)
        return out

    def cosh(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.cosh(x)
        return out

    def arccos(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.arccos(x)
        return out

    def arctanh(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.arctanh(x)
        return out

    def deg2rad(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.deg2rad(x)
        return out

    def rad2deg(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.rad2deg(x)
        return out

    def clip(self, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        out: np.ndarray = np.clip(x, lo, hi)
        return out

    def maximum(self, x: np.ndarray, floor: float) -> np.ndarray:
        out: np.ndarray = np.maximum(x, floor)
        return out

    def as_like(self, values: np.ndarray, like: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=like.dtype)


class _TorchOps(ArrayOps[torch.Tensor]):
    # ``torch.linalg`` functions are untyped in torch's stubs; the annotated locals record
    # that they return tensors.
    def stack(self, parts: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.stack(list(parts), axis)

    def concat(self, parts: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(list(parts), axis)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.norm(x, dim=-1)
        return out

    def det(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.det(x)
        return out

    def inv(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.inv(x)
        return out

    def swap_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)

    def zeros_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)

    def log(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    def cos(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)

    def sin(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def cosh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cosh(x)

    def arccos(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arccos(x)

    def arctanh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atanh(x)

    def deg2rad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.deg2rad(x)

    def rad2deg(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rad2deg(x)

    def clip(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x.clamp(lo, hi)

    def maximum(self, x: torch.Tensor, floor: float) -> torch.Tensor:
        return x.clamp(min=floor)

    def as_like(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, device=like.device).to(like.dtype)


NUMPY_OPS: ArrayOps[np.ndarray] = _NumpyOps()
TORCH_OPS: ArrayOps[torch.Tensor] = _TorchOps()


def ops(x: Array) -> ArrayOps[Array]:
    """The namespace for ``x``'s array library."""
    if isinstance(x, torch.Tensor):
        return TORCH_OPS
    return NUMPY_OPS
