"""The design stages after generation, one small function each: filter, dedupe, screen, relax, hull, predict.

Each stage asks the store for its pending candidates (``CandidateStore.pending``), works through
them in chunks and records every candidate's result as soon as its chunk is done, so a killed run
loses at most one chunk and a rerun does only what is missing. Values are recorded under the
names of the store contract (``docs/design.md``): ``filter_min_distance``, ``dedupe_novel``,
``screen_score``, ``relax_energy_per_atom``, ``hull_e_above_hull``, ``predict_<prop>_mean``, ...

A stage returns how many candidates it recorded. Nothing here prints; progress goes to the
context's progress factory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from crystalforge.core.crystal import Crystal
from crystalforge.design.spec import DesignSpec
from crystalforge.evaluation.context import time_limit_from_env
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.metrics.closest_pairs import closest_pair_blocked, search_cell
from crystalforge.evaluation.metrics.novelty import TrainingSet, novelty
from crystalforge.evaluation.metrics.symmetry import space_group
from crystalforge.evaluation.metrics.uniqueness import uniqueness
from crystalforge.evaluation.metrics.validity import composition_validity, structure_validity_many
from crystalforge.execution import ExecutorConfig
from crystalforge.interrupt import check_interrupted
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.training import predict_crystals
from crystalforge.progress import ProgressBar, null_progress
from crystalforge.relax.interfaces import Relaxer, relaxation_rmsd
from crystalforge.sampling.targets import PropertyTarget, objective

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.design.store import CandidateStore

__all__ = [
    "DesignContext", "ProgressFactory", "dedupe", "filter_candidates", "hull", "predict", "relax", "screen",
    "stage_bar",
]  # fmt: skip

log = logging.getLogger(__name__)

ProgressFactory = Callable[[int | None, str], ProgressBar]
"""``factory(total, desc) -> bar`` (``crystalforge.progress.progress_bar`` or ``null_progress``)."""

CHUNK = 256
"""Candidates per chunk of the cheap stages (one chunk is the most a kill can lose)."""
DISTANCE_CUTOFF = 5.0
"""Å: ``filter_min_distance`` is searched up to here (NaN when no two atoms are closer)."""
SYMPREC = 0.1
"""Å: spglib tolerance of ``relax_space_group``."""


@dataclass
class DesignContext:
    """What the stages share: the spec, the store, the run folder and the tools, built on first use."""

    spec: DesignSpec
    store: CandidateStore
    run: Path
    workers: int | ExecutorConfig = 1
    progress: ProgressFactory = null_progress
    relaxer: Relaxer | None = None
    reference_hull: ReferenceHull | None = None
    _predictor: PredictorEnsemble | None = field(default=None, repr=False)
    train_name: str = field(default="none", init=False)
    screener: PredictorEnsemble | None = field(default=None, repr=False)
    """The screen's surrogate when it is not the predictor (a fine-tuned one, ``design.active``)."""
    screener_name: str | None = None
    upto_round: int | None = None
    """Stages see only rounds ``<= upto_round`` (None: all): set by ``design.active`` so that a resumed run's
    stored later batches are not screened with an earlier round's surrogate."""

    @property
    def predictor(self) -> PredictorEnsemble:
        """The property predictor (loaded once)."""
        if self._predictor is None:
            from crystalforge.predictors.shipped import load_predictor

            self._predictor = load_predictor(self.spec.predictor)
        return self._predictor

    @cached_property
    def training_set(self) -> TrainingSet | None:
        """The training structures for novelty, read and grouped once (None: no novelty check).

        ``spec.train``: ``none``; ``auto`` (a shipped model's dataset; none for another model); or a
        dataset name or structure file resolved like ``evaluate --train`` (its train split).
        """
        name = self.spec.train
        if name == "auto":
            from crystalforge.pretrained import list_models

            card = list_models().get(self.spec.model)
            name = str(card["dataset"]) if card and card.get("dataset") else "none"
            if name == "none":
                log.warning("model %s is not a shipped model: no novelty check (set train)", self.spec.model)
        if name == "none":
            return None
        from crystalforge.data.resolve import resolve_train

        crystals, self.train_name = resolve_train(name, None, None, self.workers)
        return None if crystals is None else TrainingSet(crystals, time_limit_s=time_limit_from_env())

    @property
    def hull(self) -> ReferenceHull:
        """The reference hull (the shipped CHGNet hull unless one was given)."""
        if self.reference_hull is None:
            self.reference_hull = ReferenceHull.load()
        return self.reference_hull


