"""Diffusion processes per field, in the DiffCSP / MatterGen line.

``WrappedNormalDiffusion`` (frac coords, VE on the torus), ``LatticeDDPM`` (lattice code,
ε-prediction) and ``AbsorbingD3PM`` (atom types, absorbing state).

Time runs from 0 (prior/noise) to 1 (data) as for the flows; internally each process uses the
diffusion time ``τ = 1 − t`` (τ = 0 data, τ = 1 noise), so ``step(x, prediction, t, dt)`` moves
from diffusion time ``τ`` to ``τ − dt``. Working representations, ``encode``/``decode``, per-crystal
losses and generator seeding follow ``generative.flow.processes`` (whose shared helpers these
classes reuse). Equations, defaults and differences from DiffCSP/MatterGen are in
``docs/models.md`` ("Generative processes per field").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import TypeVocabulary
from crystalforge.core.periodic import wrap_frac
from crystalforge.core.segment import segment_count
from crystalforge.generative.interfaces import PathSample
from crystalforge.generative.process_base import (
    LatticeCodeProcessBase,
    TorusProcessBase,
    TypeProcessBase,
    atom_values,
    crystal_values,
)
from crystalforge.geometry.wrapped_normal import (
    DEFAULT_NUM_IMAGES,
    ScoreVarianceTable,
    sample_wrapped_normal,
    wrapped_normal_score,
)

_TIME_EPS = 1e-9


# ---- fractional coordinates ----------------------------------------------------------------------
class WrappedNormalDiffusion(TorusProcessBase):
    """Variance-exploding wrapped-normal diffusion of fractional coordinates (DiffCSP, MatterGen).

    Noise level ``σ(t) = σ_min·(σ_max/σ_min)^(1 − t)`` (geometric; σ_max at the prior end, σ_min
    at the data end). Path: ``x_t = wrap(x_data + σ ε)``. Target: the wrapped-normal score
    ``∇ log p_σ(x_t | x_data)``, divided by ``sqrt(λ(σ))`` with ``λ(σ) = E[score²]`` when
    ``parametrization="normalized_score"`` (DiffCSP's target, unit variance at every σ; the
    default) or raw when ``"score"``. ``λ`` is tabulated by quadrature (``ScoreVarianceTable``).

    Prior: uniform on the torus (the σ → ∞ limit; WN(σ_max = 0.5) is uniform to 1.5%).
    Sampling is predictor–corrector. ``step`` is the predictor from ``σ = σ(t)`` to
    ``σ' = σ(t + dt)`` (``σ' = 0`` on the last step, which is then noise-free), with score ``s``:

    * ``"ancestral"`` (default, DiffCSP's): ``x + (σ² − σ'²)s + sqrt(σ'²(σ² − σ'²)/σ²)·z``
    * ``"reverse_sde"`` (Euler–Maruyama of the reverse VE SDE): ``x + (σ² − σ'²)s + sqrt(σ² − σ'²)·z``

    ``correct`` is one Langevin move at fixed σ, ``x + ε s + sqrt(2ε)·z`` with
    ``ε = γ·(σ/σ_min)²`` (DiffCSP's step rule; ``γ = corrector_step_size``, DiffCSP's ``step_lr``).
    DiffCSP runs corrector then predictor at each level, each with a fresh backbone call.
    Everything is wrapped to [0, 1).
    """

    has_corrector = True

    def __init__(
        self,
        *,
        sigma_min: float = 0.005,
        sigma_max: float = 0.5,
        parametrization: Literal["normalized_score", "score"] = "normalized_score",
        predictor: Literal["ancestral", "reverse_sde"] = "ancestral",
        corrector_step_size: float = 1e-5,
        num_images: int = DEFAULT_NUM_IMAGES,
    ) -> None:
        if parametrization not in ("normalized_score", "score"):
            raise ValueError(f"unknown parametrization {parametrization!r}")
        if predictor not in ("ancestral", "reverse_sde"):
            raise ValueError(f"unknown predictor {predictor!r}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.parametrization = parametrization
        self.predictor = predictor
        self.corrector_step_size = corrector_step_size
        self.num_images = num_images
        self.score_variance = ScoreVarianceTable(sigma_min, sigma_max, num_images=num_images)

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level at time ``t`` (any shape): ``σ_min·(σ_max/σ_min)^(1 − t)``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def _atom_sigma(self, t: Tensor | float, batch: CrystalBatch, dtype: torch.dtype) -> Tensor:
        return self.sigma(atom_values(t, batch, dtype=dtype))[:, None]

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t = wrap(x_data + σ(t) ε)`` and the (normalised) score of the noising kernel."""
        sigma = self._atom_sigma(t, batch, x_data.dtype)
        x_t = sample_wrapped_normal(x_data, sigma, generator=generator)
        score = wrapped_normal_score(x_t, x_data, sigma, num_images=self.num_images)
        if self.parametrization == "normalized_score":
            score = score / self.score_variance(sigma).sqrt()
        return PathSample(x_t=x_t, target=score)

    def score(self, prediction: Tensor, t: Tensor | float, batch: CrystalBatch) -> Tensor:
        """The score ``∇ log p_t(x)`` ``[N, 3]`` a backbone output stands for."""
        if self.parametrization == "score":
            return prediction
        sigma = self._atom_sigma(t, batch, prediction.dtype)
        return prediction * self.score_variance(sigma).sqrt()

    def prediction_from_score(self, score: Tensor, t: Tensor | float, batch: CrystalBatch) -> Tensor:
        """Inverse of ``score``: the backbone output that stands for ``score``."""
        if self.parametrization == "score":
            return score
        sigma = self._atom_sigma(t, batch, score.dtype)
        return score / self.score_variance(sigma).sqrt()

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Predictor move from ``σ(t)`` to ``σ(t + dt)`` (to 0 when ``t + dt`` reaches 1)."""
        tt = atom_values(t, batch, dtype=x_t.dtype)[:, None]
        t_next = tt + atom_values(dt, batch, dtype=x_t.dtype)[:, None]
        sigma = self.sigma(tt)
        sigma_next = torch.where(t_next >= 1.0 - _TIME_EPS, torch.zeros_like(sigma), self.sigma(t_next.clamp(max=1)))
        var_drop = sigma**2 - sigma_next**2
        x = x_t + var_drop * self.score(prediction, t, batch)
        if self.predictor == "ancestral":
            noise_var = sigma_next**2 * var_drop / sigma**2
        else:
            noise_var = torch.where(sigma_next > 0, var_drop, torch.zeros_like(var_drop))
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return wrap_frac(x + noise_var.clamp(min=0).sqrt() * z)

    def correct(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        batch: CrystalBatch,
        *,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One Langevin move at ``σ(t)``: ``wrap(x + ε s + sqrt(2ε) z)``, ``ε = γ (σ/σ_min)²``."""
        gamma = self.corrector_step_size if step_size is None else step_size
        sigma = self._atom_sigma(t, batch, x_t.dtype)
        eps = gamma * (sigma / self.sigma_min) ** 2
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return wrap_frac(x_t + eps * self.score(prediction, t, batch) + (2.0 * eps).sqrt() * z)


