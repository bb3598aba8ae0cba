"""CDVAE and Con-CDVAE (``cdvae`` family): encoder → latent ``z`` → heads + the flagship's decoder; latent optimisation.

See ``model`` for the architecture, ``prior`` for Con-CDVAE's latent DDPM, ``latent_opt`` for the
MAGECS-style search and ``docs/models.md`` ("CDVAE / Con-CDVAE") for usage.
"""

from crystalforge.generative.vae.config import CDVAEConfig, resolve_cdvae
from crystalforge.generative.vae.latent_opt import (
    LatentObjective,
    LatentOptResult,
    LatentSearch,
    gradient_ascent,
    optimise_latents,
    particle_swarm,
)
from crystalforge.generative.vae.model import CDVAE, build_cdvae

__all__ = [
    "CDVAE", "CDVAEConfig", "LatentObjective", "LatentOptResult", "LatentSearch", "build_cdvae", "gradient_ascent",
    "optimise_latents", "particle_swarm", "resolve_cdvae",
]  # fmt: skip