# ---- helpers ---------------------------------------------------------------------------------------
def _chunks(keys: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(keys), size):
        check_interrupted()  # a Ctrl-C that library code swallowed stops the stage here
        yield list(keys[start : start + size])


def _crystals(store: CandidateStore, keys: Sequence[str]) -> list[Crystal]:
    crystals = [c.crystal for c in store.candidates(keys)]
    assert all(c is not None for c in crystals), "pending candidates always hold a structure"
    return [c for c in crystals if c is not None]


def stage_bar(ctx: DesignContext, total: int, desc: str) -> ProgressBar:
    """A bar for a stage with work to do (nothing to show for a finished stage)."""
    return ctx.progress(total, desc) if total else null_progress(total, desc)


def min_distance(crystal: Crystal, cutoff: float = DISTANCE_CUTOFF) -> float:
    """The shortest distance between two different atoms over periodic images (Å; NaN beyond ``cutoff``)."""
    if crystal.num_atoms < 2 or not crystal.volume > 0:
        return math.nan
    cell, cost = search_cell(crystal, cutoff)
    if not cost <= 50_000_000:  # a degenerate cell: the validity check reports it
        return math.nan
    hit = closest_pair_blocked(cell, cutoff, 2_000_000)
    return math.nan if hit is None else hit[0]


# ---- filter ----------------------------------------------------------------------------------------
def filter_candidates(ctx: DesignContext) -> int:
    """Structure validity (volume, ``min_distance``), SMACT composition validity, allowed elements."""
    spec, store = ctx.spec, ctx.store
    keys = store.pending("filter", upto_round=ctx.upto_round)
    allowed = {e.strip() for e in spec.element_list.split(",")} if spec.element_list else None
    bar = stage_bar(ctx, len(keys), "filter")
    try:
        for chunk in _chunks(keys, CHUNK):
            crystals = _crystals(store, chunk)
            verdicts = structure_validity_many(crystals, min_distance=spec.min_distance)
            for key, crystal, struct in zip(chunk, crystals, verdicts, strict=True):
                comp = composition_validity(crystal.composition)
                reasons = [] if struct.valid else [struct.reason]
                if spec.comp_valid and not comp.valid:
                    reasons.append(f"composition: {comp.reason}")
                extra = sorted(set(crystal.composition) - allowed) if allowed is not None else []
                if extra:
                    reasons.append(f"elements {', '.join(extra)} not allowed")
                values: dict[str, object] = {
                    "min_distance": min_distance(crystal),
                    "struct_valid": struct.valid,
                    "comp_valid": comp.valid,
                }
                if reasons:
                    values["reason"] = "; ".join(reasons)
                store.record("filter", key, values, status="rejected" if reasons else "done")
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)


