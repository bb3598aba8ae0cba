"""The CDVAE decoder: the flagship's ``JointModel`` with a z-conditioned backbone, and the plan's split.

``build_decoder``: ``PeriodicMP`` (coordinate head only) whose crystal context is a
``networks.LatentConditioner``, with the flagship's coordinate process (``TorusFlow`` for
``kind: flow``, ``WrappedNormalDiffusion`` for ``kind: diffusion``) and ``FixedField`` for the lattice
and the types (they come from the heads). ``split_guidance``: an element-set guidance (an object with
``elements``, such as ``sampling.composition.AllowedElements``) restricts the composition head; every
other guidance wraps the decoder's prediction.
"""

from __future__ import annotations

from crystalforge.generative.interfaces import FieldProcess, Guidance, SamplePlan
from crystalforge.generative.joint import JointModel
from crystalforge.generative.process_base import FixedField
from crystalforge.generative.vae.config import CDVAEConfig
from crystalforge.generative.vae.networks import LatentConditioner, backbone_config
from crystalforge.nn.backbones import PeriodicMP

__all__ = ["build_decoder", "split_guidance"]


def _coordinate_process(kind: str) -> FieldProcess:
    """The flagship's coordinate process for ``kind``."""
    if kind == "diffusion":
        from crystalforge.generative.diffusion import WrappedNormalDiffusion

        return WrappedNormalDiffusion()
    from crystalforge.generative.flow import TorusFlow

    return TorusFlow()


def build_decoder(config: CDVAEConfig) -> JointModel:
    """The flagship's ``JointModel``: a coordinate process, ``FixedField`` lattice and types, z-conditioned backbone."""
    backbone = PeriodicMP(backbone_config(config.decoder, config.elements, types=False, lattice=False))
    backbone.conditioner = LatentConditioner(
        config.latent_dim, config.conditions, config.property_moments, config.decoder.hidden
    )
    processes = {
        "frac_coords": _coordinate_process(config.kind),
        "lattice": FixedField("lattice"),
        "atomic_numbers": FixedField("atomic_numbers"),
    }
    return JointModel(backbone, processes, condition_dropout=0.0)  # conditions are dropped by CDVAE.loss


def split_guidance(plan: SamplePlan) -> tuple[tuple[Guidance, ...], frozenset[int] | None]:
    """The plan's guidance for the decoder, and the allowed element set of any element-set guidance."""
    keep: list[Guidance] = []
    allowed: frozenset[int] | None = None
    for g in plan.guidance:
        elements = getattr(g, "elements", None)
        if elements is not None and not getattr(g, "requires_grad", False):
            chosen = frozenset(int(z) for z in elements)
            allowed = chosen if allowed is None else allowed & chosen
        else:
            keep.append(g)
    return tuple(keep), allowed
