"""Steering a generation run: targets, routes, element sets and motifs, assembled into one run.

``Steering`` is plain data (what the CLI's ``--target``/``--route``/``--elements``/``--motif`` say).
``run_steered`` turns it into guidance and constraints on the model's sampling plan and runs it:

A route is one step or several joined by ``+`` (``condition+importance``):

- route ``condition``: a conditioned model (trained or fine-tuned with the targets' properties as
  conditions) samples at each window's centre with classifier-free guidance of weight
  ``guidance_scale`` (``sampling.cfg``); conditions given as ``properties`` (``--condition``, e.g.
  ``space_group=225``) are guided the same way. Needs no predictor, except for ``predictions.csv``;
- route ``gradient``: ``PredictorGradient`` on the flow velocities (``sampling.guidance``);
- route ``smc``: ``SMCResampler`` resamples the batch during sampling by the predictor's ``J``
  (sequential Monte Carlo, ``sampling.smc``; ``temperature``, ``ess_threshold``, ``smc_every``);
- route ``importance``: the generator proposes ``oversample · n`` crystals into ``<out>/pool``
  (an ordinary, resumable generation folder) and ``n`` are kept by importance resampling
  (``sampling.importance``); ``<out>`` is then a generation folder of the kept crystals only;
- route ``gradient+importance``: both (the pool is sampled with the gradient guidance);
- ``elements``: ``AllowedElements`` (DNG types restricted to a set; added last, after any guidance);
- ``motif``: ``MotifConstraint`` (SCIGEN inpainting of a lattice motif).

Whenever targets are given, ``<out>/predictions.csv`` holds the guiding predictor's mean and
calibrated std per property for every kept structure, ``J`` (log probability that every window is
hit) and whether the predicted mean is inside every window; the importance route also writes
``<out>/pool_predictions.csv`` with ``selected`` marked. These are the guide's own opinions: score
hits with an independent judge (``crystalforge evaluate --target``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.generative.interfaces import Constraint, GenerativeModel, Guidance, SamplePlan
from crystalforge.io.atomic import atomic_write
from crystalforge.io.run_folder import JSONValue, RunFolder
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.shipped import load_predictor
from crystalforge.predictors.training import predict_crystals
from crystalforge.sampling.cfg import ClassifierFreeGuidance, targets_to_conditions
from crystalforge.sampling.composition import AllowedElements
from crystalforge.sampling.constraints import MotifConstraint
from crystalforge.sampling.guidance import PredictorGradient
from crystalforge.sampling.importance import importance_select
from crystalforge.sampling.runner import Job, jobs_template, run_jobs, steering_record, write_outputs
from crystalforge.sampling.smc import SMCResampler
from crystalforge.sampling.targets import PropertyTarget, objective, parse_target

__all__ = ["ROUTES", "ROUTE_STEPS", "Steering", "parse_target", "run_steered", "steering_plan"]

log = logging.getLogger(__name__)

ROUTE_STEPS = ("condition", "gradient", "smc", "importance")
"""The steps a route may join with ``+``."""
ROUTES = ("importance", "gradient", "smc", "condition", "gradient+importance", "condition+importance",
          "condition+gradient", "smc+importance")  # fmt: skip
"""The routes the CLI lists (any ``+``-join of ``ROUTE_STEPS`` is accepted)."""
DEFAULT_PREDICTOR = "mp_20-properties"


@dataclass(frozen=True)
class Steering:
    """What to steer towards and how (plain data; recorded in ``run.json``)."""

    targets: tuple[PropertyTarget, ...] = ()
    predictor: str = DEFAULT_PREDICTOR
    route: str = "importance"
    guidance_scale: float = 1.0
    guidance_start: float | None = None
    type_scale: float | None = None  # gradient route's push on atom types (None: guidance_scale; 0: off)
    condition_scale: float | None = None  # classifier-free guidance weight (None: guidance_scale)
    ess_threshold: float = 0.5  # smc: resample a group when its effective sample size falls below this share
    smc_every: int = 1  # smc: score (and maybe resample) every k sampler steps
    oversample: int = 4
    temperature: float = 1.0
    elements: str | None = None
    motif: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        steps = self.route.split("+")
        if not self.route or any(step not in ROUTE_STEPS for step in steps) or len(set(steps)) != len(steps):
            raise ValueError(
                f"unknown route {self.route!r}: use one of {', '.join(ROUTE_STEPS)} or several joined by '+'"
            )
        needy = [step for step in steps if step in ("gradient", "smc")]
        if needy and not self.targets:
            raise ValueError(f"route {self.route!r} steers towards property targets: give at least one (--target)")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")

    @property
    def uses_gradient(self) -> bool:
        """Whether the gradient route is on (needs targets)."""
        return bool(self.targets) and "gradient" in self.route.split("+")

    @property
    def uses_importance(self) -> bool:
        """Whether the importance route is on (needs targets)."""
        return bool(self.targets) and "importance" in self.route.split("+")

    @property
    def uses_smc(self) -> bool:
        """Whether sequential Monte Carlo resampling during sampling is on (needs targets)."""
        return bool(self.targets) and "smc" in self.route.split("+")

    @property
    def uses_condition(self) -> bool:
        """Whether the model's own conditioning (classifier-free guidance) is on."""
        return "condition" in self.route.split("+")

    @property
    def needs_predictor(self) -> bool:
        """Whether a predictor is loaded: for a predictor route, or to report the kept structures' predictions."""
        return bool(self.targets)

    def record(self) -> dict[str, JSONValue]:
        """Plain-data form for ``run.json``."""
        data: dict[str, JSONValue] = {k: v for k, v in asdict(self).items() if k != "targets"}
        data["targets"] = [str(t) for t in self.targets]
        return data