# ---- dedupe ----------------------------------------------------------------------------------------
def dedupe(ctx: DesignContext) -> int:
    """Duplicates of earlier candidates (structure matching) and matches of the training set (novelty).

    A cell reduction gets at most ``$CRYSTALFORGE_TIME_LIMIT_S`` (as ``evaluate``); over it: first of its kind.
    Candidates are compared with every earlier first-of-its-kind candidate (all rounds, as generated)
    and with each other in store order; the first of a kind stays, later ones are ``rejected`` with
    ``dedupe_duplicate_of``. A first-of-its-kind candidate that fits a training structure gets
    ``dedupe_novel = False`` and ``dedupe_match`` (and is rejected when ``novel_only``).
    """
    store, spec = ctx.store, ctx.spec
    keys = store.pending("dedupe", after=["filter"], upto_round=ctx.upto_round)
    if not keys:
        return 0
    table = store.table()
    reps = [str(r["cid"]) for r in table if r.get("dedupe") is not None and r.get("dedupe_duplicate_of") == ""]
    rep_crystals = store.initial_crystals(reps)
    train, limit = ctx.training_set, time_limit_from_env()
    bar = stage_bar(ctx, len(keys), "dedupe")
    try:
        for chunk in _chunks(keys, CHUNK):
            crystals = _crystals(store, chunk)
            found = uniqueness([*rep_crystals, *crystals], workers=ctx.workers, time_limit_s=limit).structures
            found = found[len(reps) :]
            names = [*reps, *chunk]
            firsts = [i for i, s in enumerate(found) if s.unique]
            verdict = {}
            if train is not None and firsts:
                novel = novelty([crystals[i] for i in firsts], train, workers=ctx.workers, time_limit_s=limit)
                verdict = dict(zip(firsts, novel.structures, strict=True))
            for i, (key, result) in enumerate(zip(chunk, found, strict=True)):
                if not result.unique:
                    rep = names[result.representative] if result.representative is not None else ""
                    values: dict[str, object] = {"duplicate_of": rep, "novel": False, "match": "",
                                                 "reason": f"duplicate of {rep}"}  # fmt: skip
                    store.record("dedupe", key, values, status="rejected")
                    continue
                n = verdict.get(i)
                values = {"duplicate_of": "", "novel": None if n is None else n.novel,
                          "match": "" if n is None or n.matched_id is None else n.matched_id}  # fmt: skip
                rejected = n is not None and not n.novel and spec.novel_only
                if rejected:
                    values["reason"] = f"matches training structure {values['match']} ({ctx.train_name})"
                store.record("dedupe", key, values, status="rejected" if rejected else "done")
                reps.append(key)
                rep_crystals.append(crystals[i])
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)


# ---- screen and predict: the surrogate -------------------------------------------------------------
def screen_windows(ctx: DesignContext) -> list[PropertyTarget]:
    """The screen's windows: the targets, plus ``e_above_hull <= screen_stability`` when the predictor has it."""
    windows = ctx.spec.windows
    bound = ctx.spec.screen_stability
    names = {t.name for t in windows}
    if bound is not None and "e_above_hull" in ctx.predictor.properties and "e_above_hull" not in names:
        windows.append(PropertyTarget("e_above_hull", None, bound))
    return windows


def _predictions(model: PredictorEnsemble, crystals: Sequence[Crystal]) -> tuple[list[dict[str, object]], np.ndarray]:
    """Per crystal ``{<prop>_mean, <prop>_std}`` and the predictive arrays' mean ``[n, P]``."""
    mean, std = predict_crystals(model, crystals)
    names = model.properties
    rows: list[dict[str, object]] = [
        {**{f"{p}_mean": float(mean[i, k]) for k, p in enumerate(names)},
         **{f"{p}_std": float(std[i, k]) for k, p in enumerate(names)}}
        for i in range(len(crystals))
    ]  # fmt: skip
    return rows, np.stack([mean, std])


def screen(ctx: DesignContext) -> int:
    """The surrogate on the as-generated structures: ``screen_<prop>_mean/std``, the pre-rank cost ``screen_score``.

    ``screen_score`` is ``-log P(every screen window is hit)`` under the predictor's Gaussian (0 without
    windows): the relax stage takes the lowest first. ``screen_surrogate`` names the model: the
    predictor, or the fine-tuned surrogate of active learning (``ctx.screener``).
    """
    store = ctx.store
    keys = store.pending("screen", after=["filter", "dedupe"], upto_round=ctx.upto_round)
    windows = screen_windows(ctx) if keys else []
    model, name = ctx.screener or ctx.predictor, ctx.screener_name or ctx.spec.predictor
    bar = stage_bar(ctx, len(keys), "screen")
    try:
        for chunk in _chunks(keys, CHUNK):
            rows, arrays = _predictions(model, _crystals(store, chunk))
            if windows:
                mean, std = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1])
                scores = (-objective(mean, std, ctx.predictor.properties, windows)).tolist()
            else:
                scores = [0.0] * len(chunk)
            for key, row, score in zip(chunk, rows, scores, strict=True):
                store.record("screen", key, {**row, "score": float(score), "surrogate": name})
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)


