"""Flow-matching processes per field (time 0 = prior, 1 = data)."""

from crystalforge.generative.flow.processes import LatticeFlow, MaskedTypeFlow, TorusFlow

__all__ = ["LatticeFlow", "MaskedTypeFlow", "TorusFlow"]
