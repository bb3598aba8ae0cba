"""``JointModel``: one backbone and a dict ``field → FieldProcess``; flows, diffusions and CSP/DNG alike.

Training draws one time ``t ~ U(0, 1)`` per crystal (0 = prior, 1 = data), puts every generated
field on its path, runs the backbone once on the noisy state and sums the per-field losses.
Sampling (``generative.integrator``) alternates ``predict`` and ``step`` on one state, a
``CrystalBatch`` whose ``latents`` carry each field's working value (lattice code, type classes)
so nothing is re-encoded between steps; a field whose process is ``FixedField`` (the composition
in CSP) is carried through unchanged. The model knows nothing about datasets: statistics arrive as
values inside the processes. It implements ``generative.interfaces.GenerativeModel``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.generative.integrator import integrate
from crystalforge.generative.interfaces import (
    FieldOutputs,
    FieldProcess,
    SamplePlan,
    SamplerConfig,
    SampleStep,
)
from crystalforge.generative.process_base import FixedField
from crystalforge.nn.conditioning import drop_conditions, with_categories

FIELDS = ("frac_coords", "lattice", "atomic_numbers")
"""The generated fields, in the order the state is assembled."""


class JointModel(nn.Module):
    """A backbone plus one process per field.

    Args:
        backbone: maps ``(state, t)`` to ``FieldOutputs`` (see ``generative.interfaces.Backbone``).
        processes: one process for each of ``frac_coords``, ``lattice`` and ``atomic_numbers``.
        loss_weights: weight of each field's loss in the total (default 1 each).
        time_eps: training times are drawn from ``[time_eps, 1 − time_eps]``.
        time_power: training times are ``u^(1/time_power)`` with ``u`` uniform (density
            ``time_power · t^(time_power − 1)``): 1 is uniform, larger favours the data end.
        condition_dropout: for a conditioned backbone, the probability with which training hides
            all conditions of a crystal, and each one alone (``nn.conditioning.drop_conditions``).

    """

    def __init__(
        self,
        backbone: nn.Module,
        processes: Mapping[str, FieldProcess],
        *,
        loss_weights: Mapping[str, float] | None = None,
        time_eps: float = 1e-3,
        time_power: float = 1.0,
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        missing = set(FIELDS) - set(processes)
        if missing:
            raise ValueError(f"no process for field(s) {sorted(missing)} (use FixedField for a given field)")
        self.backbone = backbone
        self.processes = dict(processes)
        # the type process's working values are the backbone's own classes when both use one
        # vocabulary: predict hands them over, and the backbone skips the Z → class lookup
        types = self.processes["atomic_numbers"]
        vocabulary = getattr(types, "vocab", None)
        self._share_type_classes = vocabulary is not None and getattr(backbone, "type_vocabulary", None) == vocabulary
        self.loss_weights = {f: 1.0 for f in FIELDS} | dict(loss_weights or {})
        self.time_eps = time_eps
        if not time_power > 0:
            raise ValueError(f"time_power must be positive, got {time_power}")
        self.time_power = time_power
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        self.condition_dropout = condition_dropout

    # ---- what the model is ----------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        """``("csp",)`` when the types are kept (``FixedField``), else ``("dng",)``."""
        return ("csp",) if isinstance(self.processes["atomic_numbers"], FixedField) else ("dng",)

    @property
    def conditions(self) -> tuple[str, ...]:
        """Conditions the backbone embeds (continuous, then categorical; empty when unconditional)."""
        config = getattr(self.backbone, "config", None)
        return tuple(getattr(config, "properties", ())) + tuple(getattr(config, "categories", ()))

    def with_conditions(self, batch: CrystalBatch) -> CrystalBatch:
        """``batch`` with the categorical conditions it implies filled in (crystal system from space group)."""
        categories = tuple(getattr(getattr(self.backbone, "config", None), "categories", ()))
        return with_categories(batch, categories) if categories else batch

    @property
    def has_corrector(self) -> bool:
        """Whether any process has a corrector move (diffusion predictor–corrector sampling)."""
        return any(p.has_corrector for p in self.processes.values())

    @property
    def velocity_fields(self) -> tuple[str, ...]:
        """Fields whose prediction is a velocity and whose step is an Euler move (Heun applies to these)."""
        return tuple(f for f in FIELDS if self.processes[f].predicts_velocity)

    def default_sampler(self) -> SamplerConfig:
        """50 Euler steps for a flow; 1000 predictor–corrector levels for a diffusion."""
        return SamplerConfig(steps=1000 if self.has_corrector else 50)

    # ---- state ------------------------------------------------------------------------------
    def latent(self, state: CrystalBatch, field: str) -> Tensor:
        """The working value of ``field``: the state's latent, else encoded from the field."""
        value = state.latents.get(field)
        return self.processes[field].encode(state) if value is None else value

    def with_latents(self, state: CrystalBatch, x: Mapping[str, Tensor]) -> CrystalBatch:
        """``state`` whose fields ``x`` are set from working values (decoded, latents kept)."""
        fields = {f: self.processes[f].decode(v, state) for f, v in x.items()}
        return state.replace(**fields, latents={**state.latents, **x})

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> CrystalBatch:
        """The template with every field drawn from its prior (fixed fields copy the template)."""
        return self.with_latents(template, {f: self.processes[f].sample_prior(template, generator) for f in FIELDS})

    def noise(self, clean: CrystalBatch, t: Tensor, generator: torch.Generator | None = None) -> CrystalBatch:
        """``clean`` put on each field's path at per-crystal time ``t [B]`` (what inpainting needs)."""
        x = {
            f: self.processes[f].sample_path(self.processes[f].encode(clean), t, clean, generator=generator).x_t
            for f in FIELDS
        }
        return self.with_latents(clean, x)

    def predict(self, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The backbone's outputs for a noisy state at per-crystal time ``t`` [B]."""
        classes = state.latents.get("atomic_numbers") if self._share_type_classes else None
        if classes is not None:
            outputs: FieldOutputs = self.backbone(state, t, type_classes=classes)
            return outputs
        outputs = self.backbone(state, t)  # nn.Module calls are untyped; see ``Backbone``
        return outputs

    def step(
        self,
        state: CrystalBatch,
        outputs: FieldOutputs,
        t: Tensor,
        dt: Tensor,
        *,
        anti_annealing: float | Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> CrystalBatch:
        """Every field one sampler step from ``t`` to ``t + dt``.

        ``anti_annealing`` overrides the velocity fields' own setting: one value for every velocity
        field, or ``{field: value}`` for some of them (None keeps the processes' settings).
        """
        out = {}
        for f in FIELDS:
            process = self.processes[f]
            s = anti_annealing.get(f) if isinstance(anti_annealing, Mapping) else anti_annealing
            extra = {"anti_annealing": s} if process.predicts_velocity and s is not None else {}
            x = self.latent(state, f)
            out[f] = process.step(x, getattr(outputs, f), t, dt, state, generator=generator, **extra)
        return self.with_latents(state, out)

    def correct(
        self, state: CrystalBatch, outputs: FieldOutputs, t: Tensor, *, generator: torch.Generator | None = None
    ) -> CrystalBatch:
        """Corrector moves at fixed ``t`` (identity for processes without one)."""
        x = {
            f: self.processes[f].correct(self.latent(state, f), getattr(outputs, f), t, state, generator=generator)
            for f in FIELDS
        }
        return self.with_latents(state, x)

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """Integrate from the prior to t = 1 (see ``generative.integrator.integrate``)."""
        return integrate(self, self.with_conditions(template), plan, generator=generator)

    # ---- training ---------------------------------------------------------------------------
    def loss(self, batch: CrystalBatch, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss": weighted total, "<field>": mean per-crystal loss}`` for one data batch."""
        b = batch.num_crystals
        if self.conditions:
            batch = self.with_conditions(batch)
            batch = drop_conditions(batch, self.conditions, self.condition_dropout, generator=generator)
        u = torch.rand(b, generator=generator, device=batch.device, dtype=batch.frac_coords.dtype)
        if self.time_power != 1.0:
            u = u.pow(1.0 / self.time_power)
        t = self.time_eps + (1.0 - 2.0 * self.time_eps) * u
        paths = {
            f: self.processes[f].sample_path(self.processes[f].encode(batch), t, batch, generator=generator)
            for f in FIELDS
        }
        state = self.with_latents(batch, {f: paths[f].x_t for f in FIELDS})
        outputs = self.predict(state, t)
        out: dict[str, Tensor] = {}
        total = torch.zeros((), dtype=batch.frac_coords.dtype, device=batch.device)
        for f in FIELDS:
            per_crystal = self.processes[f].loss(getattr(outputs, f), paths[f], batch)
            out[f] = per_crystal.mean()
            total = total + self.loss_weights[f] * out[f]
        out["loss"] = total
        return out