# ---- lattice -------------------------------------------------------------------------------------
class LatticeDDPM(LatticeCodeProcessBase):
    """Variance-preserving DDPM on the standardised 6-d lattice code, ε-prediction, ancestral sampling.

    ``x_t = sqrt(ᾱ) x_data + sqrt(1 − ᾱ) ε`` with ``ᾱ = ᾱ(τ)``, ``τ = 1 − t``; target ``ε``.
    Schedules: ``"cosine"`` (default, Nichol & Dhariwal 2021, as DiffCSP's lattice):
    ``ᾱ(τ) = cos²(π/2·(τ + s)/(1 + s)) / cos²(π/2·s/(1 + s))``, ``s = 0.008``, floored at
    ``min_alpha_bar``; ``"linear"`` (continuous-time DDPM linear β, Song et al. 2021):
    ``ᾱ(τ) = exp(−β_min τ − ½(β_max − β_min) τ²)``.

    Ancestral step from ``τ`` to ``τ' = τ − dt`` with ``α = ᾱ(τ)/ᾱ(τ')``, ``β = 1 − α``: the DDPM
    posterior ``q(x_τ' | x_τ, x̂_data)`` at ``x̂_data = clip((x − sqrt(1 − ᾱ(τ)) ε̂)/sqrt(ᾱ(τ)))``,
    ``x' = sqrt(ᾱ(τ'))β/(1 − ᾱ(τ))·x̂_data + sqrt(α)(1 − ᾱ(τ'))/(1 − ᾱ(τ))·x + sqrt(β(1 − ᾱ(τ'))/(1 − ᾱ(τ)))·z``
    (no noise on the last step, which returns ``x̂_data``). ``clip_denoised`` (default 10, i.e. ten
    dataset standard deviations; None to disable) bounds ``x̂_data`` as DDPM's ``clip_denoised``
    does for images: with few, large steps an imperfect ``ε̂`` is amplified by ``1/sqrt(ᾱ)`` and
    could otherwise overflow the lattice lengths (DiffCSP does not clip). With ``data_margin`` (default
    0.5) and statistics that carry the code's range over the training data (models trained since
    ``DatasetStats.lattice_code_min`` exists), ``x̂_data`` is also kept per entry within that range
    widened by ``data_margin`` standard deviations, as DDPM keeps images in their pixel range: ten
    standard deviations let all three lengths shrink together to a collapsed cell (mp_20: 0.006 Å³
    per atom even after the flat-cell floor). The range bounds each length (per atom) from below,
    not the angles' joint shape: a flat cell is still possible and is left to the integrator's
    final flat-cell floor (``SamplerConfig.min_volume_fraction``, V/(a·b·c) >= 0.5); with both, an
    mp_20 cell keeps at least 0.5·exp(Σ lower length bounds) = 0.78 Å³ per atom (both printed by
    ``scripts/add_code_range.py``). DiffCSP diffuses the lattice matrix itself; we diffuse the
    rotation-free code under the same kind of backbone head, so the
    sample is a valid right-handed cell by construction and no rotation is learned.
    """

    def __init__(
        self,
        stats: DatasetStats | None = None,
        *,
        schedule: Literal["cosine", "linear"] = "cosine",
        cosine_offset: float = 0.008,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        min_alpha_bar: float = 1e-5,
        clip_denoised: float | None = 10.0,
        data_margin: float | None = 0.5,
        min_std: float = 1e-3,
    ) -> None:
        if schedule not in ("cosine", "linear"):
            raise ValueError(f"unknown schedule {schedule!r}")
        super().__init__(stats, min_std)
        self.schedule = schedule
        self.cosine_offset = cosine_offset
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.min_alpha_bar = min_alpha_bar
        self.clip_denoised = clip_denoised
        if data_margin is not None and not data_margin >= 0:
            raise ValueError(f"data_margin must be >= 0 or None, got {data_margin}")
        self.data_margin = data_margin

    def alpha_bar(self, t: Tensor) -> Tensor:
        """``ᾱ`` at time ``t`` (``t = 1`` data: 1; ``t = 0`` prior: ≈ 0)."""
        tau = (1.0 - t).clamp(0.0, 1.0)
        if self.schedule == "linear":
            return torch.exp(-self.beta_min * tau - 0.5 * (self.beta_max - self.beta_min) * tau**2)
        s = self.cosine_offset
        f0 = math.cos(0.5 * math.pi * s / (1.0 + s)) ** 2
        return (torch.cos(0.5 * math.pi * (tau + s) / (1.0 + s)) ** 2 / f0).clamp(self.min_alpha_bar, 1.0)

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t = sqrt(ᾱ) x_data + sqrt(1 − ᾱ) ε`` ``[B, 6]``; target ``ε``."""
        a = self.alpha_bar(crystal_values(t, batch, dtype=x_data.dtype))[:, None]
        eps = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype, device=x_data.device)
        return PathSample(x_t=a.sqrt() * x_data + (1.0 - a).sqrt() * eps, target=eps)

    def data_from_noise(self, x_t: Tensor, eps: Tensor, t: Tensor | float, batch: CrystalBatch) -> Tensor:
        """``x̂_data = (x_t − sqrt(1 − ᾱ) ε) / sqrt(ᾱ)``."""
        a = self.alpha_bar(crystal_values(t, batch, dtype=x_t.dtype))[:, None]
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    def noise_from_data(self, x_t: Tensor, x_data: Tensor, t: Tensor | float, batch: CrystalBatch) -> Tensor:
        """``ε = (x_t − sqrt(ᾱ) x_data) / sqrt(1 − ᾱ)`` (inverse of ``data_from_noise``)."""
        a = self.alpha_bar(crystal_values(t, batch, dtype=x_t.dtype))[:, None]
        return (x_t - a.sqrt() * x_data) / (1.0 - a).sqrt()

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ancestral step to ``t + dt`` from the predicted noise ``ε̂ [B, 6]``."""
        tt = crystal_values(t, batch, dtype=x_t.dtype)[:, None]
        t_next = tt + crystal_values(dt, batch, dtype=x_t.dtype)[:, None]
        last = t_next >= 1.0 - _TIME_EPS
        a = self.alpha_bar(tt)
        a_next = torch.where(last, torch.ones_like(a), self.alpha_bar(t_next.clamp(max=1)))
        alpha = (a / a_next).clamp(max=1.0)
        beta = 1.0 - alpha
        x_data = self.data_from_noise(x_t, prediction, t, batch)
        if self.clip_denoised is not None:
            x_data = x_data.clamp(-self.clip_denoised, self.clip_denoised)
        bounds = None if self.data_margin is None else self.standardizer.bounds(x_data, self.data_margin)
        if bounds is not None:
            x_data = torch.maximum(torch.minimum(x_data, bounds[1]), bounds[0])
        mean = a_next.sqrt() * beta / (1.0 - a) * x_data + alpha.sqrt() * (1.0 - a_next) / (1.0 - a) * x_t
        var = (beta * (1.0 - a_next) / (1.0 - a)).clamp(min=0)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return mean + var.sqrt() * z