def predict(ctx: DesignContext) -> int:
    """The predictor on the relaxed structures: ``predict_<prop>_mean/std`` and ``predict_in_window``."""
    store = ctx.store
    keys = store.pending("predict", after=["hull"], upto_round=ctx.upto_round)
    windows = ctx.spec.windows
    bar = stage_bar(ctx, len(keys), "predict")
    try:
        for chunk in _chunks(keys, CHUNK):
            rows, arrays = _predictions(ctx.predictor, _crystals(store, chunk))
            columns = [ctx.predictor.properties.index(t.name) for t in windows]
            for i, (key, row) in enumerate(zip(chunk, rows, strict=True)):
                inside = all(t.contains(float(arrays[0][i, k])) for t, k in zip(windows, columns, strict=True))
                store.record("predict", key, {**row, "in_window": inside})
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)


# ---- relax and hull ------------------------------------------------------------------------------
def relax_selection(rows: Sequence[Mapping[str, object]], count: int) -> list[str]:
    """The ``count`` screened candidates with the lowest ``screen_score`` (ties and NaN: store order)."""
    screened = [r for r in rows if r.get("screen") == "done"]

    def score(row: Mapping[str, object]) -> float:
        value = row.get("screen_score")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    ordered = sorted(range(len(screened)), key=lambda i: (score(screened[i]), i))
    return [str(screened[i]["cid"]) for i in ordered[:count]]


def relax(ctx: DesignContext, select: Callable[[Sequence[Mapping[str, object]]], list[str]] | None = None) -> int:
    """Relax the best ``relax_count`` candidates by screen score (or ``select(table)``) without a relax result yet.

    The rest stay pending: a rerun with a larger ``relax_budget`` (or new, better candidates after a
    raised ``budget``) relaxes them. A successful relaxation replaces the stored structure (the
    as-generated one stays in ``data["initial"]``); a failed one is recorded as ``failed``.
    """
    store, spec = ctx.store, ctx.spec
    rows = store.table()
    done = {str(r["cid"]) for r in rows if r.get("relax") is not None}
    chosen = select(rows) if select is not None else relax_selection(rows, spec.relax_count)
    keys = [k for k in chosen if k not in done]
    if not keys:
        return 0
    if ctx.relaxer is None:
        raise RuntimeError("the relax stage has candidates to relax but no relaxer")
    size = ctx.workers.workers if isinstance(ctx.workers, ExecutorConfig) else ctx.workers
    bar = stage_bar(ctx, len(keys), "relax")
    try:
        for chunk in _chunks(keys, max(1, size)):
            crystals = _crystals(store, chunk)
            results = ctx.relaxer.relax(crystals)
            if len(results) != len(chunk):
                raise RuntimeError(f"the relaxer returned {len(results)} results for {len(chunk)} structures")
            for key, crystal, result in zip(chunk, crystals, results, strict=True):
                if not result.ok or result.crystal is None:
                    values = {"error": result.failure or "no structure or energy", "steps": int(result.steps)}
                    store.record("relax", key, values, status="failed")
                    continue
                relaxed = result.crystal.replace(material_id=crystal.material_id)
                symbol = space_group(relaxed, symprec=SYMPREC).symbol
                values = {
                    "energy_per_atom": float(result.energy_per_atom),
                    "rmsd": relaxation_rmsd(crystal, relaxed),
                    "steps": int(result.steps),
                    "converged": bool(result.converged),
                    "space_group": symbol or "",
                }
                store.record("relax", key, values, crystal=relaxed)
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)


def hull(ctx: DesignContext) -> int:
    """Energy above the reference hull of each relaxed candidate (``rejected`` when it cannot be computed)."""
    store, spec = ctx.store, ctx.spec
    keys = store.pending("hull", after=["relax"], upto_round=ctx.upto_round)
    bar = stage_bar(ctx, len(keys), "hull")
    try:
        for chunk in _chunks(keys, CHUNK):
            for candidate, key in zip(store.candidates(chunk), chunk, strict=True):
                assert candidate.crystal is not None
                energy = float(candidate.stages["relax"]["energy_per_atom"])
                e_hull, why = ctx.hull.e_above_hull_with_reason(candidate.crystal.composition, energy)
                values: dict[str, object] = {"e_above_hull": e_hull}
                if not math.isfinite(e_hull):
                    values["reason"] = why
                elif spec.max_e_above_hull is not None and e_hull > spec.max_e_above_hull:
                    values["reason"] = f"E_hull {e_hull:.3f} eV/atom above {spec.max_e_above_hull:g}"
                store.record("hull", key, values, status="rejected" if "reason" in values else "done")
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(keys)
