"""Lattice conventions: rows of ``lattice`` are the lattice vectors a, b, c in Å; angles in degrees.

Functions accept NumPy arrays or torch tensors with any leading batch shape ``[..., 3, 3]``.
``lattice_from_params`` returns the orientation with a along x and b in the xy plane (ASE's
``cellpar_to_cell`` convention). pymatgen's ``Lattice.from_parameters`` (used by the benchmark
preprocessing, as CDVAE does) puts c along z instead; both describe the same cell, so compare
lattices through ``metric_tensor`` or parameters, never raw matrices.
"""

from __future__ import annotations

import numpy as np
import torch

from crystalforge.core.array_ops import Array, ops


def _lengths_and_cosines(lattice: Array) -> tuple[Array, Array]:
    """Lengths ``[..., 3]`` (Å) and cosines of (alpha, beta, gamma) ``[..., 3]``, unclipped."""
    xp = ops(lattice)
    lengths = xp.norm(lattice)
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    la, lb, lc = lengths[..., 0], lengths[..., 1], lengths[..., 2]
    cos = xp.stack([(b * c).sum(-1) / (lb * lc), (a * c).sum(-1) / (la * lc), (a * b).sum(-1) / (la * lb)], -1)
    return lengths, cos


def lattice_to_params(lattice: Array) -> tuple[Array, Array]:
    """Lengths ``[..., 3]`` (Å) and angles ``[..., 3]`` (alpha, beta, gamma; degrees)."""
    lengths, cos = _lengths_and_cosines(lattice)
    xp = ops(lattice)
    return lengths, xp.rad2deg(xp.arccos(xp.clip(cos, -1.0, 1.0)))


def lattice_from_params(lengths: Array, angles: Array) -> Array:
    """Lattice matrix ``[..., 3, 3]`` in the standard orientation from lengths and angles.

    Raises ``ValueError`` when the angles do not describe a cell (non-positive volume).
    """
    xp = ops(lengths)
    alpha, beta, gamma = (xp.deg2rad(angles[..., i]) for i in range(3))
    ca, cb, cg = xp.cos(alpha), xp.cos(beta), xp.cos(gamma)
    sg = xp.sin(gamma)
    a, b, c = lengths[..., 0], lengths[..., 1], lengths[..., 2]
    zero = xp.zeros_like(a)
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz_sq = c**2 - cx**2 - cy**2
    if bool((cz_sq <= 0).any()):
        raise ValueError("lattice angles do not form a cell with positive volume")
    cz = xp.sqrt(cz_sq)
    rows = [
        xp.stack([a, zero, zero], -1),
        xp.stack([b * cg, b * sg, zero], -1),
        xp.stack([cx, cy, cz], -1),
    ]
    return xp.stack(rows, -2)


def volume(lattice: Array) -> Array:
    """Signed cell volume ``det(lattice)`` in Å³ (positive for a right-handed cell)."""
    return ops(lattice).det(lattice)


def metric_tensor(lattice: Array) -> Array:
    """Gram matrix ``L Lᵀ`` ``[..., 3, 3]``: invariant under rotations of the Cartesian frame."""
    gram: Array = lattice @ ops(lattice).swap_last(lattice)  # numpy's stubs give Any for ``@``
    return gram


def reciprocal(lattice: Array) -> Array:
    """Reciprocal lattice without the 2π factor: rows b_i with a_i · b_j = δ_ij."""
    xp = ops(lattice)
    return xp.swap_last(xp.inv(lattice))


def plane_spacings(lattice: Array) -> Array:
    """Distances between adjacent lattice planes ``[..., 3]``: 1 / |b_i| (Å)."""
    norms = ops(lattice).norm(reciprocal(lattice))
    return 1.0 / norms


