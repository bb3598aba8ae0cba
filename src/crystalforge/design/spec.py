"""``DesignSpec``: what a design run asks for, from a YAML file, CLI flags or Python, checked once.

A spec is plain data (names and numbers, recorded in ``RUN/design.json``). ``load_spec`` reads a
YAML file with ``crystalforge.config`` (unknown keys and wrong types are errors naming the key),
lays the given overrides (CLI flags, API keywords) over it and checks every value; a bad value is a
``SpecError`` naming the field (``design spec: budget must be >= 1, got 0``).

Derived values live here too: the parsed targets, the ``Steering`` of generation, the relaxation
budget and the ranking objectives (the default ones when none are given).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crystalforge.config import ConfigError, from_dict, load_config, to_dict
from crystalforge.design.rank import Objective
from crystalforge.sampling.steering import ROUTE_STEPS, Steering
from crystalforge.sampling.targets import PropertyTarget, parse_targets

__all__ = ["EXTENDABLE", "STAGES", "UNSTEERED", "DesignSpec", "SpecError", "load_spec", "objective_record"]

STAGES = ("filter", "dedupe", "screen", "relax", "hull", "predict", "rank")
"""The store's stages, in pipeline order (generation is not a store stage: it adds the rows)."""

EXTENDABLE = ("budget", "relax_budget", "top", "objectives", "ranking", "workers", "ray", "out", "report")
"""Fields a finished run may be resumed with other values of; every other field must stay the same."""

E_HULL_SCALE = 0.1
"""eV/atom: the unit of the default stability objective (the metastability threshold)."""

STABILITY = "e_above_hull"
UNSTEERED = "none"
"""The route that generates without steering towards the targets (they still screen and rank)."""
"""The predictor property the screen's stability window reads, and active learning fine-tunes."""


class SpecError(ConfigError):
    """A design spec value is wrong; the message names the field."""


