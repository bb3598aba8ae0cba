"""``FieldOutputs``: what a backbone predicts for a state, per generated field.

It lives with the networks that produce it; ``generative.interfaces`` uses it in the ``Backbone``
protocol and ``Guidance`` returns it, so models, guidance and backbones share one output type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class FieldOutputs:
    """What a backbone predicts for one state, per field (None when a field is not generated).

    ``frac_coords``: [N, 3] per-atom vector on the torus tangent space (velocity, score or noise,
    as the process says). ``lattice``: [B, 6] per-crystal vector in lattice-code space.
    ``atomic_numbers``: [N, K] per-atom logits over the type vocabulary.
    """

    frac_coords: Tensor | None = None
    lattice: Tensor | None = None
    atomic_numbers: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
