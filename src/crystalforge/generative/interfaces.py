"""The interfaces every generative piece plugs into.

**Models.** ``GenerativeModel`` is what training, sampling, the run folder and evaluation see of
any family (flow/diffusion ``JointModel``, VAE, GAN, autoregressive, a search baseline):
``loss(batch) -> {"loss": scalar, ...}`` and ``sample(template, plan) -> iterator of SampleStep``,
each step's ``state`` a ``CrystalBatch``. A family is registered by name (``crystalforge.registry``)
with its config type and builder; nothing else in the package names a family.

**Sampling plan.** ``SamplePlan`` = plain-data ``SamplerConfig`` (steps, Heun, corrector moves,
anti-annealing) + ``Guidance`` objects that wrap the prediction function + ``Constraint`` objects
that rewrite the state after each step. Guidance and constraints take and return ``CrystalBatch``
(``FieldOutputs`` for a guided prediction); a guidance with ``requires_grad = True`` is called with
autograd enabled, so it may differentiate through the state. A constraint gets a ``StepContext``
with the template (whose ``fixed`` atoms and ``properties`` are the user's) and the model's
``noise`` function (a clean batch put on the path at time ``t``), which inpainting needs.

**Processes.** A process-based model is a dict ``field name → FieldProcess`` plus a backbone. Field
names are those of ``CrystalBatch``: ``"frac_coords"`` (per atom, [N, 3] on the unit torus),
``"lattice"`` (per crystal; processes work on the rotation-free 6-vector ``lattice_code`` of
``core.lattice``) and ``"atomic_numbers"`` (per atom; processes work on class indices of a
``TypeVocabulary``, class 0 = mask). Working values ride on the state as ``CrystalBatch.latents``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.nn.outputs import FieldOutputs

__all__ = [
    "TASKS", "Backbone", "ConditionMixing", "Constraint", "FieldOutputs", "FieldProcess", "GenerativeModel", "Guidance",
    "PathSample",
    "PredictFn", "SamplePlan", "SampleStep", "SamplerConfig", "StepContext", "last_state", "model_dtype",
]  # fmt: skip

TASKS = ("csp", "dng")
"""``csp``: the composition is given (template types are real); ``dng``: types are generated too."""


@dataclass(frozen=True)
class PathSample:
    """A point on a training path: the noisy value at time ``t`` and the regression target."""

    x_t: Tensor
    target: Tensor
    weight: Tensor | None = None  # optional per-row loss weight (e.g. a diffusion loss weighting)


class Backbone(Protocol):
    """A network over a noisy state: reads ``state.properties``/``condition_mask`` for conditioning.

    A backbone that exposes ``type_vocabulary`` also accepts ``type_classes=`` (class indices of
    that vocabulary for ``state.atomic_numbers``); ``JointModel`` passes its type process's working
    values then, so no Z → class lookup runs per call.
    """

    def __call__(self, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """``t`` is [B] in [0, 1] (0 = prior/noise, 1 = data)."""


class FieldProcess(Protocol):
    """A noising / flow process for one field, in the field's working representation.

    Time runs from 0 (prior) to 1 (data) for every process, so one sampler loop serves flows and
    diffusions alike. ``encode``/``decode`` map between the batch field and the working
    representation (lattice → standardised code, Z → class index, ...).
    """

    field: str
    has_corrector: bool
    predicts_velocity: bool  # step is an Euler move along the prediction: Heun and anti_annealing apply

    def encode(self, batch: CrystalBatch) -> Tensor:
        """The field's working representation read from ``batch``."""

    def decode(self, x: Tensor, batch: CrystalBatch) -> Tensor:
        """The batch field value of a working representation."""

    def sample_prior(self, template: CrystalBatch, generator: torch.Generator | None = None) -> Tensor:
        """Draw the field's prior value for every crystal/atom of the template."""

    def sample_path(
        self, x_data: Tensor, t: Tensor, batch: CrystalBatch, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Draw ``x_t`` given data and per-row time, and the backbone's regression target."""

    def loss(self, prediction: Tensor, path: PathSample, batch: CrystalBatch) -> Tensor:
        """Per-crystal loss [B] of a prediction against a path sample."""

    def step(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        dt: Tensor | float,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One sampler step from ``t`` to ``t + dt``."""

    def correct(
        self,
        x_t: Tensor,
        prediction: Tensor,
        t: Tensor,
        batch: CrystalBatch,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """A corrector move at fixed ``t`` (identity unless ``has_corrector``)."""


# ---- sampling plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerConfig:
    """How to integrate (plain data, recorded in ``run.json``): steps, Heun, corrector moves, flow scaling.

    Families that do not integrate in time (a GAN, an autoregressive decoder) read only what
    applies to them (``steps`` may be ignored) and say so in their docstring.
    """

    steps: int = 50
    heun: bool = False
    corrector_steps: int = 1
    # FlowMM's velocity scale (1 + s·t) for flow fields: one value for all, or {field: s};
    # None keeps the processes' own setting
    anti_annealing: float | Mapping[str, float] | None = None
    # refinement (SDEdit / FlowLLM): > 0 starts from the template's own structure put on the path at
    # this time instead of from the prior, and integrates the rest of the way to 1
    start_time: float = 0.0
    # process models (flow, diffusion, CDVAE's decoder: generative.integrator) open final cells flatter
    # than this V/(a·b·c) up to it (core.lattice.raise_flat_cells; the data's reduced cells have
    # ≥ 0.707); 0 leaves the sampled cells as they are; the other families' cells do not come from
    # the integrator and ignore it
    min_volume_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.anti_annealing, Mapping):
            object.__setattr__(self, "anti_annealing", dict(self.anti_annealing))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.start_time < 1.0:
            raise ValueError(f"start_time must be in [0, 1), got {self.start_time}")
        if self.corrector_steps < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {self.corrector_steps}")
        if not 0.0 <= self.min_volume_fraction < 1.0:
            raise ValueError(f"min_volume_fraction must be in [0, 1), got {self.min_volume_fraction}")


PredictFn = Callable[[CrystalBatch, Tensor], FieldOutputs]
"""``predict(state, t) -> FieldOutputs``: a backbone call, possibly wrapped by guidance."""


@runtime_checkable
class Guidance(Protocol):
    """Wraps the prediction function (classifier-free guidance, predictor gradients, ...).

    ``requires_grad``: the sampler calls it with autograd enabled (sampling otherwise runs under
    ``torch.no_grad``), so it may build a graph through ``state`` and take gradients.
    """

    requires_grad: bool

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """The guided outputs for ``state`` at per-crystal time ``t [B]``."""


@runtime_checkable
class ConditionMixing(Protocol):
    """A guidance that mixes the model's conditioned and unconditioned predictions (classifier-free).

    ``scale`` is the weight ``w`` of ``u + w·(c − u)`` (1: plain conditional sampling, 0:
    unconditional); ``conditions`` are the names hidden for ``u`` (empty: every given one). A family
    without a denoiser prediction may apply it its own way (the autoregressive family mixes
    next-token log-probabilities) instead of wrapping ``predict``.
    """

    mixes_conditions: ClassVar[bool]
    scale: float
    conditions: tuple[str, ...]


@dataclass(frozen=True)
class StepContext:
    """What a constraint may use besides the state: the template, the model's noising, the RNG."""

    template: CrystalBatch
    noise: Callable[[CrystalBatch, Tensor], CrystalBatch]  # clean batch, t [B] → its point on the path at t
    generator: torch.Generator | None = None


@runtime_checkable
class Constraint(Protocol):
    """Rewrites the state after each step (inpainting, allowed elements, fixed lattice, ...)."""

    def apply(self, state: CrystalBatch, t: Tensor, context: StepContext) -> CrystalBatch:
        """The constrained state at time ``t [B]`` (the time the step reached)."""


@dataclass(frozen=True)
class SamplePlan:
    """Everything a sampler needs besides the template: integration settings, guidance, constraints."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guidance: tuple[Guidance, ...] = ()
    constraints: tuple[Constraint, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance", tuple(self.guidance))
        object.__setattr__(self, "constraints", tuple(self.constraints))


@dataclass(frozen=True)
class SampleStep:
    """The state after one step: ``index`` of the step, ``t`` the time reached (1.0 at the end)."""

    index: int
    t: float
    state: CrystalBatch


# ---- models ------------------------------------------------------------------------------------
@runtime_checkable
class GenerativeModel(Protocol):
    """What the package sees of any generative family (every ``torch.nn.Module`` has the rest).

    ``tasks``: the tasks this model can do (a subset of ``TASKS``); a CSP model keeps the
    template's types, a DNG model generates them from ``MASK_Z``. ``conditions``: the properties
    it can be conditioned on (targets for any other property are refused, never ignored).
    """

    @property
    def tasks(self) -> tuple[str, ...]:
        """``("csp",)``, ``("dng",)`` or both."""

    @property
    def conditions(self) -> tuple[str, ...]:
        """Property names the model reads from ``template.properties`` (empty: unconditional)."""

    def loss(self, batch: CrystalBatch) -> dict[str, Tensor]:
        """``{"loss": scalar to minimise, <part>: scalar, ...}`` for one data batch."""

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """Yield the state after each step; the last step's state is the generated batch."""

    def default_sampler(self) -> SamplerConfig:
        """The sampler settings used when a user gives none."""

    def to(self, device: torch.device | str) -> GenerativeModel:
        """The model on ``device`` (``nn.Module.to``)."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The trainable parameters (``nn.Module.parameters``)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Weights to checkpoint (``nn.Module.state_dict``)."""

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> object:
        """Load checkpointed weights (``nn.Module.load_state_dict``)."""

    def eval(self) -> GenerativeModel:
        """Inference mode (``nn.Module.eval``)."""


def model_dtype(model: GenerativeModel) -> torch.dtype:
    """The floating dtype of a model's parameters (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def last_state(steps: Iterator[SampleStep] | Sequence[SampleStep]) -> CrystalBatch:
    """The state of the final step of a sampling run."""
    state: CrystalBatch | None = None
    for step in steps:
        state = step.state
    if state is None:
        raise RuntimeError("the sampler yielded no step")
    return state
