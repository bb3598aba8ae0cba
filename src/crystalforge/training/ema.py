"""Exponential moving average of a model's floating-point parameters and buffers."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn


class Weighted(Protocol):
    """What the average needs of a model (every ``nn.Module`` has it)."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The trainable parameters."""

    def state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers by name."""

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> object:
        """Load weights by name."""

    def eval(self) -> object:
        """Inference mode, in place."""


M = TypeVar("M", bound=Weighted)


class EMA(Generic[M]):
    """``shadow = decay · shadow + (1 − decay) · current`` after each optimiser step.

    ``shadow`` is a copy of the model (same type) holding the average. The decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` over the first updates so that the average is not
    dominated by the random initialisation.
    """

    def __init__(self, model: M, *, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow: M = copy.deepcopy(model)
        self.shadow.eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: M) -> None:
        """Blend the model's current weights into the average."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        current = model.state_dict()
        for name, value in self.shadow.state_dict().items():
            src = current[name]
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(src.detach(), alpha=1.0 - decay)
            else:
                value.copy_(src)

    def to(self, device: torch.device | str) -> None:
        """Keep the average on ``device`` (where the trained model lives; Lightning moves only that)."""
        mover = getattr(self.shadow, "to", None)
        if callable(mover):
            mover(device)

    def own_memory(self) -> None:
        """Give the average storage of this process's own.

        Processes started by ``spawn`` (Lightning's ``ddp_spawn``) receive every tensor in shared
        memory; Lightning copies the trained module's, but the average is not a submodule, and
        processes sharing it would each apply their update to the one copy.
        """
        if any(t.is_shared() for t in self.shadow.state_dict().values()):
            self.shadow = copy.deepcopy(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        """Weights of the average and the update count."""
        return {"num_updates": self.num_updates, "decay": self.decay, "weights": self.shadow.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.shadow.load_state_dict(state["weights"])