def steering_plan(
    model: GenerativeModel, steering: Steering, plan: SamplePlan, predictor: PredictorEnsemble | None
) -> SamplePlan:
    """``plan`` plus the steering's guidance and constraints (element restriction last among guidance)."""
    guidance: list[Guidance] = list(plan.guidance)
    constraints: list[Constraint] = list(plan.constraints)
    if steering.uses_condition:
        if not model.conditions:
            raise ValueError(
                "route 'condition' needs a conditioned model (train or fine-tune one with model.properties; "
                "see docs/steering.md); this one is unconditional"
            )
        scale = steering.guidance_scale if steering.condition_scale is None else steering.condition_scale
        guidance.insert(0, ClassifierFreeGuidance(scale=scale, conditions=tuple(model.conditions)))
    if steering.uses_gradient:
        assert predictor is not None
        gradient = PredictorGradient(
            model, predictor, steering.targets, scale=steering.guidance_scale, start=steering.guidance_start,
            type_scale=steering.type_scale, name=steering.predictor,
        )  # fmt: skip
        guidance.append(gradient)
    if steering.elements:
        guidance.append(AllowedElements.for_model(model, steering.elements))
    if steering.motif:
        constraints.append(MotifConstraint.parse(steering.motif))
    if steering.uses_smc:  # last: it scores the state every other constraint has shaped
        assert predictor is not None
        constraints.append(SMCResampler(
            predictor, steering.targets, temperature=steering.temperature, ess_threshold=steering.ess_threshold,
            every=steering.smc_every, start=steering.guidance_start, name=steering.predictor,
        ))  # fmt: skip
    return replace(plan, guidance=tuple(guidance), constraints=tuple(constraints))


def _motif_sized(make_jobs: Callable[[int], list[Job]], plan: SamplePlan) -> Callable[[int], list[Job]]:
    """De novo jobs large enough for the plan's motif: sizes drawn below its site count are skipped.

    Sizes drawn from the training distribution that are too small for the motif are dropped and more
    are drawn (the kept jobs are renamed in order), so a motif run samples that distribution above the
    motif's size. Fixed sizes or compositions are left as they are (``_check_motif`` refuses them).
    """
    sites = max((c.motif.num_sites for c in plan.constraints if isinstance(c, MotifConstraint)), default=0)
    if not sites:
        return make_jobs

    def jobs(count: int) -> list[Job]:
        drawn = make_jobs(count)
        if all(j.num_atoms >= sites for j in drawn) or any(j.composition is not None for j in drawn):
            return drawn
        for factor in (2, 4, 8, 16):
            big = [j for j in make_jobs(factor * count) if j.num_atoms >= sites]
            if len(big) >= count:
                return [replace(j, name=f"gen_{i:05d}") for i, j in enumerate(big[:count])]
        return drawn

    return jobs


def _check_motif(plan: SamplePlan, jobs: Sequence[Job]) -> None:
    """Refuse, before sampling, jobs too small for a motif (the constraint names the crystal)."""
    motifs = [c for c in plan.constraints if isinstance(c, MotifConstraint)]
    if motifs and jobs:
        template: CrystalBatch = jobs_template(jobs, torch.float32)
        for motif in motifs:
            try:
                motif.check_template(template)
            except ValueError as exc:
                raise ValueError(f"{exc} (generate with num_atoms= / --num-atoms of at least that)") from None


def _predict(
    predictor: PredictorEnsemble, crystals: Sequence[Crystal], targets: Sequence[PropertyTarget]
) -> dict[str, Any]:
    mean, std = predict_crystals(predictor, crystals)
    j = objective(torch.from_numpy(mean), torch.from_numpy(std), predictor.properties, targets).numpy()
    inside = np.ones(len(crystals), dtype=bool)
    for t in targets:
        k = predictor.properties.index(t.name)
        inside &= np.array([t.contains(float(v)) for v in mean[:, k]], dtype=bool)
    return {"mean": mean, "std": std, "objective": j, "inside": inside}


