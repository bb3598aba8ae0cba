"""Guidance: wrappers of the prediction function that steer sampling towards property targets.

``PredictorGradient`` (predictor guidance, the route of Dhariwal & Nichol's classifier guidance and
MatterGen's property guidance, here on flow velocities): at every step it adds the gradient of the
objective ``J = Σ log P(window hit)`` (``sampling.targets``) with respect to the model's working
coordinates (fractional coordinates on the torus, the lattice code) to the predicted velocities,

    v' = v + scale · clip(∇J),

the gradient clipped per crystal to norm ``max_norm`` so a steep predictor cannot throw atoms
across the cell. The predictor is either noise-aware (``time_conditioned``: trained on this
generator's noised states, it reads ``t``; the principled choice) or a clean-structure predictor,
which is then applied only from ``start`` on (late times, when the state is nearly a crystal).
For a model that generates atom types (DNG), the same objective also steers the types
(``type_scale``): the predictor is called on one-hot types, and ``∂J/∂(one-hot of element z)``
of every still-masked atom is added to the logit of ``z`` before the type process draws it, a
first-order (Taylor) estimate of how much revealing that element would raise ``J`` (the
approximation of Nisonoff et al.'s discrete guidance). Formation energies and band gaps are set
mostly by composition, so this is the part of the route that can move them.

Gradients flow through the model's own decoding (``with_latents``), so the guidance needs the
model (``for_model``), never a copy of its processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, MAX_Z, TypeVocabulary
from crystalforge.core.segment import segment_sum
from crystalforge.generative.interfaces import FieldOutputs, PredictFn
from crystalforge.sampling.composition import type_vocabulary
from crystalforge.sampling.targets import PropertyTarget, objective

__all__ = ["PredictorGradient", "PropertyPredictor"]

GUIDED_FIELDS = ("frac_coords", "lattice")


class PropertyPredictor(Protocol):
    """What guidance needs of a predictor (``predictors.PredictorEnsemble`` is one)."""

    @property
    def properties(self) -> tuple[str, ...]:
        """Predicted property names."""

    @property
    def time_conditioned(self) -> bool:
        """Whether it reads the generator's time (noise-aware)."""

    def __call__(
        self, batch: CrystalBatch, t: Tensor | None = None, *, type_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` ``[B, P]``, differentiable in the state (and in ``type_weights [N, MAX_Z + 1]``)."""


class _Model(Protocol):
    velocity_fields: tuple[str, ...]

    def latent(self, state: CrystalBatch, field: str) -> Tensor: ...

    def with_latents(self, state: CrystalBatch, x: Mapping[str, Tensor]) -> CrystalBatch: ...


class PredictorGradient:
    """Adds ``scale · ∇J`` (clipped per crystal) to the flow velocities of coordinates and lattice.

    Args:
        model: the generative model being sampled (needs ``latent``/``with_latents``).
        predictor: a ``PropertyPredictor``; noise-aware or clean (see the module docstring).
        targets: the windows to hit.
        scale: guidance strength (0 = off).
        start: first time at which the guidance acts (default 0 for a noise-aware predictor, 0.5
            for a clean one).
        max_norm: per-crystal bound on the gradient norm (coordinates and lattice together).
        type_scale: strength of the type guidance (None: ``scale``; 0: off; ignored for CSP).
        type_start: first time at which types are steered (default 0: composition is decided early).
        name: how ``run.json`` names the predictor.

    """

    requires_grad = True

    def __init__(
        self,
        model: Any,
        predictor: PropertyPredictor,
        targets: Sequence[PropertyTarget],
        *,
        scale: float = 1.0,
        start: float | None = None,
        max_norm: float = 1.0,
        type_scale: float | None = None,
        type_start: float = 0.0,
        name: str = "predictor",
    ) -> None:
        velocity = tuple(getattr(model, "velocity_fields", ()))
        missing = [f for f in GUIDED_FIELDS if f not in velocity]
        if missing:
            raise ValueError(
                f"gradient guidance adds to flow velocities; this model's {missing} are not flow fields "
                "(use importance resampling for diffusion models)"
            )
        if scale < 0 or max_norm <= 0:
            raise ValueError("scale must be >= 0 and max_norm > 0")
        unknown = [t.name for t in targets if t.name not in predictor.properties]
        if unknown:
            raise KeyError(f"the predictor has no {unknown} (it predicts: {', '.join(predictor.properties)})")
        if not targets:
            raise ValueError("gradient guidance needs at least one target")
        self.model: _Model = model
        self.predictor = predictor
        self.targets = tuple(targets)
        self.scale = float(scale)
        self.start = float(start if start is not None else (0.0 if predictor.time_conditioned else 0.5))
        self.max_norm = float(max_norm)
        self.vocab = _type_vocabulary(model)
        self.type_scale = 0.0 if self.vocab is None else float(scale if type_scale is None else type_scale)
        self.type_start = float(type_start)
        self.name = name
        self.last_objective: Tensor | None = None  # J [B] of the last call (diagnostics)

    def settings(self) -> dict[str, Any]:
        """Plain-data settings (``run.json``)."""
        return {
            "predictor": self.name, "noise_aware": self.predictor.time_conditioned,
            "targets": [str(t) for t in self.targets], "scale": self.scale, "start": self.start,
            "max_norm": self.max_norm, "type_scale": self.type_scale, "type_start": self.type_start,
        }  # fmt: skip

    def gradient(self, state: CrystalBatch, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(J [B], ∂J/∂frac latent [N, 3], ∂J/∂lattice latent [B, 6], ∂J/∂one-hot type [N, MAX_Z + 1])``."""
        frac = self.model.latent(state, "frac_coords").detach().requires_grad_(True)
        code = self.model.latent(state, "lattice").detach().requires_grad_(True)
        live = self.model.with_latents(state, {"frac_coords": frac, "lattice": code})
        dtype = next(iter(_parameters(self.predictor)), frac).dtype
        live = live.replace(frac_coords=live.frac_coords.to(dtype), lattice=live.lattice.to(dtype))
        onehot = torch.nn.functional.one_hot(state.atomic_numbers, MAX_Z + 1).to(dtype).requires_grad_(True)
        time = t.to(dtype) if self.predictor.time_conditioned else None
        mean, std = self.predictor(live, time, type_weights=onehot)
        # a crystal the predictor cannot score (NaN: a cell too thin to search) gets no push
        scored = torch.isfinite(mean).all(1) & torch.isfinite(std).all(1)
        mean = torch.where(scored[:, None], mean, torch.zeros_like(mean))
        std = torch.where(scored[:, None], std, torch.ones_like(std))
        j = torch.where(scored, objective(mean, std, self.predictor.properties, self.targets), 0.0)
        grads = torch.autograd.grad(j.sum(), [frac, code, onehot], allow_unused=True)
        leaves = (frac, code, onehot)
        grad_frac, grad_code, grad_type = (
            torch.zeros_like(x) if g is None else torch.nan_to_num(g) for g, x in zip(grads, leaves, strict=True)
        )
        j = torch.where(scored, j.detach(), torch.full_like(j, float("nan")))
        return j, grad_frac, grad_code, grad_type

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The guided outputs: velocities of coordinates and lattice moved up the objective."""
        with torch.no_grad():
            out = predict(state, t)
        active = (t >= self.start) & (self.scale > 0)
        steer_types = self.type_scale > 0 and bool(
            ((state.atomic_numbers == MASK_Z) & (t >= self.type_start)[state.crystal_idx]).any()
        )
        if not bool(active.any()) and not steer_types:
            return out
        j, grad_frac, grad_code, grad_type = self.gradient(state, t)
        self.last_objective = j
        out = self._steer_types(out, state, t, grad_type)
        with torch.no_grad():
            owner = state.crystal_idx
            norm2 = segment_sum((grad_frac**2).sum(1), owner, state.num_crystals) + (grad_code**2).sum(1)
            factor = self.scale * torch.clamp(self.max_norm / torch.sqrt(norm2 + 1e-24), max=1.0)
            factor = torch.where(active, factor, torch.zeros_like(factor)).to(grad_code.dtype)
            assert out.frac_coords is not None
            assert out.lattice is not None
            return replace(
                out,
                frac_coords=out.frac_coords + (factor[owner, None] * grad_frac).to(out.frac_coords.dtype),
                lattice=out.lattice + (factor[:, None] * grad_code).to(out.lattice.dtype),
            )

    def _steer_types(self, out: FieldOutputs, state: CrystalBatch, t: Tensor, grad_type: Tensor) -> FieldOutputs:
        """Masked atoms' type logits + ``type_scale · ∂J/∂one-hot`` (per element of the vocabulary)."""
        if self.vocab is None or self.type_scale == 0 or out.atomic_numbers is None:
            return out
        masked = (state.atomic_numbers == MASK_Z) & (t >= self.type_start)[state.crystal_idx]
        if not bool(masked.any()):
            return out
        z_of_class = torch.as_tensor(self.vocab.z_of_class(), device=grad_type.device)
        shift = grad_type[:, z_of_class] * masked[:, None].to(grad_type.dtype)  # [N, K]; the mask class gets 0
        shift[:, z_of_class == MASK_Z] = 0.0
        logits = out.atomic_numbers + self.type_scale * shift.to(out.atomic_numbers.dtype)
        return replace(out, atomic_numbers=logits)


def _type_vocabulary(model: object) -> TypeVocabulary | None:
    """The vocabulary of a model that generates types, else None (a CSP model keeps the template's)."""
    try:
        return type_vocabulary(model)
    except ValueError:
        return None


def _parameters(predictor: object) -> list[Tensor]:
    params: Callable[[], Any] | None = getattr(predictor, "parameters", None)
    return list(params()) if params is not None else []
