"""MatGAN as a model family: a WGAN-GP over composition matrices, structures from a CSP model.

``encoding`` (composition ⇄ element × count matrix), ``networks`` (generator, critic), ``screening``
(SMACT charge neutrality), ``drawing`` (compositions with rejection), ``model`` (the family),
``statistics`` (MatGAN's published-style composition statistics). Registered in
``crystalforge.registry`` as ``matgan`` (docs/models.md, "MatGAN").
"""

from crystalforge.generative.gan.encoding import CompositionCodec
from crystalforge.generative.gan.model import MatGAN, MatGANConfig, build_matgan, resolve_matgan
from crystalforge.generative.gan.screening import is_charge_neutral, reduced_formula
from crystalforge.generative.gan.statistics import CompositionStatistics, composition_statistics

__all__ = [
    "CompositionCodec", "CompositionStatistics", "MatGAN", "MatGANConfig", "build_matgan", "composition_statistics",
    "is_charge_neutral", "reduced_formula", "resolve_matgan",
]  # fmt: skip