@dataclass(frozen=True)
class DesignSpec:
    """A design run: targets, generator, budgets, filters, ranking and where it runs.

    Attributes:
        model: shipped generative model name or ``model.pt`` (a DNG model).
        targets: property windows (``band_gap=2.5±0.5``, ``band_gap=2..3``, ``e_above_hull<0.1``).
        tolerance: half-width of a ``NAME=VALUE`` target.
        elements: allowed elements (``Li,Mn,O`` or a list).
        motif: lattice motif to inpaint (``kagome:Mn``).
        num_atoms: atoms per cell (None: drawn from the training distribution).
        route, guidance, oversample, temperature, ess_threshold, smc_every: steering of generation
            towards the targets (``crystalforge generate --route``; docs/steering.md); route ``none``
            generates without steering towards them (they still screen and rank).
        steps: sampler steps (None: the model's default).
        budget: candidates to generate in total (raise it to extend a finished run).
        rounds: generation rounds the budget (and the relax budget) is split over; each round is
            generated, filtered, screened, relaxed and hull-checked before the next (docs/design.md).
        active_learning: after each round, fine-tune the screen's stability head (``e_above_hull``)
            on the (as-generated structure, relaxed E_hull) pairs so far; the next round screens with it.
        fine_tune_epochs, fine_tune_lr: the fine-tune's full-batch Adam steps and learning rate.
        batch_size: candidates per generation batch (a batch is stored at once).
        relax_budget: candidates relaxed: the best by the screen pre-rank (None: 3 × ``top``).
        top: candidates exported with their CIFs.
        objectives: ranking objectives (empty: E_hull, distance to each target, its uncertainty).
        ranking: ``pareto`` (front, then score) or ``score`` (weighted score only).
        predictor: property predictor (shipped name or ``predictor.pt``) for screen and predict.
        relaxer: MLIP relaxer name (``chgnet``; the shipped hull holds CHGNet energies).
        train: training set for novelty: ``auto`` (the shipped model's dataset), a dataset name
            or file, or ``none`` (no novelty check).
        novel_only: reject candidates that match a training structure.
        min_distance: shortest allowed distance between two atoms (Å).
        comp_valid: require SMACT composition validity.
        max_e_above_hull: reject relaxed candidates above this E_hull (eV/atom; None: keep all).
        suspect_e_hull: an E_hull below this (eV/atom, < 0) is *suspect*: an MLIP artefact or a phase
            the reference hull lacks is likelier than a compound that stable. The default ranking
            then counts the depth below it as it counts a height above the hull (so a suspect
            candidate is not ranked first for it), and top.csv and the report flag it. None: off.
        screen_stability: in the screen pre-rank, also ask the predictor for
            ``e_above_hull <= this`` when it predicts it (None: off).
        workers: parallel workers (local processes, or Ray actors with ``ray``).
        ray: Ray cluster (``auto``, ``local`` or an address); None runs locally.
        seed: random seed; generation batch ``(round, batch)`` is seeded from ``(seed, round, batch)``.
        device: torch device for generation.
        out: the run folder.
        report: write the HTML report at the end (when ``crystalforge.design.report`` exists).

    """

    model: str = "mp_20-dng"
    targets: tuple[str, ...] = ()
    tolerance: float = 0.25
    elements: str | tuple[str, ...] | None = None
    motif: str | None = None
    num_atoms: int | None = None
    route: str = "importance"
    guidance: float = 1.0
    oversample: int = 4
    temperature: float = 1.0
    ess_threshold: float = 0.5
    smc_every: int = 1
    steps: int | None = None
    budget: int = 2000
    rounds: int = 1
    active_learning: bool = False
    fine_tune_epochs: int = 300
    fine_tune_lr: float = 0.02
    batch_size: int = 256
    relax_budget: int | None = None
    top: int = 20
    objectives: tuple[Objective, ...] = ()
    ranking: Literal["pareto", "score"] = "pareto"
    predictor: str = "mp_20-properties"
    relaxer: str = "chgnet"
    train: str = "auto"
    novel_only: bool = True
    min_distance: float = 0.5
    comp_valid: bool = True
    max_e_above_hull: float | None = None
    screen_stability: float | None = 0.1
    suspect_e_hull: float | None = -0.2
    workers: int = 1
    ray: str | None = None
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    report: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.elements, (tuple, list)):
            object.__setattr__(self, "elements", ",".join(str(e).strip() for e in self.elements) or None)
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "objectives", tuple(self.objectives))
        _check(self)

    # ---- derived values ---------------------------------------------------------------------------
    @property
    def windows(self) -> list[PropertyTarget]:
        """The parsed targets."""
        return parse_targets(self.targets, tolerance=self.tolerance)

    @property
    def element_list(self) -> str | None:
        """``elements`` as one comma-separated string (``Li,Mn,O``), or None."""
        return self.elements if not isinstance(self.elements, tuple) else ",".join(self.elements)

    @property
    def relax_count(self) -> int:
        """How many candidates are relaxed: ``relax_budget``, or 3 × ``top``."""
        return self.relax_budget if self.relax_budget is not None else 3 * self.top

    def steering(self) -> Steering | None:
        """The generation's ``Steering`` (None when nothing steers it)."""
        if self.route == UNSTEERED:  # targets only rank; elements and motif still constrain
            if not (self.elements or self.motif):
                return None
            return Steering(predictor=self.predictor, elements=self.element_list, motif=self.motif)
        if not (self.targets or self.elements or self.motif or self.route != "importance"):
            return None
        return Steering(
            targets=tuple(self.windows), predictor=self.predictor, route=self.route, guidance_scale=self.guidance,
            oversample=self.oversample, temperature=self.temperature, elements=self.element_list, motif=self.motif,
            ess_threshold=self.ess_threshold, smc_every=self.smc_every,
        )  # fmt: skip

    def ranking_objectives(self) -> list[Objective]:
        """``objectives``, or the defaults: E_hull, per target the distance to its window and its std.

        The default E_hull objective is the distance to ``[suspect_e_hull, 0]``: every E_hull in it
        is as good as on the hull (the depth below the reference is not reliable), one above it
        costs its height, and a suspect one its depth below ``suspect_e_hull``.
        """
        if self.objectives:
            return list(self.objectives)
        low = -math.inf if self.suspect_e_hull is None else self.suspect_e_hull
        out = [Objective("hull_e_above_hull", "window", low=low, high=0.0, scale=E_HULL_SCALE)]
        for t in self.windows:
            low = -math.inf if t.low is None else t.low
            high = math.inf if t.high is None else t.high
            half = (high - low) / 2 if math.isfinite(high - low) and high > low else 1.0
            out.append(Objective(f"predict_{t.name}_mean", "window", low=low, high=high, scale=half))
            out.append(Objective(f"predict_{t.name}_std", "min", weight=0.5, scale=half))
        return out

    def record(self) -> dict[str, object]:
        """Plain, JSON-ready data (infinite window ends as None)."""
        return _json_ready(to_dict(self))

    def replace(self, **changes: object) -> DesignSpec:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _json_ready(value: object) -> dict[str, object]:
    def plain(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    out = plain(value)
    assert isinstance(out, dict)
    return out


def objective_record(objective: Objective) -> dict[str, object]:
    """An objective as JSON-ready data (for ``design.json``)."""
    return _json_ready(dataclasses.asdict(objective))


def _fail(name: str, message: str) -> SpecError:
    return SpecError(f"design spec: {name} {message}")


def _check(spec: DesignSpec) -> None:
    """Every value's range and form; the first problem is raised naming its field."""
    positive = {"budget": spec.budget, "batch_size": spec.batch_size, "top": spec.top, "workers": spec.workers,
                "oversample": spec.oversample, "smc_every": spec.smc_every, "rounds": spec.rounds,
                "fine_tune_epochs": spec.fine_tune_epochs}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            raise _fail(name, f"must be >= 1, got {value}")
    for name, maybe in {"relax_budget": spec.relax_budget, "steps": spec.steps, "num_atoms": spec.num_atoms}.items():
        if maybe is not None and maybe < (0 if name == "relax_budget" else 1):
            raise _fail(name, f"must be >= {0 if name == 'relax_budget' else 1}, got {maybe}")
    for name in ("tolerance", "min_distance", "guidance", "temperature", "ess_threshold"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value >= 0):
            raise _fail(name, f"must be a finite number >= 0, got {value}")
    if spec.suspect_e_hull is not None and not (math.isfinite(spec.suspect_e_hull) and spec.suspect_e_hull < 0):
        raise _fail("suspect_e_hull", f"must be a finite number < 0 (eV/atom) or null, got {spec.suspect_e_hull}")
    for name in ("max_e_above_hull", "screen_stability"):
        value = getattr(spec, name)
        if value is not None and not math.isfinite(value):
            raise _fail(name, f"must be a finite number, got {value}")
    if spec.temperature == 0:
        raise _fail("temperature", "must be > 0")
    if not (math.isfinite(spec.fine_tune_lr) and spec.fine_tune_lr > 0):
        raise _fail("fine_tune_lr", f"must be a finite number > 0, got {spec.fine_tune_lr}")
    if spec.rounds > spec.budget:
        raise _fail("rounds", f"must be <= budget ({spec.budget}): every round generates at least one candidate")
    if not spec.model:
        raise _fail("model", "is empty: give a shipped model name (crystalforge models) or a model.pt")
    if not spec.predictor:
        raise _fail("predictor", "is empty")
    if spec.ranking not in ("pareto", "score"):
        raise _fail("ranking", f"must be 'pareto' or 'score', got {spec.ranking!r}")
    steps = spec.route.split("+")
    if spec.route != UNSTEERED and (any(s not in ROUTE_STEPS for s in steps) or len(set(steps)) != len(steps)):
        raise _fail("route", f"must be {UNSTEERED}, one of {', '.join(ROUTE_STEPS)} or several joined by '+', "
                             f"got {spec.route!r}")  # fmt: skip
    try:
        windows = spec.windows
    except ValueError as exc:
        raise _fail("targets", f"are wrong: {exc}") from None
    if any(step in ("gradient", "smc") for step in steps) and not windows:
        raise _fail("route", f"{spec.route!r} steers towards targets: give at least one target")
    if spec.element_list is not None and not all(e.strip() for e in spec.element_list.split(",")):
        raise _fail("elements", f"must be element symbols separated by commas, got {spec.elements!r}")
    if spec.motif is not None and ":" not in spec.motif:
        raise _fail("motif", f"must look like MOTIF:ELEMENT (kagome:Mn), got {spec.motif!r}")
    _check_active_learning(spec, windows)
    prefixes = tuple(f"{stage}_" for stage in STAGES)
    for i, objective in enumerate(spec.objectives):
        if not objective.key.startswith(prefixes):
            raise _fail(
                f"objectives[{i}].key", f"{objective.key!r} is no stage value: use a column such as "
                "hull_e_above_hull, predict_<property>_mean or relax_rmsd",
            )  # fmt: skip


def _check_active_learning(spec: DesignSpec, windows: list[PropertyTarget]) -> None:
    """Active learning needs relaxations to learn from and a screen that reads the stability head."""
    if not spec.active_learning:
        return
    if spec.relax_count < 1:
        raise _fail("relax_budget", "must be >= 1 with active_learning (the relaxed candidates are its labels)")
    if spec.screen_stability is None and STABILITY not in {t.name for t in windows}:
        raise _fail(
            "active_learning", f"fine-tunes the screen's {STABILITY} but the screen does not use it: set "
            f"screen_stability or a target on {STABILITY}",
        )  # fmt: skip


def load_spec(spec: DesignSpec | str | Path | None = None, overrides: Mapping[str, object] | None = None) -> DesignSpec:
    """A spec, a YAML file's spec or the defaults (None), with ``overrides`` (field → value; None: not given) on top.

    Raises:
        SpecError: naming the field for an unknown key, a wrong type or a bad value.

    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    where = "design spec" if spec is None or isinstance(spec, DesignSpec) else str(spec)
    try:
        if spec is None:
            return from_dict(DesignSpec, given, where=where)
        base = spec if isinstance(spec, DesignSpec) else load_config(DesignSpec, spec)
        return from_dict(DesignSpec, {**to_dict(base), **given}, where=where) if given else base
    except SpecError:
        raise
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
