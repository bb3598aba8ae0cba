"""Latents that fit a given composition: CSP draws of ``z`` resampled by how well the heads read the formula.

CDVAE's prior draws ``z`` without looking at the template, so in CSP the decoder is conditioned on a
latent whose heads may describe another chemistry (only the lattice head reads the formula). With
``csp_latent_draws = M > 1`` each CSP crystal gets ``M`` prior draws, each scored by the heads'
log-likelihood of the given composition,

    log p(x | z) = n · Σ_k f_k log softmax(h_comp(c))_k + log softmax(h_num(c))_{n-1},

(``f`` the element fractions, ``n`` the atom count, ``c = [z, e(props)]``), and one is drawn with
probability ``∝ p(x | z)``: self-normalised importance resampling, so the kept ``z`` approximates a
draw from ``p(z | composition)`` (exact as ``M → ∞``), not the single best fit. DNG crystals keep
their first draw. The composition head is trained by cross-entropy against the fractions, so this
likelihood is the one the model learned.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import TypeVocabulary
from crystalforge.generative.vae.networks import LatentHeads, composition_fractions, typed_atoms

__all__ = ["composition_log_likelihood", "latents_for_compositions"]


class _LatentModel(Protocol):
    """What this module reads of a ``CDVAE`` (``model.CDVAE``, which imports this module)."""

    heads: LatentHeads
    vocab: TypeVocabulary
    latent_mean: Tensor

    def conditioning(self, z: Tensor, batch: CrystalBatch) -> Tensor: ...

    def sample_latent(self, template: CrystalBatch, *, generator: torch.Generator | None = None) -> Tensor: ...


def composition_log_likelihood(model: _LatentModel, z: Tensor, template: CrystalBatch) -> Tensor:
    """``log p(composition, n | z)`` ``[B]`` of the (fully typed) template crystals under the heads."""
    c = model.conditioning(z.to(model.latent_mean.dtype), template)
    fractions = composition_fractions(template, model.vocab).to(c.dtype)
    n = template.num_atoms.to(c.device)
    log_p = torch.log_softmax(model.heads.composition_logits(c), dim=-1)
    composition = n.to(c.dtype) * (fractions * log_p).sum(-1)
    size_logits = torch.log_softmax(model.heads.num_atoms_logits(c), dim=-1)
    index = (n - 1).clamp(0, size_logits.shape[-1] - 1)
    size = size_logits.gather(-1, index[:, None])[:, 0]
    beyond = n > size_logits.shape[-1]  # larger than any training cell: the size says nothing to choose by
    return composition + torch.where(beyond, torch.zeros_like(size), size)


@torch.no_grad()
def latents_for_compositions(
    model: _LatentModel, template: CrystalBatch, draws: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """``z [B, d]``: for each fully typed crystal one of ``draws`` prior draws resampled ``∝ p(x | z)``."""
    if draws < 1:
        raise ValueError(f"csp_latent_draws must be >= 1, got {draws}")
    first = model.sample_latent(template, generator=generator)
    csp = typed_atoms(template) == template.num_atoms
    if draws == 1 or not bool(csp.any()):
        return first
    rows = torch.nonzero(csp).flatten()
    subset = template if bool(csp.all()) else template.index_select(rows)
    candidates = [first[rows]] + [model.sample_latent(subset, generator=generator) for _ in range(draws - 1)]
    scores = torch.stack([composition_log_likelihood(model, z, subset) for z in candidates])  # [M, b]
    chosen = torch.multinomial(torch.softmax(scores, dim=0).T, 1, generator=generator).flatten()  # [b] of M
    stacked = torch.stack(candidates, dim=1)  # [b, M, d]
    out = first.clone()
    out[rows] = stacked[torch.arange(rows.numel(), device=first.device), chosen]
    return out