def lll_reduction(lattice: np.ndarray, *, delta: float = 0.75, max_steps: int = 1000) -> np.ndarray | None:
    """Integer ``M [3, 3]`` (det ±1) with ``M @ lattice`` LLL-reduced (rows are basis vectors); None on failure.

    The reduced basis describes the same lattice with short, nearly orthogonal vectors, so far
    fewer periodic images are needed to find close pairs in a skewed cell.
    """
    basis = np.array(lattice, dtype=np.float64)  # [3, 3]
    m = np.eye(3, dtype=np.int64)
    k = 1
    for _ in range(max_steps):
        if k >= 3:
            break
        ortho = _gram_schmidt(basis)
        for j in range(k - 1, -1, -1):  # size reduction of b_k
            q = round(float(basis[k] @ ortho[j]) / float(ortho[j] @ ortho[j]))
            if q:
                basis[k] -= q * basis[j]
                m[k] -= q * m[j]
        ortho = _gram_schmidt(basis)
        prev = float(ortho[k - 1] @ ortho[k - 1])
        mu = float(basis[k] @ ortho[k - 1]) / prev
        if float(ortho[k] @ ortho[k]) >= (delta - mu * mu) * prev:
            k += 1
        else:  # Lovász condition fails: swap and step back
            basis[[k - 1, k]] = basis[[k, k - 1]]
            m[[k - 1, k]] = m[[k, k - 1]]
            k = max(k - 1, 1)
    if k < 3 or not np.isfinite(basis).all() or abs(round(float(np.linalg.det(m.astype(np.float64))))) != 1:
        return None
    return m


def _gram_schmidt(basis: np.ndarray) -> np.ndarray:
    """Gram-Schmidt orthogonalisation of the rows ``[3, 3]`` (not normalised)."""
    ortho = np.array(basis, dtype=np.float64)
    for i in range(1, 3):
        for j in range(i):
            ortho[i] -= (basis[i] @ ortho[j]) / (ortho[j] @ ortho[j]) * ortho[j]
    return ortho


# ---- rotation-free lattice code -------------------------------------------------------------
LATTICE_CODE_DIM = 6
"""Length of the lattice code: three log-lengths and three angle codes."""

MIN_RELATIVE_HEIGHT = 1e-4
"""``code_to_lattice`` never builds a cell flatter than ``c_z ≥ MIN_RELATIVE_HEIGHT · c``."""

_MAX_ABS_COS = 1.0 - 1e-12


def lattice_to_code(lattice: Array, num_atoms: Array) -> Array:
    """Rotation-free code ``[..., 6]`` of a lattice ``[..., 3, 3]`` holding ``num_atoms [...]`` atoms.

    ``code = (ln(a/s), ln(b/s), ln(c/s), φ(α), φ(β), φ(γ))`` with ``s = num_atoms^(1/3)`` (cell
    lengths grow like N^(1/3) at fixed density, so the first three entries are size-free) and
    ``φ(θ) = ln tan(θ/2) = −artanh(cos θ)``, a smooth increasing bijection from (0°, 180°) onto R
    with ``φ(90°) = 0``. The code forgets only the orientation (and handedness) of the cell:
    ``code_to_lattice(lattice_to_code(L, n), n)`` has the metric tensor of ``L``.
    """
    lengths, cos = _lengths_and_cosines(lattice)
    xp = ops(lattice)
    log_s = xp.log(xp.as_like(num_atoms, lengths))[..., None] / 3.0
    angle_code = -xp.arctanh(xp.clip(cos, -_MAX_ABS_COS, _MAX_ABS_COS))
    return xp.concat([xp.log(lengths) - log_s, angle_code], -1)


