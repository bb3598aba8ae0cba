"""Embeddings shared by backbones: time, atom types, frac-difference and lattice features.

Everything here is invariant by construction where the backbones need it:

- ``frac_fourier_basis``: ``sin/cos(2πkΔf)`` of a fractional displacement and their derivative
  directions; periodic in ``Δf`` (so invariant to periodic translation and to which image an
  atom is stored in) and frame-free (rotation invariant).
- ``lattice_shape_features``: the Gram matrix ``L Lᵀ`` made dimensionless by ``V^(2/3)``, plus
  ``log(V/n)`` and ``log n``; rotation invariant, but not invariant to the choice of unit cell.
- ``TypeEmbedding``: atomic numbers (``MASK_Z`` allowed) through a ``TypeVocabulary``, or soft
  class probabilities.

Property conditioning lives in ``nn.conditioning``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from crystalforge.core.elements import MASK_Z, MAX_Z, TypeVocabulary
from crystalforge.representations.graph import fourier_features, lattice_gram_features

__all__ = [
    "TimeEmbedding",
    "TypeEmbedding",
    "frac_fourier_basis",
    "lattice_shape_features",
    "mlp",
    "sinusoidal_embedding",
]

NUM_LATTICE_FEATURES = 8
"""Width of ``lattice_shape_features``: six Gram entries, ``log(V/n)``, ``log n``."""

MIN_VOLUME_PER_ATOM = 1e-3
"""Å³; volumes per atom are clamped to this so degenerate (noisy) cells give finite features."""


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``Linear → SiLU → Linear``."""
    return deep_mlp(in_dim, hidden, out_dim, layers=1)


def deep_mlp(
    in_dim: int, hidden: int, out_dim: int, *, layers: int = 2, activation: Callable[[], nn.Module] = nn.SiLU
) -> nn.Sequential:
    """``layers`` hidden ``Linear → activation`` blocks, then a ``Linear`` to ``out_dim``."""
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), activation()]
        width = hidden
    blocks.append(nn.Linear(width, out_dim))
    return nn.Sequential(*blocks)


def sinusoidal_embedding(t: Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style embedding of times ``t [B]`` in [0, 1]: ``[B, dim]``.

    ``[sin(s t ω_i), cos(s t ω_i)]`` with ``ω_i = max_period^(−i/half)`` and ``s = scale`` (DDPM's
    convention on ``1000 t``); an odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half, 1))
    angle = scale * t[:, None] * freqs  # [B, half]
    out = torch.cat([angle.sin(), angle.cos()], dim=-1)
    if dim % 2:
        out = torch.cat([out, out.new_zeros(out.shape[0], 1)], dim=-1)
    return out


class TimeEmbedding(nn.Module):
    """``t [B] → [B, out_dim]``: sinusoidal features of width ``time_dim`` through a SiLU MLP."""

    def __init__(self, time_dim: int, out_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.net = mlp(time_dim, out_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        """Embed times ``t [B]`` (any float dtype; computed in the module's dtype)."""
        dtype = cast(nn.Linear, self.net[0]).weight.dtype  # ``mlp`` starts with a Linear
        return self.net(sinusoidal_embedding(t.to(dtype), self.time_dim))


class TypeEmbedding(nn.Module):
    """Atom-type embedding over a ``TypeVocabulary`` (class 0 = ``MASK_Z``, the absorbing state).

    ``forward(atomic_numbers)`` looks up Z (``MASK_Z`` allowed); ``forward(probs=...)`` mixes the
    class vectors with soft probabilities ``[N, K]`` (one-hot probabilities give the same result).
    """

    z_to_class: Tensor  # [MAX_Z + 1] class index of each Z (−1 outside the vocabulary); a buffer

    def __init__(self, vocabulary: TypeVocabulary, dim: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.embedding = nn.Embedding(vocabulary.size, dim)
        self.register_buffer("z_to_class", torch.from_numpy(vocabulary.class_of_z()), persistent=False)

    @property
    def num_classes(self) -> int:
        """K, the vocabulary size including the mask class."""
        return self.vocabulary.size

    def classes(self, atomic_numbers: Tensor) -> Tensor:
        """Class indices ``[N]`` of atomic numbers ``[N]``; raises ``ValueError`` for Z outside the vocabulary."""
        z = atomic_numbers.long()
        if z.numel() and (int(z.min()) < 0 or int(z.max()) > MAX_Z):
            raise ValueError(f"atomic numbers must be in {MASK_Z}..{MAX_Z}")
        cls = self.z_to_class[z]
        if bool((cls < 0).any()):
            bad = sorted(set(z[cls < 0].tolist()))
            raise ValueError(f"atomic numbers {bad[:10]} are not in the backbone's type vocabulary")
        return cls

    def forward(
        self, atomic_numbers: Tensor | None = None, *, probs: Tensor | None = None, classes: Tensor | None = None
    ) -> Tensor:
        """``[N, dim]`` from atomic numbers ``[N]``, class indices ``classes [N]`` or probabilities ``probs [N, K]``.

        ``classes`` are this vocabulary's indices, used as given (no Z lookup, no device sync): a
        caller that already holds them (a type process's working values) skips the conversion.
        """
        if classes is not None:
            return self.embedding(classes)
        if probs is not None:
            if probs.dim() != 2 or probs.shape[1] != self.num_classes:
                raise ValueError(
                    f"type probabilities must have shape (N, {self.num_classes}), got {tuple(probs.shape)}"
                )
            return probs.to(self.embedding.weight.dtype) @ self.embedding.weight
        if atomic_numbers is None:
            raise ValueError("give atomic_numbers or probs")
        return self.embedding(self.classes(atomic_numbers))


def frac_fourier_basis(frac_diff: Tensor, num_frequencies: int) -> tuple[Tensor, Tensor]:
    """Fourier features of fractional displacements ``[E, 3]`` and their derivative directions.

    Returns ``features [E, 6K]`` = ``[sin(2πkΔf_c) (k=1..K), cos(2πkΔf_c) (k=1..K)]`` per component
    ``c`` (``representations.graph.fourier_features``) and ``derivative [E, 3, 2K]`` =
    ``[cos(2πkΔf_c), −sin(2πkΔf_c)]``, i.e. ``∂/∂Δf_c`` of the features up to the factor 2πk.
    Both are periodic in ``Δf`` with period 1.
    """
    features = fourier_features(frac_diff, num_frequencies)
    sin, cos = features.view(len(frac_diff), 3, 2 * num_frequencies).split(num_frequencies, dim=-1)  # [E, 3, K]
    return features, torch.cat([cos, -sin], dim=-1)


def lattice_shape_features(lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """Rotation-invariant, scale-aware lattice descriptors ``[B, 8]``.

    ``[G_ij / V^(2/3) for i ≤ j (6), log(V/n), log n]`` with ``G = L Lᵀ``, ``V = |det L|``
    (clamped to ``MIN_VOLUME_PER_ATOM·n`` so noisy, nearly degenerate cells stay finite) and ``n``
    atoms. The Gram part is dimensionless (cell shape), ``log(V/n)`` carries the scale.
    """
    n = num_atoms.to(lattice.dtype)
    vol = torch.linalg.det(lattice).abs().clamp_min(MIN_VOLUME_PER_ATOM * n)
    gram = lattice_gram_features(lattice) / vol.pow(2.0 / 3.0)[:, None]
    return torch.cat([gram, (vol / n).log()[:, None], n.log()[:, None]], dim=-1)
