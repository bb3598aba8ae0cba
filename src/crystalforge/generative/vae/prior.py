"""Con-CDVAE's second-stage prior: a small DDPM over the latent ``z`` given target properties.

Con-CDVAE (Ye et al. 2024) samples ``z`` for a property target from a learned prior instead of
``N(0, I)``. Here it is an ε-prediction DDPM (Ho et al. 2020) with an MLP denoiser over
``[z_k, time features, standardised properties · visible, visible]`` and a cosine schedule
(Nichol & Dhariwal 2021) of ``steps`` levels. It trains in the model's own ``loss`` on the detached
posterior means ``μ`` (so one optimiser and one trainer train everything, and the prior's loss never
moves the encoder), with the same condition dropout as the rest of the model: a hidden or missing
property is a zero value with its visibility flag off, so the prior also learns the unconditional
latent distribution and any subset of the properties can be given when sampling.

Sampling is ancestral: ``z_K ~ N(0, I)``, then the predicted clean latent
``ẑ_0 = (z_k − √(1 − ᾱ_k)·ε̂)/√ᾱ_k`` is clipped to ``[−clip, clip]`` (posterior means live within a
few units of 0 under the KL term; the clip keeps an undertrained denoiser from blowing up the last,
large-β levels) and ``z_{k−1} = (√ᾱ_{k−1}β_k·ẑ_0 + √α_k(1 − ᾱ_{k−1})·z_k)/(1 − ᾱ_k) + √β̃_k·ξ`` with
``β̃_k = β_k(1 − ᾱ_{k−1})/(1 − ᾱ_k)``; the last level returns ``ẑ_0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.nn.conditioning import Conditioner
from crystalforge.nn.embeddings import deep_mlp, sinusoidal_embedding

__all__ = ["LatentDDPM", "cosine_betas", "property_inputs"]

TIME_DIM = 32


def cosine_betas(steps: int, *, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """``β_k`` ``[steps]`` (float64) of the cosine schedule ``ᾱ(s) = cos²((s + o)/(1 + o)·π/2)``."""
    s = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def property_inputs(
    batch: CrystalBatch, properties: Sequence[str], moments: Mapping[str, Sequence[float]], dtype: torch.dtype
) -> Tensor:
    """``[B, 2P]``: standardised values (0 where hidden or missing), then visibility flags (1 = shown)."""
    values, shown = [], []
    for name in properties:
        visible, value = Conditioner.visible(batch, name)  # the decoder's reading of condition_mask and NaN
        mean, std = (float(v) for v in moments.get(name, (0.0, 1.0)))
        standard = (value.to(dtype) - mean) / std
        values.append(torch.where(visible, standard, torch.zeros_like(standard)))
        shown.append(visible.to(dtype))
    if not properties:
        return torch.zeros(batch.num_crystals, 0, dtype=dtype, device=batch.device)
    return torch.stack(values + shown, dim=-1)


class LatentDDPM(nn.Module):
    """ε-prediction DDPM over ``z [B, d]`` conditioned on properties (see the module docstring).

    Args:
        latent_dim: ``d``.
        properties: the condition names (the model's ``conditions``).
        moments: ``{name: (mean, std)}`` standardising each property.
        hidden: width of the denoiser MLP.
        layers: hidden layers of the denoiser MLP.
        steps: number of diffusion levels ``K``.
        clip: bound on every entry of the predicted clean latent while sampling.

    """

    betas: Tensor
    alpha_bar: Tensor

    def __init__(
        self,
        latent_dim: int,
        properties: Sequence[str],
        moments: Mapping[str, Sequence[float]],
        *,
        hidden: int = 256,
        layers: int = 3,
        steps: int = 100,
        clip: float = 10.0,
    ) -> None:
        super().__init__()
        if steps < 2:
            raise ValueError(f"the latent prior needs at least 2 diffusion steps, got {steps}")
        self.latent_dim = latent_dim
        self.properties = tuple(properties)
        self.moments = {p: tuple(float(v) for v in moments.get(p, (0.0, 1.0))) for p in self.properties}
        self.steps = steps
        self.clip = clip
        self.denoiser = deep_mlp(latent_dim + TIME_DIM + 2 * len(self.properties), hidden, latent_dim, layers=layers)
        betas = cosine_betas(steps)
        # derived from ``steps``: not checkpointed (the weight average must not blend them either)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", torch.cumprod(1.0 - betas, 0).float(), persistent=False)

    def _dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def _epsilon(self, z: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        """Predicted noise ``[B, d]`` at integer levels ``level [B]`` (0-based)."""
        t = (level.to(z.dtype) + 1.0) / self.steps
        out: Tensor = self.denoiser(torch.cat([z, sinusoidal_embedding(t, TIME_DIM), cond], dim=-1))
        return out

    def condition(self, batch: CrystalBatch, dtype: torch.dtype) -> Tensor:
        """The denoiser's property inputs ``[B, 2P]`` for a batch (``condition_mask`` honoured)."""
        return property_inputs(batch, self.properties, self.moments, dtype)

    def loss(self, z_data: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> Tensor:
        """Per-crystal noise-prediction error ``[B]`` for clean latents ``z_data [B, d]`` (detach them first)."""
        dtype = self._dtype()
        z0 = z_data.to(dtype)
        b = z0.shape[0]
        level = torch.randint(0, self.steps, (b,), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, dtype=dtype, device=z0.device)
        abar = self.alpha_bar.to(dtype)[level][:, None]
        z_k = abar.sqrt() * z0 + (1.0 - abar).sqrt() * noise
        return (self._epsilon(z_k, level, self.condition(batch, dtype)) - noise).pow(2).mean(-1)

    @torch.no_grad()
    def sample(self, template: CrystalBatch, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, d]`` for the template's properties (hidden or missing ones: unconditional)."""
        dtype = self._dtype()
        device = template.device
        b = template.num_crystals
        cond = self.condition(template, dtype)
        betas, abar = self.betas.to(dtype), self.alpha_bar.to(dtype)
        z = torch.randn(b, self.latent_dim, generator=generator, dtype=dtype, device=device)
        for k in range(self.steps - 1, -1, -1):
            level = torch.full((b,), k, dtype=torch.int64, device=device)
            eps = self._epsilon(z, level, cond)
            beta, a_bar = betas[k], abar[k]
            z0 = ((z - (1.0 - a_bar).sqrt() * eps) / a_bar.sqrt()).clamp(-self.clip, self.clip)
            if k == 0:
                z = z0
                break
            a_prev = abar[k - 1]
            mean = (a_prev.sqrt() * beta * z0 + (1.0 - beta).sqrt() * (1.0 - a_prev) * z) / (1.0 - a_bar)
            var = beta * (1.0 - a_prev) / (1.0 - a_bar)
            z = mean + var.sqrt() * torch.randn(z.shape, generator=generator, dtype=dtype, device=device)
        return z
