"""Sequential Monte Carlo steering: reweight and resample the batch at chosen times during sampling.

The gradient-free steering route that acts *during* sampling (twisted SMC / PODGen-style samplers):
the batch is a population of particles; at each resampling event a property predictor scores
every crystal with the target objective ``J = Σ_k log P(window_k hit)`` (``sampling.targets``),
the potential of a particle is ``exp(J / temperature)``, and the population is resampled in
proportion to the accumulated weights. Nothing is differentiated, so it works for flows and
diffusions, CSP and DNG alike. ``SMCResampler`` is a ``Constraint``; put it **last** in
``SamplePlan.constraints`` so every crystal it copies already satisfies the other constraints.

**What J is evaluated on.** The state as it is, with ``t`` for a noise-aware predictor (trained on
this generator's noisy states: the principled choice) and without ``t`` for a clean predictor,
which is then only used from ``start`` on (default 0.5, as ``PredictorGradient`` does). A clean
estimate of the final crystal is not used: a constraint sees the state, not the model's outputs,
so one would cost an extra backbone call per event and a family-specific formula (flow velocity
extrapolation on the torus, Tweedie for a diffusion, nothing for still-masked types).

**Weights.** Between events a particle moves by the model's own transition, so the weight it
gains at an event is the ratio of potentials, ``exp((J_now − J_prev) / temperature)`` (``J_prev``:
its own value at the previous event, or its ancestor's when it was copied; 0 at the first event).
Without resampling the log weights add up (the ratios telescope); after resampling they reset to
0. A group is resampled when the effective sample size of its weights, ``(Σw)² / Σw²``, falls
below ``ess_threshold`` times its size (0: never; 1: at every event). A crystal the predictor
cannot score (NaN: a cell too thin for the neighbour search) gets weight 0, so it is never copied;
its next score starts afresh (as at the first event); a group where no crystal has a weight left
is kept as it is, with uniform weights.

**Groups.** Per-atom tensors are laid out crystal by crystal, and constraints read the template
atom by atom, so a crystal may only be replaced by a copy of one with the same template content:
the same number of atoms, the same template types in the same order (CSP composition,
``FixedComposition``), the same fixed atoms (with their positions and the template lattice) and
the same conditioning properties (``template_groups``). Each group is resampled on its own
(systematic or multinomial resampling), and the copies take every generated tensor of their
ancestor: ``atomic_numbers``, ``frac_coords``, ``lattice`` and every ``state.latents`` entry; the
slot keeps its template data (``num_atoms``, ``fixed``, properties, ``material_ids``). A CSP run with
one crystal per composition has only groups of one: repeat each composition to let SMC act.

**Schedule.** ``every`` k steps (default every step, from ``start``), ``events`` evenly spaced
times in ``(start, 1)``, or explicit ``times`` in ``[0, 1)``. The final state (``t = 1``) is
resampled only with ``final=True``: that is importance resampling *with* replacement, which puts
exact copies in the output. The same holds for copies made earlier when the rest of the sampler is
deterministic (the flow ODE on coordinates and lattice): they stay copies unless something random
follows (diffusion noise, types still being revealed). ``log_weights`` holds what is left of the
weights at the end, for a caller that wants to select or weight the final crystals.

Diagnostics: ``history`` (one ``SMCEvent`` per event: time, ESS, groups resampled, unscored
crystals), ``num_resampling_events``, ``last_objective``, ``last_ancestors``. The random draws
come from ``StepContext.generator`` (the run's), only when a group is resampled.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.generative.interfaces import StepContext
from crystalforge.sampling.guidance import PropertyPredictor
from crystalforge.sampling.targets import PropertyTarget, objective

__all__ = ["SMCEvent", "SMCResampler", "resample_ancestors", "template_groups"]

log = logging.getLogger(__name__)

_TIME_TOL = 1e-6
METHODS = ("systematic", "multinomial")


@dataclass(frozen=True)
class SMCEvent:
    """One reweighting event: ``ess`` (Σ over groups, in crystals, before resampling) of ``n``."""

    run: int
    t: float
    ess: float
    n: int
    resampled_groups: int
    unscored: int

    @property
    def resampled(self) -> bool:
        """Whether any group was resampled at this event."""
        return self.resampled_groups > 0


def template_groups(template: CrystalBatch) -> Tensor:
    """``[B]`` int64 labels: crystals with one label have the same template content and may be exchanged.

    The content is the atom count, the template's types in order, the fixed atoms (mask, positions
    and the template lattice, when any atom is fixed) and the conditioning properties with their mask.
    """
    counts = template.num_atoms.tolist()
    z = template.atomic_numbers.cpu().tolist()
    fixed = template.fixed_mask.cpu()
    any_fixed = bool(fixed.any())
    frac = template.frac_coords.detach().cpu().double()
    lattice = template.lattice.detach().cpu().double()
    b = len(counts)
    props = {k: v.detach().cpu().double().reshape(b, -1) for k, v in sorted(template.properties.items())}
    masks = {k: v.cpu().tolist() for k, v in sorted(template.condition_mask.items())}
    labels: dict[Hashable, int] = {}
    out, start = [], 0
    for i, n in enumerate(counts):
        key: list[Hashable] = [n, tuple(z[start : start + n])]
        if any_fixed:
            rows = fixed[start : start + n]
            key += [tuple(rows.tolist()), _floats(frac[start : start + n][rows]), _floats(lattice[i])]
        key += [(k, _floats(v[i])) for k, v in props.items()]
        key += [(k, bool(m[i])) for k, m in masks.items()]
        out.append(labels.setdefault(tuple(key), len(labels)))
        start += n
    return torch.tensor(out, dtype=torch.int64, device=template.device)


def _floats(x: Tensor) -> tuple[float | None, ...]:
    return tuple(None if math.isnan(v) else v for v in x.flatten().tolist())


def resample_ancestors(weights: Tensor, uniforms: Tensor, *, method: str = "systematic") -> Tensor:
    """Ancestor indices ``[n]`` of one group drawn ∝ ``weights [n]`` (>= 0, some positive).

    ``uniforms [n]`` in ``[0, 1)``: systematic resampling uses the first, multinomial all of them.
    A zero-weight particle is never drawn. The result is non-decreasing.
    """
    n = weights.numel()
    w = weights.to(torch.float64)
    positive = torch.nonzero(w > 0).flatten()
    if positive.numel() == 0:
        raise ValueError("resample_ancestors: every weight is zero")
    last = int(positive[-1])
    cdf = torch.cumsum(w, 0) / w.sum()
    cdf[last:] = 1.0
    u = uniforms.to(device=w.device, dtype=torch.float64)
    if method == "systematic":
        positions = (u[0] + torch.arange(n, dtype=torch.float64, device=w.device)) / n
    elif method == "multinomial":
        positions = torch.sort(u[:n]).values
    else:
        raise ValueError(f"unknown resampling method {method!r}: use one of {', '.join(METHODS)}")
    return torch.searchsorted(cdf, positions, right=True).clamp(max=last)


class SMCResampler:
    """Reweights the batch by ``exp(J / temperature)`` at scheduled times and resamples within groups.

    Args:
        predictor: a ``PropertyPredictor`` (``PredictorEnsemble``); noise-aware or clean.
        targets: the windows to hit.
        temperature: ``T`` of the potential ``exp(J / T)``; smaller is greedier.
        ess_threshold: resample a group when its ESS < threshold · its size (0: never, 1: every event).
        every: an event every ``every`` steps (the default, with 1, when no schedule is given).
        events: instead, this many events at evenly spaced times in ``(start, 1)``.
        times: instead, events at these times in ``[0, 1)`` (each at the first step reaching it).
        start: first time of the ``every``/``events`` schedules (default 0 for a noise-aware
            predictor, 0.5 for a clean one).
        final: also reweight and resample the final state (``t = 1``; puts copies in the output).
        method: ``"systematic"`` (default, lower variance) or ``"multinomial"``.
        name: how ``run.json`` names the predictor.

    """

    def __init__(
        self,
        predictor: PropertyPredictor,
        targets: Sequence[PropertyTarget],
        *,
        temperature: float = 1.0,
        ess_threshold: float = 0.5,
        every: int | None = None,
        events: int | None = None,
        times: Sequence[float] | None = None,
        start: float | None = None,
        final: bool = False,
        method: str = "systematic",
        name: str = "predictor",
    ) -> None:
        if not targets:
            raise ValueError("SMC resampling needs at least one target")
        unknown = [t.name for t in targets if t.name not in predictor.properties]
        if unknown:
            raise KeyError(f"the predictor has no {unknown} (it predicts: {', '.join(predictor.properties)})")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
        if sum(x is not None for x in (every, events, times)) > 1:
            raise ValueError("give at most one of every, events and times")
        if method not in METHODS:
            raise ValueError(f"unknown resampling method {method!r}: use one of {', '.join(METHODS)}")
        self.predictor = predictor
        self.targets = tuple(targets)
        self.temperature = float(temperature)
        self.ess_threshold = float(ess_threshold)
        self.start = float(start if start is not None else (0.0 if predictor.time_conditioned else 0.5))
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"start must be in [0, 1), got {self.start}")
        self.every: int | None = None
        self.times: tuple[float, ...] | None = None
        if times is not None:
            self.times = tuple(sorted({float(x) for x in times}))
            if not self.times or not all(0.0 <= x < 1.0 for x in self.times):
                raise ValueError(f"times must be in [0, 1) (use final=True for t = 1), got {list(times)}")
        elif events is not None:
            if events < 1:
                raise ValueError(f"events must be >= 1, got {events}")
            self.times = tuple(self.start + (1.0 - self.start) * k / (events + 1) for k in range(1, events + 1))
        else:
            self.every = 1 if every is None else int(every)
            if self.every < 1:
                raise ValueError(f"every must be >= 1, got {every}")
        self.final = bool(final)
        self.method = method
        self.name = name
        self.history: list[SMCEvent] = []
        self.last_objective: Tensor | None = None  # J [B] after the last event (NaN: unscored)
        self.last_ancestors: Tensor | None = None  # [B] source crystal of each slot at the last event
        self._runs = 0
        self._template: CrystalBatch | None = None
        self._groups = torch.zeros(0, dtype=torch.int64)
        self._logw = torch.zeros(0, dtype=torch.float64)
        self._prev = torch.zeros(0, dtype=torch.float64)
        self._last_t = -math.inf
        self._step = 0
        self._fired = 0

    def settings(self) -> dict[str, Any]:
        """Plain-data settings (``run.json``)."""
        return {
            "predictor": self.name, "noise_aware": self.predictor.time_conditioned,
            "targets": [str(t) for t in self.targets], "temperature": self.temperature,
            "ess_threshold": self.ess_threshold, "every": self.every,
            "times": None if self.times is None else list(self.times), "start": self.start,
            "final": self.final, "method": self.method,
        }  # fmt: skip

    @property
    def num_resampling_events(self) -> int:
        """Events at which at least one group was resampled (over every run of this object)."""
        return sum(e.resampled for e in self.history)

    @property
    def log_weights(self) -> Tensor:
        """``[B]`` log weights accumulated since the last resampling of each crystal's group."""
        return self._logw.clone()

    # ---- the constraint ------------------------------------------------------------------------
    def apply(self, state: CrystalBatch, t: Tensor, context: StepContext) -> CrystalBatch:
        """``state``, reweighted and (where the ESS is low) resampled when an event is due at ``t [B]``."""
        tau = float(t.min()) if t.numel() else 0.0
        if context.template is not self._template or tau < self._last_t:
            self._begin_run(state, context)
        if tau > max(self._last_t, 0.0):
            self._step += 1
        self._last_t = tau
        if not self._due(tau):
            return state
        return self._event(state, t, tau, context)

    def _begin_run(self, state: CrystalBatch, context: StepContext) -> None:
        if context.template.num_crystals != state.num_crystals:
            raise ValueError(
                f"SMCResampler: the template has {context.template.num_crystals} crystals, the state "
                f"{state.num_crystals}"
            )
        self._runs += 1
        self._template = context.template
        self._groups = template_groups(context.template).to(state.device)
        b = state.num_crystals
        self._logw = torch.zeros(b, dtype=torch.float64, device=state.device)
        self._prev = torch.zeros(b, dtype=torch.float64, device=state.device)
        self._last_t, self._step, self._fired = -math.inf, 0, 0

    def _due(self, tau: float) -> bool:
        if tau >= 1.0 - _TIME_TOL:
            return self.final
        if self.times is not None:
            reached = bisect.bisect_right(self.times, tau + _TIME_TOL)
            due = reached > self._fired
            self._fired = max(self._fired, reached)
            return due
        assert self.every is not None
        return self._step > 0 and tau >= self.start - _TIME_TOL and self._step % self.every == 0

    def score(self, state: CrystalBatch, t: Tensor) -> Tensor:
        """``J [B]`` (float64) of the state as it is; NaN where the predictor cannot score a crystal."""
        dtype = next((p.dtype for p in _parameters(self.predictor) if p.is_floating_point()), state.lattice.dtype)
        batch = state
        if state.lattice.dtype != dtype:
            batch = state.replace(frac_coords=state.frac_coords.to(dtype), lattice=state.lattice.to(dtype), latents={})
        t = t.to(device=state.device, dtype=dtype).reshape(-1).expand(state.num_crystals)
        time = t if self.predictor.time_conditioned else None
        with torch.no_grad():
            mean, std = self.predictor(batch, time)
        scored = torch.isfinite(mean).all(1) & torch.isfinite(std).all(1)
        mean = torch.where(scored[:, None], mean, torch.zeros_like(mean))
        std = torch.where(scored[:, None], std, torch.ones_like(std))
        j = objective(mean, std, self.predictor.properties, self.targets).to(torch.float64)
        return torch.where(scored & torch.isfinite(j), j, torch.full_like(j, math.nan))

    def _event(self, state: CrystalBatch, t: Tensor, tau: float, context: StepContext) -> CrystalBatch:
        b, gid = state.num_crystals, self._groups
        j = self.score(state, t).to(self._logw.device)
        scored = torch.isfinite(j)
        potential = j / self.temperature
        increment = potential - torch.nan_to_num(self._prev, nan=0.0)  # an unknown previous potential: start afresh
        logw = self._logw + torch.where(scored, increment, torch.full_like(increment, -math.inf))
        prev = torch.where(scored, potential, torch.full_like(potential, math.nan))
        g = int(gid.max()) + 1
        alive = torch.zeros(g, dtype=torch.float64, device=gid.device).index_add(0, gid, torch.isfinite(logw).double())
        logw = torch.where(alive[gid] == 0, torch.zeros_like(logw), logw)  # no weight left: keep, uniform
        top = torch.full((g,), -math.inf, dtype=torch.float64, device=gid.device).scatter_reduce(0, gid, logw, "amax")
        w = torch.exp(logw - top[gid])
        total = torch.zeros(g, dtype=torch.float64, device=gid.device).index_add(0, gid, w)
        ess = total**2 / torch.zeros_like(total).index_add(0, gid, w * w)
        size = torch.bincount(gid, minlength=g)
        due = (size > 1) & (alive > 0) & ((ess < self.ess_threshold * size) | (self.ess_threshold >= 1.0))
        ancestors = torch.arange(b, device=gid.device)
        if bool(due.any()):
            u = _uniforms(b, context.generator, gid.device)
            for group in torch.nonzero(due).flatten().tolist():
                members = torch.nonzero(gid == group).flatten()
                ancestors[members] = members[resample_ancestors(w[members], u[members], method=self.method)]
            logw = torch.where(due[gid], torch.zeros_like(logw), logw)
            prev, j = prev[ancestors], j[ancestors]
            state = _gather(state, ancestors)
        self._logw, self._prev = logw, prev
        self.last_objective, self.last_ancestors = j, ancestors
        event = SMCEvent(self._runs, tau, float(ess.sum()), b, int(due.sum()), int((~scored).sum()))
        self.history.append(event)
        log.debug("SMC t=%.3f: ESS %.1f of %d, %d group(s) resampled", tau, event.ess, b, event.resampled_groups)
        return state


def _gather(state: CrystalBatch, ancestors: Tensor) -> CrystalBatch:
    """Every slot takes the generated tensors (fields and latents) of its ancestor; template data stays."""
    if torch.equal(ancestors, torch.arange(state.num_crystals, device=ancestors.device)):
        return state
    source = state.index_select(ancestors.to(state.device))
    return state.replace(
        atomic_numbers=source.atomic_numbers,
        frac_coords=source.frac_coords,
        lattice=source.lattice,
        latents=dict(source.latents),
    )


def _uniforms(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` uniforms in ``[0, 1)`` from ``generator`` (on its own device), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where, dtype=torch.float64).to(device)


def _parameters(predictor: object) -> list[Tensor]:
    params = getattr(predictor, "parameters", None)
    return list(params()) if callable(params) else []