def code_to_lattice(code: Array, num_atoms: Array) -> Array:
    """Lattice ``[..., 3, 3]`` in the standard orientation (a along x, b in the xy plane) from a code.

    Inverse of ``lattice_to_code`` up to rotation: lengths ``s·exp(code[:3])`` and
    ``cos θ = −tanh(φ)``, ``sin θ = 1/cosh(φ)``. The result is always right-handed. Every code
    gives lengths and angles, but not every angle triple forms a cell; for those the height of
    c above the ab plane is raised to ``MIN_RELATIVE_HEIGHT · c`` (a nearly flat, valid cell), so
    a sampler never produces a non-cell. Differentiable (torch) except at that floor.
    """
    xp = ops(code)
    log_s = xp.log(xp.as_like(num_atoms, code))[..., None] / 3.0
    lengths = xp.exp(code[..., :3] + log_s)
    ang = code[..., 3:]
    cos = -xp.tanh(ang)
    sin = 1.0 / xp.cosh(ang)
    ca, cb, cg = cos[..., 0], cos[..., 1], cos[..., 2]
    sg = sin[..., 2]
    a, b, c = lengths[..., 0], lengths[..., 1], lengths[..., 2]
    zero = xp.zeros_like(a)
    ry = (ca - cb * cg) / sg  # c_y / c
    rz_sq = 1.0 - cb**2 - ry**2  # (c_z / c)²
    floor = MIN_RELATIVE_HEIGHT**2
    rz = xp.sqrt(xp.maximum(rz_sq, floor))
    rows = [
        xp.stack([a, zero, zero], -1),
        xp.stack([b * cg, b * sg, zero], -1),
        xp.stack([c * cb, c * ry, c * rz], -1),
    ]
    return xp.stack(rows, -2)


# ---- flat cells ----------------------------------------------------------------------------------
MIN_VOLUME_FRACTION = 0.5
"""Default floor of ``V / (a·b·c)`` for generated cells (``raise_flat_cells``). A Niggli-reduced cell
has at least 1/√2 ≈ 0.707 (the lowest in mp_20, carbon_24 and perov_5's training splits is 0.707),
so the floor never touches a cell shaped like the data."""


def volume_fraction(lattice: Array) -> Array:
    """``|det L| / (a·b·c)`` ``[...]``: 1 for orthogonal axes, 0 for a flat cell (NaN without lengths)."""
    lengths = ops(lattice).norm(lattice)
    fraction: Array = abs(volume(lattice)) / (lengths[..., 0] * lengths[..., 1] * lengths[..., 2])
    return fraction


def raise_flat_cells(lattice: torch.Tensor, min_fraction: float = MIN_VOLUME_FRACTION) -> torch.Tensor:
    """``lattice [B, 3, 3]`` with every cell flatter than ``min_fraction`` opened up to it.

    A cell with ``V / (a·b·c) < min_fraction`` keeps its lengths and has its three angle cosines
    scaled by the largest common factor in [0, 1] (bisection to 2⁻⁴⁰; factor 0 makes the axes
    orthogonal) at which the fraction reaches the floor plus 1e-6 relative (so it stays above in
    float32); it is rebuilt in the standard orientation (mirrored when it was left-handed), so
    fractional coordinates keep their meaning and the crystal its handedness. Every other cell,
    and one with NaN or zero lengths, is returned bit for bit (``lattice`` itself, the same
    object, when no cell is flat).
    """
    fraction = volume_fraction(lattice)
    flat = fraction < min_fraction  # NaN compares False: left to the caller's checks
    if not bool(flat.any()):
        return lattice
    lengths, cos = _lengths_and_cosines(lattice[flat].double())
    target = (min_fraction * (1.0 + 1e-6)) ** 2  # a hair above: the cell stays above the floor in float32

    def gram_fraction(c: torch.Tensor) -> torch.Tensor:  # (V / abc)² of lengths with cosines c
        return 1.0 - (c**2).sum(-1) + 2.0 * c.prod(-1)

    lo = torch.zeros_like(cos[..., 0])
    hi = torch.ones_like(lo)
    for _ in range(40):  # invariant: lo reaches the floor, hi does not
        mid = (lo + hi) / 2
        ok = gram_fraction(mid[..., None] * cos) >= target
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    # rebuilt through the lattice code (lengths with N = 1, angle codes φ = −artanh(cos θ))
    code = torch.cat([lengths.log(), -torch.atanh(lo[..., None] * cos)], -1)
    opened = code_to_lattice(code, torch.ones_like(lo))
    left = volume(lattice[flat].double()) < 0  # keep a left-handed cell left-handed (a mirror keeps the metric)
    opened[left] = opened[left] * torch.tensor([-1.0, 1.0, 1.0], dtype=opened.dtype)
    out = lattice.clone()
    out[flat] = opened.to(lattice.dtype)
    return out
