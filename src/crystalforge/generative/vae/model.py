"""``CDVAE``: a periodic-GNN encoder, latent heads and the flagship's flow/score decoder conditioned on ``z``.

CDVAE (Xie et al. 2022) and Con-CDVAE (Ye et al. 2024), built from the flagship's parts:

- **Encoder** (``networks.CrystalEncoder``): ``PeriodicMP`` on the clean crystal → ``μ, log σ²``;
  ``z = μ + σ·ε`` (reparameterisation), KL to ``N(0, I)`` weighted by ``β`` with a linear warm-up.
- **Heads** on ``c = [z, e(props)]`` (``e`` only for Con-CDVAE): number of atoms (cross-entropy over
  1..max_atoms), composition (cross-entropy of the softmax over the vocabulary against the element
  fractions) and the standardised lattice code of ``core.lattice`` (squared error; the head also
  reads the composition, so a CSP formula gets a lattice that fits it).
- **Decoder**: a ``JointModel`` (the flagship's model class, reused) whose processes are the
  flagship's ``TorusFlow`` (``kind: flow``) or ``WrappedNormalDiffusion`` (``kind: diffusion``) for
  the coordinates and ``FixedField`` for the lattice and the types, and whose ``PeriodicMP`` backbone
  reads ``z`` (and the properties) through ``networks.LatentConditioner`` in its crystal context.
  Lattice and types come from the heads, as in CDVAE: ``FixedField`` is exactly the process that
  keeps a given field (the flagship's CSP types), so no new process is needed. Types are not
  re-denoised: they are the composition head's counts, which match the atom count by construction
  (a masked type flow could only contradict the head). The decoder's loss is the flagship's.
- **Con-CDVAE prior** (``prior.LatentDDPM``): a DDPM over ``z`` given the properties, trained on the
  detached ``μ`` in the same ``loss``; sampling draws ``z`` from it. Plain CDVAE draws ``z`` as its
  ``latent_prior`` says: ``N(0, I)``, the aggregate posterior's Gaussian, or the same DDPM unconditioned.
- **Latent property predictor** (``predict``): an MLP ``z → properties`` trained in the same loss on
  the sampled ``z``, *not* detached, as in CDVAE: its gradient shapes the latent space so that
  properties vary smoothly in it, which is what latent optimisation (``latent_opt``) climbs.

Sampling (``sample``): ``z`` from the prior; DNG crystals (every template atom ``MASK_Z``) get their
atom count (argmax of the head, so the template's count is overridden), composition (largest-remainder
rounding of ``n·softmax``) and lattice from the heads; CSP crystals (every atom typed) keep the
template's atoms and get the lattice head's cell; the decoder then integrates the coordinates with the
plan's sampler settings (steps, Heun). Steering: classifier-free guidance and other guidance wrap the
decoder's prediction; an element-set guidance (``--elements``, an object with ``elements``) restricts
the composition head instead; constraints apply to CSP crystals only (in DNG the atoms are the
heads', not the template's), and are refused otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z, TypeVocabulary
from crystalforge.generative.interfaces import SamplePlan, SamplerConfig, SampleStep, last_state
from crystalforge.generative.process_base import LatticeStandardizer
from crystalforge.generative.vae.config import CDVAEConfig, check_resolved, resolve_cdvae
from crystalforge.generative.vae.csp_latent import latents_for_compositions
from crystalforge.generative.vae.decoder import build_decoder, split_guidance
from crystalforge.generative.vae.networks import (
    LATENT_KEY,
    CrystalEncoder,
    LatentHeads,
    composition_fractions,
    crystal_name,
    gaussian_kl,
    reparameterise,
    round_composition,
    typed_atoms,
)
from crystalforge.generative.vae.prior import LatentDDPM
from crystalforge.nn.conditioning import Conditioner, drop_conditions
from crystalforge.nn.embeddings import deep_mlp

__all__ = ["CDVAE", "build_cdvae"]

Penalty = Literal["mahalanobis", "prior"]
MAX_CODE = 6.0
"""Sampled lattice codes are clipped to ±6 training standard deviations (a far-off z gives a sane cell)."""


class CDVAE(nn.Module):
    """CDVAE / Con-CDVAE (see the module docstring); a ``GenerativeModel`` for CSP and DNG."""

    tasks = ("csp", "dng")
    step: Tensor
    latent_mean: Tensor
    latent_cov: Tensor
    element_z: Tensor

    def __init__(self, config: CDVAEConfig, stats: DatasetStats | None = None) -> None:
        super().__init__()
        check_resolved(config)
        self.config = config
        self.vocab = TypeVocabulary(config.elements)
        d = config.latent_dim
        self.encoder = CrystalEncoder(config.encoder, config.elements, d)
        self.property_embedding: Conditioner | None = None
        if config.conditions:
            self.property_embedding = Conditioner(config.conditions, config.property_moments, (), config.property_dim)
            self.property_embedding.out.reset_parameters()
        cond_dim = d + (config.property_dim if config.conditions else 0)
        self.heads = LatentHeads(cond_dim, config.head_hidden, config.max_atoms, len(config.elements))
        self.decoder = build_decoder(config)
        self.prior = (
            LatentDDPM(d, config.conditions, config.property_moments, hidden=config.head_hidden,
                       layers=config.prior_layers, steps=config.prior_steps)
            if config.conditions or config.latent_prior == "ddpm" else None
        )  # fmt: skip
        self.property_head = deep_mlp(d, config.head_hidden, len(config.predict)) if config.predict else None
        self.lattice_codes = LatticeStandardizer.from_stats(stats)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_cov", torch.eye(d))
        self.register_buffer("element_z", torch.tensor(config.elements, dtype=torch.int64), persistent=False)

    # ---- what the model is ----------------------------------------------------------------
    @property
    def conditions(self) -> tuple[str, ...]:
        """Con-CDVAE's properties (empty for CDVAE)."""
        return self.config.conditions

    @property
    def backbone(self) -> nn.Module:
        """The decoder's backbone (its ``type_vocabulary`` is the elements the model can place)."""
        return self.decoder.backbone

    def default_sampler(self) -> SamplerConfig:
        """The decoder's: 50 Euler steps (flow) or 1000 predictor–corrector levels (diffusion)."""
        return self.decoder.default_sampler()

    def _dtype(self) -> torch.dtype:
        return self.latent_mean.dtype

    # ---- pieces -------------------------------------------------------------------------------
    def encode(self, batch: CrystalBatch) -> tuple[Tensor, Tensor]:
        """Posterior ``(μ, log σ²)`` ``[B, d]`` of clean crystals."""
        mu, log_var = self.encoder(batch)
        return mu, log_var

    def conditioning(self, z: Tensor, batch: CrystalBatch) -> Tensor:
        """``c = [z, e(props)]`` ``[B, d (+ property_dim)]``; ``e`` honours ``condition_mask``."""
        if self.property_embedding is None:
            return z
        return torch.cat([z, self.property_embedding(batch).to(z.dtype)], dim=-1)

    def predict_properties(self, z: Tensor) -> Tensor:
        """The latent predictor's properties ``[B, P]`` (``config.predict`` order, their own units)."""
        if self.property_head is None:
            raise ValueError("this cdvae model has no latent property predictor: train it with model.predict")
        mean, std = self._moments(self.config.predict, z)
        out: Tensor = self.property_head(z.to(self._dtype()))
        return out * std + mean

    def _moments(self, names: tuple[str, ...], like: Tensor) -> tuple[Tensor, Tensor]:
        values = [self.config.property_moments[p] for p in names]
        mean = torch.tensor([m for m, _ in values], dtype=like.dtype, device=like.device)
        std = torch.tensor([s for _, s in values], dtype=like.dtype, device=like.device)
        return mean, std

    def latent_distance(self, z: Tensor, *, kind: Penalty = "mahalanobis") -> Tensor:
        """Distance ``[B]`` of latents to the data, per latent dimension (about 1 for a typical training point).

        ``"mahalanobis"``: ``(z − m)ᵀ C⁻¹ (z − m) / d`` with the running mean ``m`` and covariance ``C``
        of the posterior over the training data (``Cov(μ) + E[σ²]``); ``"prior"``: ``‖z‖² / d``.
        """
        d = self.config.latent_dim
        if kind == "prior":
            return z.pow(2).sum(-1) / d
        if kind != "mahalanobis":
            raise ValueError(f"unknown latent distance {kind!r} (use 'mahalanobis' or 'prior')")
        cov = self.latent_cov.to(z.dtype) + 1e-4 * torch.eye(d, dtype=z.dtype, device=z.device)
        chol = torch.linalg.cholesky(cov)
        diff = (z - self.latent_mean.to(z.dtype)).T  # [d, B]
        scaled: Tensor = torch.linalg.solve_triangular(chol, diff, upper=False)
        return scaled.pow(2).sum(0) / d

    def with_latent(self, batch: CrystalBatch, z: Tensor) -> CrystalBatch:
        """``batch`` carrying ``z`` for the decoder's conditioner."""
        return batch.replace(properties={**batch.properties, LATENT_KEY: z})

    # ---- training -------------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "decoder", "num_atoms", "composition", "lattice", "kl", "beta"[, "prior"][, "property"]}``."""
        cfg = self.config
        self._check_sizes(batch)
        if cfg.conditions:
            batch = drop_conditions(batch, cfg.conditions, cfg.condition_dropout, generator=generator)
        mu, log_var = self.encode(batch)
        z = reparameterise(mu, log_var, generator=generator)
        c = self.conditioning(z, batch)
        out: dict[str, Tensor] = {}
        out["num_atoms"] = F.cross_entropy(self.heads.num_atoms_logits(c), batch.num_atoms - 1)
        fractions = composition_fractions(batch, self.vocab).to(c.dtype)
        log_probs = torch.log_softmax(self.heads.composition_logits(c), dim=-1)
        out["composition"] = -(fractions * log_probs).sum(-1).mean()
        code = self.lattice_codes.encode(batch.lattice.to(c.dtype), batch.num_atoms)
        out["lattice"] = (self.heads.lattice_code(c, fractions, batch.num_atoms) - code).pow(2).mean()
        out["decoder"] = self.decoder.loss(self.with_latent(batch, z), generator=generator)["loss"]
        if self.prior is not None:
            out["prior"] = self.prior.loss(mu.detach(), batch, generator=generator).mean()
        if self.property_head is not None:
            out["property"] = self._property_loss(z, batch)
        kl = gaussian_kl(mu, log_var).mean()
        warm = 1.0 if cfg.beta_warmup_steps == 0 else min(1.0, float(self.step) / cfg.beta_warmup_steps)
        beta = cfg.beta * warm
        total = beta * kl + sum((cfg.weight(k) * v for k, v in out.items()), torch.zeros_like(kl))
        if self.training:
            self._observe(mu.detach(), log_var.detach())
        return {"loss": total, **out, "kl": kl.detach(), "beta": kl.new_tensor(beta)}

    def _check_sizes(self, batch: CrystalBatch) -> None:
        big = batch.num_atoms > self.config.max_atoms
        if bool(big.any()):
            i = int(torch.nonzero(big)[0])
            name = crystal_name(batch, i)
            raise ValueError(
                f"{name}: has {int(batch.num_atoms[i])} atoms, more than this cdvae model's max_atoms "
                f"({self.config.max_atoms}, read from the training data)"
            )

    def _property_loss(self, z: Tensor, batch: CrystalBatch) -> Tensor:
        """Mean squared error of the standardised predictions over the labelled (non-NaN) values."""
        assert self.property_head is not None
        names = self.config.predict
        b = batch.num_crystals
        nan = torch.full((b,), float("nan"), dtype=z.dtype, device=z.device)
        target = torch.stack([batch.properties.get(p, nan).to(z.dtype) for p in names], dim=-1)
        mean, std = self._moments(names, z)
        target = (target - mean) / std
        known = torch.isfinite(target)
        predicted: Tensor = self.property_head(z)
        err = torch.where(known, predicted - torch.nan_to_num(target), torch.zeros_like(target))
        return err.pow(2).sum() / known.sum().clamp(min=1)

    @torch.no_grad()
    def _observe(self, mu: Tensor, log_var: Tensor) -> None:
        """One training step: the step counter and the running moments of the posterior."""
        self.step.add_(1)
        rate = self.config.latent_momentum
        centred = mu - mu.mean(0)
        cov = centred.T @ centred / max(mu.shape[0] - 1, 1) + torch.diag(log_var.exp().mean(0))
        self.latent_mean.lerp_(mu.mean(0).to(self.latent_mean.dtype), rate)
        self.latent_cov.lerp_(cov.to(self.latent_cov.dtype), rate)

    # ---- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latent(self, template: CrystalBatch, *, generator: torch.Generator | None = None) -> Tensor:
        """``z [B, d]`` from the latent DDPM, the aggregate posterior's Gaussian or ``N(0, I)`` (``latent_prior``).

        The DDPM reads the template's properties, if any (Con-CDVAE).
        """
        if self.prior is not None:
            return self.prior.sample(template, generator=generator)
        shape = (template.num_crystals, self.config.latent_dim)
        eps = torch.randn(shape, generator=generator, dtype=self._dtype(), device=template.device)
        if self.config.latent_prior == "posterior":
            d = self.config.latent_dim
            cov = self.latent_cov.to(torch.float64) + 1e-6 * torch.eye(d, dtype=torch.float64, device=eps.device)
            root = torch.linalg.cholesky(cov).to(eps.dtype)
            z: Tensor = self.latent_mean.to(eps.dtype) + eps @ root.T
            return z
        return eps

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """``z`` from the prior (fitted to a CSP composition: ``csp_latent``), heads, then the decoder."""
        z = latents_for_compositions(self, template, self.config.csp_latent_draws, generator=generator)
        return self.decode_steps(z, template, plan, generator=generator)

    def decode(
        self,
        z: Tensor,
        plan: SamplePlan | None = None,
        *,
        template: CrystalBatch | None = None,
        generator: torch.Generator | None = None,
    ) -> CrystalBatch:
        """The crystals of latents ``z [B, d]`` (DNG, or CSP for a typed ``template``)."""
        if template is None:
            template = self.dng_template(z.shape[0], device=z.device)
        plan = plan if plan is not None else SamplePlan(self.default_sampler())
        return last_state(self.decode_steps(z, template, plan, generator=generator))

    def dng_template(self, count: int, *, device: torch.device | str = "cpu") -> CrystalBatch:
        """A DNG template of ``count`` crystals (one masked placeholder atom each; the heads choose the size)."""
        return CrystalBatch(
            atomic_numbers=torch.full((count,), MASK_Z, dtype=torch.int64, device=device),
            frac_coords=torch.zeros(count, 3, dtype=self._dtype(), device=device),
            lattice=torch.eye(3, dtype=self._dtype(), device=device).expand(count, 3, 3).clone(),
            num_atoms=torch.ones(count, dtype=torch.int64, device=device),
        )

    def decode_steps(
        self, z: Tensor, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """The decoder's steps from the heads' starting state for ``z`` (see the module docstring)."""
        if plan.sampler.start_time > 0.0:
            raise ValueError(
                "start_time: the cdvae family decodes from its latent, not from given structures; refine its "
                "outputs with a flow model instead (crystalforge refine)"
            )
        guidance, allowed = split_guidance(plan)
        start, csp = self.assemble(z, template, allowed=allowed)
        if plan.constraints and not bool(csp.all()):
            names = ", ".join(type(c).__name__ for c in plan.constraints)
            raise ValueError(
                f"the cdvae family cannot apply constraints ({names}) in de novo generation: each crystal's atoms "
                "come from its heads, not from the template; give a composition (CSP) or use the importance route"
            )
        for step in self.decoder.sample(start, replace(plan, guidance=guidance), generator=generator):
            props = {k: v for k, v in step.state.properties.items() if k != LATENT_KEY}
            yield SampleStep(index=step.index, t=step.t, state=step.state.replace(properties=props))

    @torch.no_grad()
    def assemble(
        self, z: Tensor, template: CrystalBatch, *, allowed: frozenset[int] | None = None
    ) -> tuple[CrystalBatch, Tensor]:
        """The decoder's template for ``z [B, d]`` and which crystals are CSP ``[B]`` bool.

        DNG crystals (every atom ``MASK_Z``) get the heads' atom count and composition (restricted to
        ``allowed`` elements when given); CSP crystals (every atom typed) keep the template's atoms.
        All get the lattice head's cell (code clipped to ``±MAX_CODE``). A crystal with some atoms typed
        and others masked is refused.
        """
        b = template.num_crystals
        if z.shape != (b, self.config.latent_dim):
            raise ValueError(f"z must have shape ({b}, {self.config.latent_dim}), got {tuple(z.shape)}")
        typed = typed_atoms(template)
        csp = typed == template.num_atoms
        partial = (typed > 0) & ~csp
        if bool(partial.any()):
            i = int(torch.nonzero(partial)[0])
            name = crystal_name(template, i)
            raise ValueError(
                f"{name}: some atoms are typed and others masked; the cdvae family draws a whole composition "
                "(every atom MASK_Z) or keeps a given one (every atom typed)"
            )
        c = self.conditioning(z.to(self._dtype()), template)
        if bool(csp.all()):  # the heads' atoms are not needed
            atoms, sizes = template.atomic_numbers, template.num_atoms
        else:
            atoms, sizes = self._dng_atoms(c, allowed)
            if bool(csp.any()):
                atoms, sizes = _merge(template, atoms, sizes, csp)
        dtype, device = template.frac_coords.dtype, template.device
        start = CrystalBatch(
            atomic_numbers=atoms.to(device),
            frac_coords=torch.zeros(int(sizes.sum()), 3, dtype=dtype, device=device),
            lattice=template.lattice,
            num_atoms=sizes.to(device),
            properties=template.properties,
            condition_mask=template.condition_mask,
            material_ids=template.material_ids,
            fixed=template.fixed if bool(csp.all()) else None,
        )
        fractions = composition_fractions(start, self.vocab).to(c.dtype)
        code = self.heads.lattice_code(c, fractions, start.num_atoms).clamp(-MAX_CODE, MAX_CODE)
        lattice = self.lattice_codes.decode(code, start.num_atoms).to(dtype)
        return self.with_latent(start.replace(lattice=lattice), z.to(self._dtype())), csp

    def _dng_atoms(self, c: Tensor, allowed: frozenset[int] | None) -> tuple[Tensor, Tensor]:
        """Atomic numbers ``[N]`` (grouped by crystal, by increasing Z) and atom counts ``[B]`` from the heads."""
        sizes = self.heads.num_atoms_logits(c).argmax(-1) + 1
        probs = torch.softmax(self.heads.composition_logits(c).to(torch.float64), dim=-1)
        if allowed is not None:
            keep = torch.tensor([int(z) in allowed for z in self.config.elements], device=probs.device)
            if not bool(keep.any()):
                raise ValueError(f"none of the allowed elements {sorted(allowed)} is in this model's vocabulary")
            probs = probs * keep.to(probs.dtype)
            probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-300)
        counts = round_composition(probs, sizes)
        atoms = self.element_z.to(c.device).repeat(c.shape[0]).repeat_interleave(counts.flatten())
        return atoms, sizes


def _merge(template: CrystalBatch, dng_atoms: Tensor, dng_sizes: Tensor, csp: Tensor) -> tuple[Tensor, Tensor]:
    """Per crystal: the template's atoms where ``csp``, else the heads' atoms."""
    dng_offsets = torch.cumsum(dng_sizes, 0) - dng_sizes
    pieces, sizes = [], []
    for i in range(template.num_crystals):
        if bool(csp[i]):
            start, n = int(template.atom_offsets[i]), int(template.num_atoms[i])
            pieces.append(template.atomic_numbers[start : start + n])
        else:
            start, n = int(dng_offsets[i]), int(dng_sizes[i])
            pieces.append(dng_atoms[start : start + n].to(template.device))
        sizes.append(n)
    return torch.cat(pieces), torch.tensor(sizes, dtype=torch.int64, device=template.device)


def build_cdvae(config: CDVAEConfig, stats: DatasetStats | None) -> CDVAE:
    """The ``CDVAE`` model of ``config``; ``stats`` fill its data-derived fields and the lattice standardisation."""
    return CDVAE(resolve_cdvae(config, stats), stats)