# ---- atom types ----------------------------------------------------------------------------------
class AbsorbingD3PM(TypeProcessBase):
    """Absorbing-state D3PM over atom types (Austin et al. 2021; MatterGen's type diffusion).

    Forward: each atom is masked independently with probability ``m(τ)``, ``τ = 1 − t``:
    ``"linear"`` ``m = τ`` (Austin et al.'s ``β_k = 1/(T − k + 1)`` absorbing schedule in the
    continuous limit, MatterGen's default) or ``"cosine"`` ``m = 1 − cos(πτ/2)``. The backbone
    predicts logits of the clean type ``x̂_data`` (mask logit ignored).

    Loss per atom: ``1[masked]·(m'(τ)/m(τ) + λ)·CE(x̂_data, x_data)``, averaged over the crystal's
    atoms. ``m'/m`` is the continuous-time limit of D3PM's variational bound for an absorbing
    process with x̂_data parametrisation (for a masked atom the KL between the true and the model
    posterior is ``(m(τ) − m(τ'))/m(τ)·CE``); ``λ = ce_weight`` is the auxiliary cross-entropy of
    Austin et al.'s hybrid loss (MatterGen's ``d3pm_hybrid_lambda``). ``τ`` is floored at
    ``min_time`` to bound ``m'/m``.

    Reverse step ``τ → τ' = τ − dt`` is the posterior ``p(x_τ' | x_τ) = Σ q(x_τ' | x_τ, x̂) p(x̂)``:
    a masked atom becomes ``k`` with probability ``(m(τ) − m(τ'))/m(τ)·p̂(k)``, else stays masked;
    unmasked atoms stay. At ``τ' = 0`` every atom is revealed. With the linear schedule this is
    exactly ``MaskedTypeFlow``'s sampler (the two models differ in the loss weighting).
    """

    def __init__(
        self,
        vocab: TypeVocabulary,
        *,
        schedule: Literal["linear", "cosine"] = "linear",
        ce_weight: float = 0.01,
        temperature: float = 1.0,
        min_time: float = 1e-3,
    ) -> None:
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule {schedule!r}")
        super().__init__(vocab, temperature)
        self.schedule = schedule
        self.ce_weight = ce_weight
        self.min_time = min_time

    def mask_probability(self, t: Tensor) -> Tensor:
        """``m`` at time ``t``: 1 at the prior end, 0 at the data end."""
        tau = (1.0 - t).clamp(0.0, 1.0)
        if self.schedule == "linear":
            return tau
        return 1.0 - torch.cos(0.5 * math.pi * tau)

    def _vb_weight(self, t: Tensor) -> Tensor:
        tau = (1.0 - t).clamp(min=self.min_time, max=1.0)
        if self.schedule == "linear":
            return 1.0 / tau
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * tau) / (1.0 - torch.cos(0.5 * math.pi * tau))

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Mask atoms of ``x_data [N]`` with probability ``m(τ)``; ``weight`` is the per-atom loss weight."""
        tt = atom_values(t, batch, dtype=batch.frac_coords.dtype)
        weight = self._vb_weight(tt) + self.ce_weight
        return self._masked_path(x_data, 1.0 - self.mask_probability(tt), weight, generator)

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal mean over atoms of ``1[masked]·(m'/m + λ)·CE`` ``[B]``."""
        total = self._weighted_cross_entropy(prediction, path, batch)
        return total / segment_count(batch.crystal_idx, batch.num_crystals).clamp(min=1).to(total.dtype)

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Reveal masked atoms with probability ``(m(τ) − m(τ'))/m(τ)`` from the predicted distribution."""
        tt = atom_values(t, batch, dtype=torch.float64)
        t_next = tt + atom_values(dt, batch, dtype=torch.float64)
        m = self.mask_probability(tt)
        m_next = torch.where(t_next >= 1.0 - _TIME_EPS, torch.zeros_like(m), self.mask_probability(t_next))
        prob = torch.where(m > 0, (m - m_next) / m.clamp(min=_TIME_EPS), torch.ones_like(m))
        return self._reveal(x_t, prediction, prob, temperature, generator)