def _write_predictions(path: Path, crystals: Sequence[Crystal], predictor: PredictorEnsemble,
                       values: dict[str, Any], selected: np.ndarray | None = None) -> None:  # fmt: skip
    columns = ["id"] + [f"{p}{s}" for p in predictor.properties for s in ("", "_std")]
    columns += ["objective", "hit_probability", "predicted_inside"] + (["selected"] if selected is not None else [])
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, crystal in enumerate(crystals):
            row: list[object] = [crystal.material_id]
            for k in range(len(predictor.properties)):
                row += [f"{values['mean'][i, k]:.6g}", f"{values['std'][i, k]:.6g}"]
            j = float(values["objective"][i])
            row += [f"{j:.6g}", f"{math.exp(j):.6g}", int(values["inside"][i])]
            if selected is not None:
                row.append(int(selected[i]))
            writer.writerow(row)


def _conditioned(make_jobs: Callable[[int], list[Job]], values: Mapping[str, float]) -> Callable[[int], list[Job]]:
    """``make_jobs`` whose jobs carry the targets' condition values (beside any given ones)."""
    if not values:
        return make_jobs

    def jobs(count: int) -> list[Job]:
        return [replace(job, properties={**job.properties, **values}) for job in make_jobs(count)]

    return jobs


def run_steered(
    model: GenerativeModel,
    make_jobs: Callable[[int], list[Job]],
    n: int,
    out: str | Path,
    steering: Steering,
    plan: SamplePlan,
    **run: Any,
) -> list[Crystal]:
    """Generate ``n`` steered crystals into ``out`` (see the module docstring); ``run``: ``run_jobs`` options."""
    predictor = load_predictor(steering.predictor) if steering.targets else None
    if predictor is not None:
        unknown = [t.name for t in steering.targets if t.name not in predictor.properties]
        if unknown and (steering.uses_gradient or steering.uses_importance or steering.uses_smc):
            raise KeyError(
                f"predictor {steering.predictor!r} has no {unknown} (it predicts: {', '.join(predictor.properties)})"
            )
        if unknown:  # the condition route needs no predictor: only predictions.csv is skipped
            log.warning("predictor %s has no %s: no predictions.csv is written", steering.predictor, unknown)
            predictor = None
    plan = steering_plan(model, steering, plan, predictor)
    if steering.uses_condition:
        conditioned = steering.targets
        if steering.route != "condition":  # joined with a predictor route: that route takes the other targets
            conditioned = tuple(t for t in steering.targets if t.name in model.conditions and t.low is not None
                                and t.high is not None)  # fmt: skip
        make_jobs = _conditioned(make_jobs, targets_to_conditions(conditioned, model.conditions))
    make_jobs = _motif_sized(make_jobs, plan)
    folder = Path(out)
    if not steering.uses_importance:
        jobs = make_jobs(n)
        _check_motif(plan, jobs)
        crystals = run_jobs(model, jobs, folder, sampler=plan, **run)
        if predictor is not None and crystals:
            _write_predictions(
                folder / "predictions.csv", crystals, predictor, _predict(predictor, crystals, steering.targets)
            )
        return crystals
    assert predictor is not None
    jobs = make_jobs(n * steering.oversample)
    _check_motif(plan, jobs)
    pool = run_jobs(model, jobs, folder / "pool", sampler=plan, **run)
    if not pool:
        raise RuntimeError(f"{folder / 'pool'}: the generator gave no usable structure to select from")
    values = _predict(predictor, pool, steering.targets)
    keep = min(n, len(pool))
    if keep < n:
        log.warning("only %d usable structures in the pool; keeping all of them", keep)
    seed = int(run.get("seed", 0))
    chosen = np.sort(importance_select(values["objective"], keep, temperature=steering.temperature, seed=seed))
    selected = np.zeros(len(pool), dtype=bool)
    selected[chosen] = True
    _write_predictions(folder / "pool_predictions.csv", pool, predictor, values, selected)
    kept = [pool[i] for i in chosen]
    result = RunFolder(folder)
    settings: dict[str, JSONValue] = {
        "model": run.get("model_name"), "steering": steering.record(), "seed": seed,
        "pool": {"folder": "pool", "jobs": len(jobs), "usable": len(pool), "kept": keep},
        "plan": [steering_record(g) for g in (*plan.guidance, *plan.constraints)],
    }  # fmt: skip
    result.record_settings(settings, resuming=result.run_file.exists())
    write_outputs(result, kept, symmetrize=bool(run.get("symmetrize", True)))
    kept_values = {k: v[chosen] for k, v in values.items()}
    _write_predictions(folder / "predictions.csv", kept, predictor, kept_values)
    return kept
