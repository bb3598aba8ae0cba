"""Typed NumPy / torch dispatch for code that accepts either array library.

``ops(x)`` returns the namespace matching ``x``'s library, typed through the constrained
``Array`` TypeVar: NumPy arrays in give NumPy arrays out, tensors give tensors. Each method is
the plain NumPy or torch call, so results are exactly those of calling the library directly.
Anything that is not a ``torch.Tensor`` takes the NumPy path (as ``np.asarray`` would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
"""A NumPy array or a torch tensor; functions typed with it return the library they were given."""


class ArrayOps(Generic[Array]):
    """The array functions shared code needs, for one library (see ``NUMPY_OPS`` / ``TORCH_OPS``)."""

    def stack(self, parts: Sequence[Array], axis: int) -> Array:
        raise NotImplementedError

    def concat(self, parts: Sequence[Array], axis: int) -> Array:
        raise NotImplementedError

    def norm(self, x: Array) -> Array:
        """Euclidean norm over the last axis."""
        raise NotImplementedError

    def det(self, x: Array) -> Array:
        raise NotImplementedError

    def inv(self, x: Array) -> Array:
        raise NotImplementedError

    def swap_last(self, x: Array) -> Array:
        """Transpose of the last two axes."""
        raise NotImplementedError

    def zeros_like(self, x: Array) -> Array:
        raise NotImplementedError

    def sqrt(self, x: Array) -> Array:
        raise NotImplementedError

    def exp(self, x: Array) -> Array:
        raise NotImplementedError

    def log(self, x: Array) -> Array:
        raise NotImplementedError

    def cos(self, x: Array) -> Array:
        raise NotImplementedError

    def sin(self, x: Array) -> Array:
        raise NotImplementedError

    def tanh(self, x: Array) -> Array:
        raise NotImplementedError

    def cosh(self, x: Array) -> Array:
        raise NotImplementedError

    def arccos(self, x: Array) -> Array:
        raise NotImplementedError

    def arctanh(self, x: Array) -> Array:
        raise NotImplementedError

    def deg2rad(self, x: Array) -> Array:
        raise NotImplementedError

    def rad2deg(self, x: Array) -> Array:
        raise NotImplementedError

    def clip(self, x: Array, lo: float, hi: float) -> Array:
        raise NotImplementedError

    def maximum(self, x: Array, floor: float) -> Array:
        """Elementwise ``max(x, floor)``."""
        raise NotImplementedError

    def as_like(self, values: Array, like: Array) -> Array:
        """``values`` converted to the dtype (and device) of ``like``."""
        raise NotImplementedError


class _NumpyOps(ArrayOps[np.ndarray]):
    # numpy's stubs type the reductions and ``linalg`` results as Any; the annotated locals
    # record what they are.
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
        return x.swapaxes(-1, -2)

    def zeros_like(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def sqrt(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    def exp(self, x: np.ndarray) -> np.ndarray:
        return np.exp(x)

    def log(self, x: np.ndarray) -> np.ndarray:
        return np.log(x)

    def cos(self, x: np.ndarray) -> np.ndarray:
        return np.cos(x)

    def sin(self, x: np.ndarray) -> np.ndarray:
        return np.sin(x)

    def tanh(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x)

    def cosh(self, x: np.ndarray) -> np.ndarray:
        return np.cosh(x)

    def arccos(self, x: np.ndarray) -> np.ndarray:
        return np.arccos(x)

    def arctanh(self, x: np.ndarray) -> np.ndarray:
        return np.arctanh(x)

    def deg2rad(self, x: np.ndarray) -> np.ndarray:
        return np.deg2rad(x)

    def rad2deg(self, x: np.ndarray) -> np.ndarray:
        return np.rad2deg(x)

    def clip(self, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.clip(x, lo, hi)

    def maximum(self, x: np.ndarray, floor: float) -> np.ndarray:
        return np.maximum(x, floor)

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
