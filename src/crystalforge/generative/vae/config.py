"""The ``cdvae`` family's config, its data-derived fields and its builder.

One family covers CDVAE (``conditions: []``) and Con-CDVAE (``conditions: [formation_energy_per_atom,
...]``): the property embedding and the latent DDPM prior exist only when conditions are given.
The builder is ``model.build_cdvae``; the family is registered as ``cdvae`` in ``crystalforge.registry``;
see ``docs/models.md`` ("CDVAE / Con-CDVAE").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.generative.joint_config import BackboneConfig

__all__ = ["LOSS_TERMS", "CDVAEConfig", "check_resolved", "resolve_cdvae"]

LOSS_TERMS = ("decoder", "num_atoms", "composition", "lattice", "property", "prior")
"""Names accepted in ``CDVAEConfig.loss_weights``."""
DEFAULT_WEIGHTS = {"decoder": 10.0, "lattice": 10.0}
"""CDVAE's own weights (``cost_coord``, ``cost_lattice``); every other term defaults to 1."""


def _encoder() -> BackboneConfig:
    return BackboneConfig(hidden=128, layers=3, fourier_frequencies=8, time_dim=32)


def _decoder() -> BackboneConfig:
    return BackboneConfig(hidden=128, layers=4, fourier_frequencies=8, time_dim=32)


@dataclass(frozen=True)
class CDVAEConfig:
    """Options of the ``cdvae`` family (``model:`` in a training YAML).

    Attributes:
        kind: the decoder's coordinate process: ``"flow"`` (the flagship's ``TorusFlow``) or
            ``"diffusion"`` (``WrappedNormalDiffusion``, CDVAE's own choice of a score model).
        latent_dim: size of ``z``.
        encoder / decoder: sizes of the two ``PeriodicMP`` networks (the flagship's backbone).
        head_hidden: width of the heads, the property predictor and the prior's denoiser.
        conditions: Con-CDVAE's properties (empty: plain CDVAE).
        predict: properties the latent property predictor learns (latent optimisation needs one).
        property_dim: width of Con-CDVAE's property embedding concatenated to ``z`` for the heads.
        condition_dropout: training hides every condition with this probability, and each alone too.
        beta: weight of the KL term after warm-up; ``beta_warmup_steps``: linear warm-up from 0.
        loss_weights: weights of ``LOSS_TERMS`` (default 10 for decoder and lattice, as CDVAE, else 1).
        latent_prior: where sampling draws ``z`` from: ``"normal"`` (``N(0, I)``, CDVAE's own),
            ``"posterior"`` (the Gaussian of the aggregate posterior, from the running moments that
            training keeps; ex-post density estimation) or ``"ddpm"`` (a latent DDPM fitted to the
            posterior means: a two-stage VAE). With a small ``beta`` the posteriors leave holes in
            ``N(0, I)`` that decode to implausible compositions (docs/models.md measures it).
            Con-CDVAE (``conditions``) always uses the DDPM, given the properties.
        csp_latent_draws: CSP only: prior draws of ``z`` per crystal, one kept by importance resampling
            on the heads' likelihood of the given composition (``csp_latent``); 1 keeps the plain draw,
            blind to the composition, as CDVAE.
        prior_steps / prior_layers: levels and depth of the latent DDPM.
        latent_momentum: rate of the running mean/covariance of the posterior (the latent
            optimisation's distance to the data).
        elements / max_atoms / property_moments: filled from the training data (``resolve_cdvae``).

    """

    kind: Literal["flow", "diffusion"] = "flow"
    latent_dim: int = 64
    encoder: BackboneConfig = field(default_factory=_encoder)
    decoder: BackboneConfig = field(default_factory=_decoder)
    head_hidden: int = 128
    conditions: tuple[str, ...] = ()
    predict: tuple[str, ...] = ()
    property_dim: int = 32
    condition_dropout: float = 0.1
    beta: float = 0.01
    beta_warmup_steps: int = 1000
    loss_weights: dict[str, float] = field(default_factory=dict)
    latent_prior: Literal["normal", "posterior", "ddpm"] = "normal"
    csp_latent_draws: int = 1
    prior_steps: int = 100
    prior_layers: int = 3
    latent_momentum: float = 0.01
    elements: tuple[int, ...] = ()
    max_atoms: int = 0
    property_moments: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("flow", "diffusion"):
            raise ValueError(f"cdvae: kind must be 'flow' or 'diffusion', got {self.kind!r}")
        for name in ("latent_dim", "head_hidden", "property_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"cdvae: {name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.beta_warmup_steps < 0:
            raise ValueError(
                f"cdvae: beta and beta_warmup_steps must be >= 0, got {self.beta}, {self.beta_warmup_steps}"
            )
        if self.latent_prior not in ("normal", "posterior", "ddpm"):
            raise ValueError(f"cdvae: latent_prior must be 'normal', 'posterior' or 'ddpm', got {self.latent_prior!r}")
        if self.csp_latent_draws < 1:
            raise ValueError(f"cdvae: csp_latent_draws must be >= 1, got {self.csp_latent_draws}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"cdvae: condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if not 0.0 < self.latent_momentum <= 1.0:
            raise ValueError(f"cdvae: latent_momentum must be in (0, 1], got {self.latent_momentum}")
        unknown = sorted(set(self.loss_weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"cdvae: unknown loss_weights {unknown} (known: {', '.join(LOSS_TERMS)})")
        for names in (self.conditions, self.predict):
            if len(set(names)) != len(names):
                raise ValueError(f"cdvae: repeated property names in {list(names)}")

    @property
    def properties(self) -> tuple[str, ...]:
        """Every property the model reads: conditions, then the predicted ones not among them."""
        return self.conditions + tuple(p for p in self.predict if p not in self.conditions)

    def weight(self, term: str) -> float:
        """The loss weight of ``term`` (``DEFAULT_WEIGHTS``, else 1, unless set)."""
        return float(self.loss_weights.get(term, DEFAULT_WEIGHTS.get(term, 1.0)))


def _moments(config: CDVAEConfig, stats: DatasetStats | None) -> dict[str, tuple[float, float]]:
    """``(mean, std)`` of every property the model reads: the config's, else the training data's."""
    moments = {p: config.property_moments[p] for p in config.properties if p in config.property_moments}
    missing = [p for p in config.properties if p not in moments]
    if not missing:
        return moments
    known = (stats.property_moments or {}) if stats is not None else {}
    absent = [p for p in missing if p not in known]
    if absent:
        have = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"cdvae: the training data has no property {absent} to condition on or predict (it has: {have})"
        )
    for p in missing:
        mean, std, _ = known[p]
        moments[p] = (float(mean), float(std) if std > 0 else 1.0)
    return moments


def resolve_cdvae(config: CDVAEConfig, stats: DatasetStats | None) -> CDVAEConfig:
    """The config with the element vocabulary, the largest atom count and property moments from the data."""
    if stats is None:
        return config
    return replace(
        config,
        elements=config.elements or tuple(stats.elements),
        max_atoms=config.max_atoms or stats.max_atoms,
        property_moments=_moments(config, stats),
    )


def check_resolved(config: CDVAEConfig) -> None:
    """Refuse a config whose data-derived fields are still empty (no statistics were given)."""
    if not config.elements or config.max_atoms < 1:
        raise ValueError("cdvae: give elements and max_atoms in the config, or dataset statistics to read them from")
    _moments(config, None)  # every property needs its moments by now
