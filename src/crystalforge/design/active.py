"""Rounds and active learning of ``crystalforge design`` (docs/design.md, "Rounds and active learning").

With ``rounds = R`` the budget is split into R generation rounds (sizes differ by at most one) and
the relax budget over them in proportion to their sizes. Each round runs generate → filter →
dedupe → screen → relax → hull → predict before the next one starts, and relaxes the best of its
*own* screened candidates: a round's screen scores come from one surrogate, and scores from
surrogates of different rounds are not on one scale.

With ``active_learning``, each round ends with a fine-tune of the screen's stability head
(``e_above_hull``) on every (as-generated structure → relaxed E_hull) pair collected so far (the
screen reads the as-generated structure, so that is the input to learn from; the label is the
hull stage's MLIP E_hull). The fine-tune (``predictors.training.fine_tune_heads``) starts from the
spec's predictor each time, not from the previous round's surrogate: every surrogate is then a
function of the base model and the pairs, and an early round's few labels cannot compound. Only
the stability rows of the output layer change, so the other properties' predictions, and the
predict stage (always the spec's predictor: the judge of the properties, comparable across rounds
and runs), stay as they are. The surrogate is saved atomically as ``RUN/surrogate/round_<r>.pt``;
round r is screened by the latest one saved before it (the base predictor for round 0). A saved
surrogate is never refitted: it holds its statistics in its ``record``, so a resumed run rebuilds
the round records from the files. Rounds already screened are not re-screened: their screen
scores stay what chose their relaxations.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from crystalforge.design.generation import Batch
from crystalforge.design.rank import rank
from crystalforge.design.spec import E_HULL_SCALE, STABILITY, DesignSpec, SpecError
from crystalforge.design.stages import (
    DesignContext,
    dedupe,
    filter_candidates,
    hull,
    predict,
    relax,
    relax_selection,
    screen,
)
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.training import FineTuneConfig, fine_tune_heads, predict_crystals

__all__ = [
    "SURROGATE_DIR", "check_stability_head", "fine_tune_round", "relax_shares", "round_records", "round_selection",
    "rounds_summary", "run_rounds", "split_evenly", "surrogate_path", "use_surrogate",
]  # fmt: skip

log = logging.getLogger(__name__)

SURROGATE_DIR = "surrogate"
"""``RUN/surrogate/round_<r:03d>.pt``: the surrogate fine-tuned after round r."""

Row = Mapping[str, object]


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` sizes differing by at most one, the larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def relax_shares(sizes: Sequence[int], count: int) -> list[int]:
    """Relaxations per round: ``count`` spread in proportion to the round sizes (cumulative rounding)."""
    total, out, done, running = sum(sizes), [], 0, 0
    for size in sizes:
        running += size
        upto = (count * running + total // 2) // total if total else 0
        out.append(upto - done)
        done = upto
    return out


def round_selection(rows: Sequence[Row], *, index: int, count: int) -> list[str]:
    """The ``count`` best screened candidates of round ``index`` (``relax_selection`` within the round)."""
    return relax_selection([r for r in rows if r.get("round") == index], count)


def surrogate_path(run: Path, index: int) -> Path:
    """Where the surrogate fine-tuned after round ``index`` is saved."""
    return run / SURROGATE_DIR / f"round_{index:03d}.pt"


def check_stability_head(spec: DesignSpec, predictor: PredictorEnsemble) -> None:
    """Active learning fine-tunes ``e_above_hull``: refuse a predictor without it, before any work."""
    if spec.active_learning and STABILITY not in predictor.properties:
        raise SpecError(
            f"design spec: active_learning fine-tunes the predictor's {STABILITY}, but {spec.predictor!r} "
            f"predicts only {', '.join(predictor.properties)}: use a predictor with {STABILITY} (mp_20-properties)"
        )


def use_surrogate(ctx: DesignContext, index: int) -> None:
    """Screen round ``index`` with the latest surrogate saved before it (none saved: the predictor)."""
    for r in range(index - 1, -1, -1):
        path = surrogate_path(ctx.run, r)
        if path.is_file():
            ctx.screener, ctx.screener_name = PredictorEnsemble.load(path), f"{SURROGATE_DIR}/{path.name}"
            return
    ctx.screener, ctx.screener_name = None, None


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _mae(predicted: Sequence[float], actual: Sequence[float]) -> float | None:
    errors = [abs(p - a) for p, a in zip(predicted, actual, strict=True) if math.isfinite(p - a)]
    return round(statistics.fmean(errors), 6) if errors else None


def _pairs(table: Sequence[Row], upto: int) -> list[Row]:
    """Candidates of rounds ``<= upto`` with a finite hull-stage E_hull, in store order."""
    return [r for r in table if _number(r.get("round")) <= upto and math.isfinite(_number(r.get("hull_e_above_hull")))]


def fine_tune_round(ctx: DesignContext, index: int, table: Sequence[Row]) -> dict[str, object] | None:
    """Fine-tune the stability head on the pairs of rounds ``<= index`` and save it (a saved one is reused).

    Returns the round's ``fine_tune`` record (None without any pair yet: nothing is saved, the next
    round keeps the current surrogate). ``mae_before`` is the screen's E_hull error on this round's
    new pairs (predicted before this fine-tune: an honest test of the previous surrogate),
    ``mae_after`` that of the new surrogate on them, ``mae_base`` that of the spec's predictor.
    """
    path = surrogate_path(ctx.run, index)
    if not path.is_file():
        pairs = _pairs(table, index)
        if not pairs:
            return None
        t0, base = time.perf_counter(), ctx.predictor
        crystals = ctx.store.initial_crystals([str(r["cid"]) for r in pairs])
        labels = np.full((len(pairs), len(base.properties)), np.nan)
        k = base.properties.index(STABILITY)
        labels[:, k] = [_number(r["hull_e_above_hull"]) for r in pairs]
        settings = FineTuneConfig(epochs=ctx.spec.fine_tune_epochs, lr=ctx.spec.fine_tune_lr, seed=ctx.spec.seed)
        tuned = fine_tune_heads(base, crystals, labels, settings)
        new = [i for i, r in enumerate(pairs) if r.get("round") == index]
        new_crystals, actual = [crystals[i] for i in new], [float(labels[i, k]) for i in new]
        after = predict_crystals(tuned, new_crystals)[0][:, k].tolist() if new else []
        shipped = predict_crystals(base, new_crystals)[0][:, k].tolist() if new else []
        before = [_number(pairs[i].get(f"screen_{STABILITY}_mean")) for i in new]
        tuned.record["design"] = {
            "round": index, "base": ctx.spec.predictor, "new_pairs": len(new), "mae_before": _mae(before, actual),
            "mae_after": _mae(after, actual), "mae_base": _mae(shipped, actual),
            "seconds": round(time.perf_counter() - t0, 3),
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tuned.save(path)
        log.info("round %d: surrogate fine-tuned on %d pairs -> %s", index, len(pairs), path)
    record = PredictorEnsemble.load(path).record
    fine, design = dict(record.get("fine_tune", {})), dict(record.get("design", {}))
    settings_used = dict(fine.get("settings", {}))
    cv = dict(fine.get("cv_mae", {})).get(STABILITY)
    return {
        "surrogate": f"{SURROGATE_DIR}/{path.name}", "pairs": fine.get("pairs"), "new_pairs": design.get("new_pairs"),
        "epochs": settings_used.get("epochs"), "lr": settings_used.get("lr"), "seconds": design.get("seconds"),
        "mae_before": design.get("mae_before"), "mae_after": design.get("mae_after"),
        "mae_base": design.get("mae_base"), "mae_cv": None if cv is None else round(float(cv), 6),
        "calibration": dict(fine.get("calibration", {})).get(STABILITY),
    }  # fmt: skip


def top_record(spec: DesignSpec, rows: Sequence[Row]) -> dict[str, object]:
    """The round's own top ``spec.top`` by the run's ranking: hit rate, median E_hull, metastable fraction.

    A hit is a candidate inside every target window (``predict_in_window``) and metastable (E_hull
    <= 0.1 eV/atom); without targets, a hit is a metastable candidate.
    """
    rows = [r for r in rows if r.get("predict") == "done"]
    if not rows:
        return {"n": 0, "hit_rate": None, "median_e_hull": None, "metastable_fraction": None}
    order = rank(rows, spec.ranking_objectives(), by=spec.ranking).order[: spec.top]
    e_hull = [_number(rows[i].get("hull_e_above_hull")) for i in order]
    stable = [e <= E_HULL_SCALE for e in e_hull]
    hits = [s and rows[i].get("predict_in_window") is True for s, i in zip(stable, order, strict=True)]
    return {"n": len(order), "hit_rate": round(sum(hits) / len(order), 4),
            "median_e_hull": round(statistics.median(e_hull), 6),
            "metastable_fraction": round(sum(stable) / len(order), 4)}  # fmt: skip


def round_records(
    ctx: DesignContext, sizes: Sequence[int], fine: Mapping[int, dict[str, object] | None]
) -> list[dict[str, object]]:
    """Per round: sizes, counts, the surrogate that screened it, its screen MAE, the fine-tune and its top."""
    table = ctx.store.table()
    out: list[dict[str, object]] = []
    for r, size in enumerate(sizes):
        rows = [row for row in table if row.get("round") == r]
        names = sorted({str(row["screen_surrogate"]) for row in rows if row.get("screen_surrogate") is not None})
        pairs = _pairs(rows, r)
        before = [_number(p.get(f"screen_{STABILITY}_mean")) for p in pairs]
        out.append({
            "round": r, "size": size, "generated": len(rows),
            "screened": sum(row.get("screen") == "done" for row in rows),
            "relaxed": sum(row.get("relax") == "done" for row in rows), "surrogate": ", ".join(names) or None,
            "screen_mae": _mae(before, [_number(p["hull_e_above_hull"]) for p in pairs]),
            "fine_tune": fine.get(r), "top": top_record(ctx.spec, rows),
        })  # fmt: skip
    return out


def run_rounds(
    ctx: DesignContext,
    sizes: Sequence[int],
    batches: Sequence[Batch],
    *,
    generation: Callable[[Sequence[Batch]], None],
    timed: Callable[[str, Callable[[], object]], None],
    save: Callable[[list[dict[str, object]]], None],
) -> list[dict[str, object]]:
    """Run the rounds one after another (each: generate … predict, then the fine-tune); return the round records.

    ``generation(batches)`` generates and stores batches, ``timed(stage, work)`` runs a stage and
    records its time, ``save(records)`` writes the records (``design.json``) after every round.
    """
    shares = relax_shares(sizes, ctx.spec.relax_count)
    fine: dict[int, dict[str, object] | None] = {}
    records: list[dict[str, object]] = []
    try:
        for r in range(len(sizes)):
            ctx.upto_round = r  # a resumed run may hold later rounds' batches already: not this round's work
            if ctx.spec.active_learning:
                use_surrogate(ctx, r)
            timed("generate", partial(generation, [b for b in batches if b.round == r]))
            for name, stage in (("filter", filter_candidates), ("dedupe", dedupe), ("screen", screen)):
                timed(name, partial(stage, ctx))
            timed("relax", partial(relax, ctx, partial(round_selection, index=r, count=shares[r])))
            timed("hull", partial(hull, ctx))
            timed("predict", partial(predict, ctx))
            if ctx.spec.active_learning:
                fine[r] = fine_tune_round(ctx, r, ctx.store.table())
            records = round_records(ctx, sizes, fine)
            save(records)
    finally:
        ctx.upto_round = None
    return records


def rounds_summary(records: Sequence[Mapping[str, object]]) -> str:
    """One clause for the run's summary line: the screen's E_hull MAE and the top's hit rate per round."""
    if len(records) < 2 and not any(r.get("fine_tune") for r in records):
        return ""

    def chain(values: Sequence[object], digits: int) -> str:
        return " → ".join(f"{v:.{digits}f}" if isinstance(v, (int, float)) else "?" for v in values)

    def field(name: str, key: str) -> list[object]:
        return [v.get(key) if isinstance(v := r.get(name), Mapping) else None for r in records]

    mae, hits = chain([r.get("screen_mae") for r in records], 3), chain(field("top", "hit_rate"), 2)
    if not any(r.get("fine_tune") for r in records):
        return f"; rounds: screen E_hull MAE {mae} eV/atom, round-top hit rate {hits}"
    base = chain(field("fine_tune", "mae_base"), 3)
    return (f"; rounds (active learning): screen E_hull MAE {mae} eV/atom (the shipped predictor on the same "
            f"candidates: {base}), round-top hit rate {hits}")  # fmt: skip
