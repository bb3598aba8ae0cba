"""Classifier-free guidance: a conditioned model contrasted with itself unconditioned.

With the conditions the template gives (``state.properties`` with ``condition_mask``), the guided
prediction of every field is ``u + w · (c − u)``, where ``c`` is the model's prediction with the
conditions visible and ``u`` with them hidden (the learned "unconditioned" vectors the model saw
under condition dropout in training). ``w = 1`` is plain conditional sampling (one network call),
``w = 0`` unconditional, ``w > 1`` pushes further towards the condition. Type logits are mixed as
log-probabilities (``log_softmax``), so the result is the geometric mixture ``p_u^(1−w) p_c^w``.

Classifier-free guidance needs a value for each condition: a window target ``LOW..HIGH`` or
``V±T`` conditions on its centre, and one-sided targets (``<``, ``>``) are refused (use the
importance or gradient routes for those; ``targets_to_conditions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.space_groups import CATEGORIES, CRYSTAL_SYSTEMS
from crystalforge.generative.interfaces import FieldOutputs, PredictFn
from crystalforge.sampling.targets import PropertyTarget

__all__ = ["ClassifierFreeGuidance", "condition_value", "targets_to_conditions"]


def _mix(u: Tensor | None, c: Tensor | None, w: float, *, logits: bool) -> Tensor | None:
    if u is None or c is None:
        return c
    if logits:
        u, c = torch.log_softmax(u, dim=-1), torch.log_softmax(c, dim=-1)
    return u + w * (c - u)


@dataclass
class ClassifierFreeGuidance:
    """``Guidance`` mixing conditional and unconditional predictions (see the module docstring).

    Attributes:
        scale: ``w``; 1 is conditional sampling, 0 unconditional.
        conditions: the condition names to hide for the unconditional call (all given ones when empty).

    """

    scale: float = 1.0
    conditions: tuple[str, ...] = field(default=())
    requires_grad: bool = field(default=False, init=False)
    mixes_conditions: ClassVar[bool] = True  # generative.interfaces.ConditionMixing

    def __post_init__(self) -> None:
        self.conditions = tuple(self.conditions)
        if not self.scale >= 0:
            raise ValueError(f"classifier-free guidance scale must be >= 0, got {self.scale}")

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The guided outputs for ``state`` at times ``t [B]``."""
        names = [n for n in (self.conditions or tuple(state.properties)) if n in state.properties]
        conditional = predict(state, t)
        if self.scale == 1.0 or not names:
            return conditional
        hidden = {**state.condition_mask, **{n: torch.zeros_like(state.properties[n], dtype=torch.bool) for n in names}}
        unconditional = predict(state.replace(condition_mask=hidden), t)
        w = float(self.scale)
        return FieldOutputs(
            frac_coords=_mix(unconditional.frac_coords, conditional.frac_coords, w, logits=False),
            lattice=_mix(unconditional.lattice, conditional.lattice, w, logits=False),
            atomic_numbers=_mix(unconditional.atomic_numbers, conditional.atomic_numbers, w, logits=True),
            extras=dict(conditional.extras),
        )


def condition_value(name: str, given: str | float) -> float:
    """A condition's value, checked: a number, or a crystal-system name for ``crystal_system``.

    Raises:
        ValueError: for a value that is not a finite number (or a known crystal system), or a
            categorical value outside its classes.

    """
    text = str(given).strip()
    if name == "crystal_system" and text.lower() in CRYSTAL_SYSTEMS:
        return float(CRYSTAL_SYSTEMS.index(text.lower()))
    try:
        value = float(given) if isinstance(given, (int, float)) else float(text)
    except ValueError:
        hint = f" or one of {', '.join(CRYSTAL_SYSTEMS)}" if name == "crystal_system" else ""
        raise ValueError(f"condition {name}: {text!r} is not a number{hint}") from None
    if not torch.isfinite(torch.tensor(value)):
        raise ValueError(f"condition {name}: the value must be finite, got {text!r}")
    if name == "space_group" and not (value.is_integer() and 1 <= value <= 230):
        raise ValueError(f"condition space_group: {text!r} is not a space-group number 1..230")
    if name == "crystal_system" and not (value.is_integer() and 0 <= value < len(CRYSTAL_SYSTEMS)):
        raise ValueError(f"condition crystal_system: {text!r} is not one of {', '.join(CRYSTAL_SYSTEMS)}")
    return value


def targets_to_conditions(targets: Sequence[PropertyTarget], conditions: Sequence[str]) -> Mapping[str, float]:
    """The value to condition on for each target: its window's centre.

    Raises:
        ValueError: for a target the model is not conditioned on, or a one-sided target.

    """
    out: dict[str, float] = {}
    for target in targets:
        if target.name in CATEGORIES:
            raise ValueError(
                f"route 'condition': {target.name} is categorical, not a window; give it with --condition "
                f"{target.name}=VALUE (properties=) instead of --target"
            )
        if target.name not in conditions:
            known = ", ".join(conditions) or "none: it is unconditional"
            raise ValueError(
                f"route 'condition': the model is not conditioned on {target.name!r} (its conditions: {known}); "
                "use the importance or gradient route with a predictor"
            )
        if target.low is None or target.high is None:
            raise ValueError(
                f"route 'condition': {target} is one-sided and classifier-free guidance needs a value; "
                "give a window (LOW..HIGH or V±T) or use the importance or gradient route"
            )
        out[target.name] = 0.5 * (target.low + target.high)
    return out
