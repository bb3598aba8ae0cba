"""Periodicity in one place: wrapping, minimum image and frac ⇄ Cartesian maps.

Conventions: ``cart = frac @ lattice`` (rows of ``lattice`` are lattice vectors). The conversions
are pure linear maps and never wrap; wrapping is always an explicit ``wrap_frac`` call.
"""

from __future__ import annotations

import numpy as np
import torch

from crystalforge.core.array_ops import Array, ops


def wrap_frac(frac_coords: Array) -> Array:
    """Wrap fractional coordinates into [0, 1) exactly (values that round to 1.0 become 0.0)."""
    if isinstance(frac_coords, torch.Tensor):
        wrapped = torch.remainder(frac_coords, 1.0)
        return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)
    wrapped = np.mod(frac_coords, 1.0)
    return np.where(wrapped >= 1.0, 0.0, wrapped)


def pbc_diff(frac_a: Array, frac_b: Array) -> Array:
    """Fractional difference ``a − b`` mapped to [−0.5, 0.5) per component.

    This is the minimum image in fractional space; for skewed cells it is not always the shortest
    Cartesian vector (use ``min_image_cart`` for that).
    """
    diff: Array = frac_a - frac_b  # numpy's stubs give Any for arrays of unknown dtype
    if isinstance(diff, torch.Tensor):
        return diff - torch.floor(diff + 0.5)
    return diff - np.floor(diff + 0.5)


def frac_to_cart(frac_coords: Array, lattice: Array) -> Array:
    """Cartesian coordinates ``[..., 3]`` (Å) from fractional ones; ``lattice`` broadcastable ``[..., 3, 3]``."""
    cart: Array = (frac_coords[..., None, :] @ lattice)[..., 0, :]  # numpy's stubs give Any for ``@``
    return cart


def cart_to_frac(cart_coords: Array, lattice: Array) -> Array:
    """Fractional coordinates from Cartesian ones (inverse of ``frac_to_cart``; no wrapping)."""
    frac: Array = (cart_coords[..., None, :] @ ops(cart_coords).inv(lattice))[..., 0, :]
    return frac


def min_image_cart(frac_diff: Array, lattice: Array) -> tuple[Array, Array]:
    """Shortest Cartesian vector among the images of a fractional displacement.

    Searches the 27 neighbouring images of ``pbc_diff``-reduced displacements, which is exact for
    Niggli/Minkowski-reduced cells and a very good approximation otherwise. ``lattice`` is
    ``[3, 3]`` or ``[..., 3, 3]`` matching the leading dims of ``frac_diff [..., 3]``. Returns
    ``(vectors [..., 3], distances [...])``.
    """
    xp = ops(frac_diff)
    if isinstance(frac_diff, torch.Tensor):
        base = frac_diff - torch.floor(frac_diff + 0.5)
        grid = torch.tensor(IMAGE_OFFSETS, dtype=frac_diff.dtype, device=frac_diff.device)
        cand = (base[..., None, :] + grid) @ lattice
        best = xp.norm(cand).argmin(-1)
        vec = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 3))[..., 0, :]
        return vec, xp.norm(vec)
    base = frac_diff - np.floor(frac_diff + 0.5)
    cand = (base[..., None, :] + IMAGE_OFFSETS) @ lattice
    best = xp.norm(cand).argmin(-1)
    vec = np.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
    return vec, xp.norm(vec)


IMAGE_OFFSETS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=np.int64)
"""The 27 integer offsets {−1, 0, 1}³ ``[27, 3]`` (neighbouring images, or grid neighbours)."""
IMAGE_OFFSETS.setflags(write=False)
