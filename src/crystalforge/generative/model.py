"""``JointModel``: one backbone and a dict ``field → FieldProcess``; flows, diffusions and CSP/DNG alike.

Training draws one time ``t ~ U(0, 1)`` per crystal (0 = prior, 1 = data), puts every generated
field on its path, runs the backbone once on the noisy state and sums the per-field losses.
Sampling (``crystalforge.sampling``) alternates ``predict`` and ``step``; a field whose process is
``FixedField`` (the composition in CSP) is carried through unchanged. The model knows nothing about
datasets: statistics arrive as values inside the processes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from crystalforge.core.crystal import CrystalBatch
from crystalforge.generative.interfaces import FieldOutputs, FieldProcess

FIELDS = ("frac_coords", "lattice", "atomic_numbers")
"""The generated fields, in the order the state is assembled."""

State = dict[str, Tensor]
"""Working representations of the fields, keyed by field name."""


class JointModel(nn.Module):
    """A backbone plus one process per field.

    Args:
        backbone: maps ``(state, t)`` to ``FieldOutputs`` (see ``generative.interfaces.Backbone``).
        processes: one process for each of ``frac_coords``, ``lattice`` and ``atomic_numbers``.
        loss_weights: weight of each field's loss in the total (default 1 each).
        time_eps: training times are drawn from ``[time_eps, 1 − time_eps]``.

    """

    def __init__(
        self,
        backbone: nn.Module,
        processes: Mapping[str, FieldProcess],
        *,
        loss_weights: Mapping[str, float] | None = None,
        time_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        missing = set(FIELDS) - set(processes)
        if missing:
            raise ValueError(f"no process for field(s) {sorted(missing)} (use FixedField for a given field)")
        self.backbone = backbone
        self.processes = dict(processes)
        self.loss_weights = {f: 1.0 for f in FIELDS} | dict(loss_weights or {})
        self.time_eps = time_eps

    # ---- state ------------------------------------------------------------------------------
    def assemble(self, template: CrystalBatch, x: State) -> CrystalBatch:
        """The batch whose fields are the decoded working values ``x`` (other fields from the template)."""
        return template.replace(**{f: self.processes[f].decode(x[f], template) for f in FIELDS})

    def encode(self, batch: CrystalBatch) -> State:
        """Working representations of a data batch."""
        return {f: self.processes[f].encode(batch) for f in FIELDS}

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> State:
        """Prior draws for every field (fixed fields copy the template)."""
        return {f: self.processes[f].sample_prior(template, generator) for f in FIELDS}

    def predict(self, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The backbone's outputs for a noisy state at per-crystal time ``t`` [B]."""
        return self.backbone(state, t)

    @property
    def has_corrector(self) -> bool:
        """Whether any process has a corrector move (diffusion predictor–corrector sampling)."""
        return any(p.has_corrector for p in self.processes.values())

    @property
    def velocity_fields(self) -> tuple[str, ...]:
        """Fields whose prediction is a velocity and whose step is an Euler move (Heun applies to these)."""
        return tuple(f for f in FIELDS if self.processes[f].predicts_velocity)

    def step(
        self,
        x: State,
        outputs: FieldOutputs,
        t: Tensor,
        dt: Tensor,
        template: CrystalBatch,
        *,
        anti_annealing: float | Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> State:
        """Every field one sampler step from ``t`` to ``t + dt``.

        ``anti_annealing`` overrides the velocity fields' own setting: one value for every velocity
        field, or ``{field: value}`` for some of them (None keeps the processes' settings).
        """
        out = {}
        for f in FIELDS:
            process = self.processes[f]
            s = anti_annealing.get(f) if isinstance(anti_annealing, Mapping) else anti_annealing
            extra = {"anti_annealing": s} if process.predicts_velocity and s is not None else {}
            out[f] = process.step(x[f], getattr(outputs, f), t, dt, template, generator=generator, **extra)
        return out

    def correct(
        self,
        x: State,
        outputs: FieldOutputs,
        t: Tensor,
        template: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> State:
        """Corrector moves at fixed ``t`` (identity for processes without one)."""
        return {
            f: self.processes[f].correct(x[f], getattr(outputs, f), t, template, generator=generator) for f in FIELDS
        }

    # ---- training ---------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss": weighted total, "<field>": mean per-crystal loss}`` for one data batch."""
        b = batch.num_crystals
        u = torch.rand(b, generator=generator, device=batch.device, dtype=batch.frac_coords.dtype)
        t = self.time_eps + (1.0 - 2.0 * self.time_eps) * u
        x_data = self.encode(batch)
        paths = {f: self.processes[f].sample_path(x_data[f], t, batch, generator=generator) for f in FIELDS}
        state = self.assemble(batch, {f: paths[f].x_t for f in FIELDS})
        outputs = self.predict(state, t)
        out: dict[str, Tensor] = {}
        total = torch.zeros((), dtype=batch.frac_coords.dtype, device=batch.device)
        for f in FIELDS:
            per_crystal = self.processes[f].loss(getattr(outputs, f), paths[f], batch)
            out[f] = per_crystal.mean()
            total = total + self.loss_weights[f] * out[f]
        out["loss"] = total
        return out
