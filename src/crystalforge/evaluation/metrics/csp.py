"""CSP match rate and RMSE of predicted structures against their references (CDVAE / DiffCSP), and its suite adapter.

The rule follows the published protocols (``docs/metrics.md``, section "CSP match rate and RMSE"):
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``; a prediction matches its reference when
``get_rms_dist(prediction, reference)`` is not None; its RMSE is the first element (RMS
displacement over ``(V/N)^(1/3)``). Match rate is over all references; RMSE is the mean over
matched references of the best RMS among their first ``k`` predictions. An exception raised by
pymatgen counts as no match (as both scripts do); so does a pair whose matching runs past the
per-structure time limit (``get_rms_dist`` Niggli-reduces both cells), flagged ``aborted``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.versions import distribution_version
from crystalforge.evaluation.metrics.base import MetricResult
from crystalforge.evaluation.metrics.structure_matcher import (
    CSP_ANGLE_TOL,
    CSP_LTOL,
    CSP_STOL,
    FITS_PER_TASK,
    PYMATGEN_MODULES,
    MatcherSettings,
    check_workers,
    error_text,
    formula_key,
    parallel_map,
    percent,
)
from crystalforge.evaluation.metrics.validity import reference_validity, valid_mask
from crystalforge.execution import ExecutorConfig
from crystalforge.execution.time_limit import StepAbortedError, map_with_time_limit

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.evaluation.context import EvaluationContext

__all__ = ["CSPMatchMetric", "MatchResult", "MatchRule", "PredictionMatch", "ReferenceMatch", "csp_match"]

MatchRule = Literal["diffcsp", "cdvae"]
"""Which validity a CSP pair needs: ``"diffcsp"`` both prediction and reference, ``"cdvae"`` the prediction."""

_REASON_RANK = (
    "no match",
    "matcher error",
    "composition differs",
    "invalid prediction",
    "invalid reference",
    "no prediction",
)
"""Why a reference is unmatched, most informative first (a reference takes its best prediction's reason)."""


@dataclass(frozen=True)
class PredictionMatch:
    """One prediction compared with its reference.

    ``reason`` is ``"match"``, ``"no match"``, ``"composition differs"``, ``"invalid prediction"``,
    ``"invalid reference"``, ``"no prediction"`` (a None entry) or ``"matcher error: ..."``.
    """

    material_id: str  # the reference's id
    index: int  # position among that reference's predictions
    matched: bool
    rms: float | None  # normalised RMS displacement when matched
    reason: str
    aborted: bool = False  # matching was stopped (over the time limit): no match


@dataclass(frozen=True)
class ReferenceMatch:
    """One reference: matched by any of its first ``k`` predictions, and the best RMS among them."""

    material_id: str
    matched: bool
    rms: float | None  # smallest RMS over its matching predictions
    best_index: int | None  # the prediction that gave it
    num_predictions: int  # entries considered (None entries included)
    reason: str  # "match", "no prediction", "invalid reference", or its most informative prediction reason


@dataclass(frozen=True)
class MatchResult:
    """CSP match rate (percent of all references) and RMSE (mean best RMS over matched references)."""

    match_rate: float
    rmse: float
    num_references: int
    num_matched: int
    references: tuple[ReferenceMatch, ...]
    predictions: tuple[PredictionMatch, ...]
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def at_k(self, k: int) -> tuple[float, float]:
        """``(match_rate, rmse)`` from each reference's first ``k`` predictions only (no rematching)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        best: dict[str, float] = {}
        for p in self.predictions:
            if p.index < k and p.matched and p.rms is not None:
                best[p.material_id] = min(best.get(p.material_id, math.inf), p.rms)
        rms = list(best.values())
        return percent(len(rms), self.num_references), float(np.mean(rms)) if rms else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): the summary, the protocol and one row per reference and prediction."""
        return {
            "match_rate": self.match_rate,
            "rmse": self.rmse,
            "num_references": self.num_references,
            "num_matched": self.num_matched,
            "protocol": dict(self.protocol),
            "references": [asdict(r) for r in self.references],
            "predictions": [asdict(p) for p in self.predictions],
        }


MATCH_STEP = "structure matching"  # the step named in a CSP pair's time-out reason
_Outcome = tuple[float | None, str | None, bool]  # (rms or None, error text or None, aborted) of one pair


def _rms_pair(settings: MatcherSettings, pair: tuple[Crystal, Crystal]) -> _Outcome:
    prediction, reference = pair
    try:
        result = settings.matcher().get_rms_dist(prediction.to_pymatgen(), reference.to_pymatgen())
        return None if result is None else float(result[0]), None, False
    except Exception as exc:  # noqa: BLE001 - CDVAE / DiffCSP count an exception as no match
        return None, error_text(exc), False


def _rms_chunk(task: tuple[MatcherSettings, list[tuple[Crystal, Crystal]], float | None]) -> list[_Outcome]:
    settings, pairs, seconds = task
    rms = partial(_rms_pair, settings)
    found = map_with_time_limit(rms, pairs, seconds=seconds, step=MATCH_STEP, preload=PYMATGEN_MODULES)
    return [(None, str(r), True) if isinstance(r, StepAbortedError) else r for r in found]


def csp_match(
    predictions: Mapping[str, Sequence[Crystal | None]],
    references: Sequence[Crystal],
    *,
    k: int | None = None,
    rule: MatchRule = "diffcsp",
    pred_valid: Mapping[str, Sequence[bool]] | None = None,
    ref_valid: Sequence[bool] | np.ndarray | None = None,
    ltol: float = CSP_LTOL,
    stol: float = CSP_STOL,
    angle_tol: float = CSP_ANGLE_TOL,
    primitive_cell: bool = True,
    scale: bool = True,
    attempt_supercell: bool = False,
    workers: int | ExecutorConfig = 1,
    time_limit_s: float | None = None,
) -> MatchResult:
    """CSP match rate and RMSE of predicted structures against their references (best of ``k``).

    A pair is compared only when its validity allows it (``rule``) and the reduced compositions
    agree (otherwise pymatgen cannot match it); then ``get_rms_dist(prediction, reference)`` decides.

    Args:
        predictions: reference ``material_id`` → its predictions in order (None where generation
            failed). A reference without an entry has no prediction and counts as unmatched.
        references: the ground-truth crystals, each with a distinct ``material_id``.
        k: use each reference's first ``k`` predictions (None: all given).
        rule: ``"diffcsp"`` counts a pair only when prediction and reference are both valid;
            ``"cdvae"`` needs only the prediction valid.
        pred_valid: validity flags parallel to ``predictions`` (None: every prediction is valid).
        ref_valid: validity flags parallel to ``references`` (None: every reference is valid).
        ltol: ``StructureMatcher`` fractional length tolerance.
        stol: ``StructureMatcher`` site tolerance (also the RMS threshold).
        angle_tol: ``StructureMatcher`` angle tolerance in degrees.
        primitive_cell: reduce to primitive cells before matching.
        scale: scale both cells to the same volume before matching.
        attempt_supercell: try supercells when primitive site counts differ.
        workers: processes for the pymatgen calls (1: in this process), or an executor config.
        time_limit_s: seconds one pair's matching may take (None: no limit); a pair over it is
            no match, ``aborted``, with reason ``matcher error: timed out after N s in structure matching``.

    Returns:
        The summary, one row per reference and per prediction considered, and the protocol.

    Raises:
        ValueError: for duplicate or missing reference ids, predictions of an unknown reference,
            flags whose lengths disagree with their structures, ``k < 1`` or an unknown rule.

    """
    if rule not in ("diffcsp", "cdvae"):
        raise ValueError(f"rule must be 'diffcsp' or 'cdvae', got {rule!r}")
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be None or an integer >= 1, got {k!r}")
    check_workers(workers)
    settings = MatcherSettings(ltol, stol, angle_tol, primitive_cell, scale, attempt_supercell)
    if any(r.material_id is None for r in references):
        raise ValueError("every reference needs a material_id (predictions are keyed by it)")
    ids = [str(r.material_id) for r in references]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate reference material_ids: {dupes}")
    unknown = sorted(set(predictions) - set(ids))
    if unknown:
        raise ValueError(f"{len(unknown)} prediction keys name no reference, e.g. {unknown[:5]}")
    if ref_valid is not None and len(ref_valid) != len(references):
        raise ValueError(f"ref_valid has {len(ref_valid)} flags for {len(references)} references")
    if pred_valid is not None:
        for mid, preds in predictions.items():
            flags = pred_valid.get(mid)
            if flags is None or len(flags) != len(preds):
                got = "no" if flags is None else len(flags)
                raise ValueError(f"pred_valid[{mid!r}] has {got} flags for {len(preds)} predictions")

    # Decide what can be decided without pymatgen; collect the pairs that need it.
    rows: list[list[Any]] = []  # [material_id, index, rms, reason, aborted]; filled later for pairs
    pairs: list[tuple[int, Crystal, Crystal]] = []
    for r_idx, reference in enumerate(references):
        mid = str(reference.material_id)
        preds = list(predictions.get(mid, ()))[:k]
        flags = list(pred_valid.get(mid, ()))[:k] if pred_valid is not None else [True] * len(preds)
        ref_ok = True if ref_valid is None else bool(ref_valid[r_idx])
        ref_key = formula_key(reference)
        for p_idx, (pred, ok) in enumerate(zip(preds, flags, strict=True)):
            if pred is None:
                reason = "no prediction"
            elif rule == "diffcsp" and not ref_ok:
                reason = "invalid reference"
            elif not ok:
                reason = "invalid prediction"
            elif formula_key(pred) != ref_key:
                reason = "composition differs"
            else:
                reason = ""
                pairs.append((len(rows), pred, reference))
            rows.append([mid, p_idx, None, reason, False])

    n_workers = check_workers(workers).workers
    size = max(1, min(FITS_PER_TASK // 4, math.ceil(len(pairs) / max(1, 4 * n_workers))))
    tasks = [(settings, [(p, r) for _, p, r in pairs[i : i + size]], time_limit_s) for i in range(0, len(pairs), size)]
    outcomes = [o for chunk in parallel_map(_rms_chunk, tasks, workers) for o in chunk]
    for (row_idx, _, _), (rms, error, aborted) in zip(pairs, outcomes, strict=True):
        rows[row_idx][2] = rms
        rows[row_idx][3] = f"matcher error: {error}" if error else ("no match" if rms is None else "match")
        rows[row_idx][4] = aborted

    prediction_rows = tuple(
        PredictionMatch(material_id=m, index=i, matched=reason == "match", rms=rms, reason=reason, aborted=stopped)
        for m, i, rms, reason, stopped in rows
    )
    by_ref: dict[str, list[PredictionMatch]] = {}
    for p in prediction_rows:
        by_ref.setdefault(p.material_id, []).append(p)
    reference_rows = []
    for r_idx, reference in enumerate(references):
        mid = str(reference.material_id)
        mine = by_ref.get(mid, [])
        hits = [p for p in mine if p.matched and p.rms is not None]
        if hits:
            best = min(hits, key=lambda p: (p.rms, p.index))
            reference_rows.append(ReferenceMatch(mid, True, best.rms, best.index, len(mine), "match"))
            continue
        ref_ok = True if ref_valid is None else bool(ref_valid[r_idx])
        if rule == "diffcsp" and not ref_ok:
            reason = "invalid reference"
        elif not mine:
            reason = "no prediction"
        else:
            reason = min((p.reason for p in mine), key=lambda s: _REASON_RANK.index(s.split(":")[0]))
        reference_rows.append(ReferenceMatch(mid, False, None, None, len(mine), reason))

    matched_rms = [r.rms for r in reference_rows if r.matched and r.rms is not None]
    protocol = {
        "metric": "csp_match",
        **settings.as_dict(),
        "rule": rule,
        "k": k,
        "max_predictions_per_reference": max((r.num_predictions for r in reference_rows), default=0),
        "pred_valid_given": pred_valid is not None,
        "ref_valid_given": ref_valid is not None,
        "rms": "get_rms_dist(prediction, reference)[0]: RMS displacement / (V/N)^(1/3); best of k per reference",
        "composition_prefilter": "pairs whose reduced compositions differ are not matched",
        "errors": "an exception from pymatgen counts as no match",
        "pymatgen_version": distribution_version("pymatgen"),
    }
    return MatchResult(
        match_rate=percent(len(matched_rms), len(references)),
        rmse=float(np.mean(matched_rms)) if matched_rms else math.nan,
        num_references=len(references),
        num_matched=len(matched_rms),
        references=tuple(reference_rows),
        predictions=prediction_rows,
        protocol=protocol,
    )


# ---- suite adapter ------------------------------------------------------------------------------------
class CSPMatchMetric:
    """Match rate and RMSE of predictions against their references, k=1 and best of k.

    k=1 uses DiffCSP's single-sample rule (prediction and reference both valid); best of k uses the
    rule of DiffCSP's multi-sample script (prediction valid; the reference's validity not checked).
    One matching pass serves both. Rates are over all references (the published denominator) and,
    beside them, over the references that have at least one prediction (a partial run).
    """

    name = "csp_match"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference and linked predictions."""
        if ctx.reference is None:
            return "no reference set"
        if not ctx.csp_groups():
            return "no sample is linked to a reference material_id"
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """One ``csp_match`` pass (rule "cdvae"), then k=1 under the DiffCSP rule from its rows."""
        assert ctx.reference is not None
        valid = valid_mask(ctx)
        groups = ctx.csp_groups()
        k = ctx.k or max(len(v) for v in groups.values())
        predictions = {g: [ctx.samples[i].crystal for i in idx[:k]] for g, idx in groups.items()}
        pred_valid = {g: [bool(valid[i]) for i in idx[:k]] for g, idx in groups.items()}
        ref_valid = reference_validity(ctx)
        result = csp_match(
            predictions,
            ctx.reference,
            k=k,
            rule="cdvae",
            pred_valid=pred_valid,
            ref_valid=ref_valid,
            workers=ctx.workers,
            time_limit_s=ctx.time_limit_s,
        )
        ref_ok = {c.material_id: bool(v) for c, v in zip(ctx.reference, ref_valid, strict=True)}
        first = [p for p in result.predictions if p.index == 0 and p.matched and ref_ok[p.material_id]]
        rms1 = [p.rms for p in first if p.rms is not None]
        n_ref, n_pred = result.num_references, len(groups)
        summary = {
            "match_rate": percent(len(rms1), n_ref),
            "rmse": float(np.mean(rms1)) if rms1 else math.nan,
            "match_rate_k": result.match_rate,
            "rmse_k": result.rmse,
            "match_rate_over_predicted": percent(len(rms1), n_pred),
            "match_rate_k_over_predicted": percent(result.num_matched, n_pred),
        }
        matched: list[Any] = [None] * ctx.n
        rms: list[Any] = [None] * ctx.n
        reason: list[Any] = ["not linked to a reference material_id"] * ctx.n
        for p in result.predictions:
            if p.material_id not in groups or p.index >= len(groups[p.material_id]):
                continue  # a reference without predictions: reported in details, no sample row
            i = groups[p.material_id][p.index]
            matched[i], rms[i], reason[i] = p.matched, p.rms, p.reason
            if p.aborted:
                ctx.note_aborted({i: p.reason})
        for idx in groups.values():
            for i in idx[k:]:
                reason[i] = f"beyond k={k}"
        details = {
            "k": k,
            "n_references": n_ref,
            "n_references_valid": int(np.sum(ref_valid)),
            "n_references_with_predictions": n_pred,
            "match_rate_over_predicted": summary["match_rate_over_predicted"],
            "match_rate_k_over_predicted": summary["match_rate_k_over_predicted"],
            "n_unlinked_samples": ctx.n - sum(len(v) for v in groups.values()),
            "references": [
                {
                    "material_id": r.material_id,
                    "matched": r.matched,
                    "rms": r.rms,
                    "best_index": r.best_index,
                    "reason": r.reason,
                }
                for r in result.references
            ],
        }
        protocol = {key: value for key, value in result.protocol.items() if key != "rule"}
        protocol.update(
            {
                "k": k,
                "rule_k1": "diffcsp: prediction and reference both valid",
                "rule_best_of_k": "diffcsp multi-sample script: prediction valid",
                "denominators": "match_rate, match_rate_k: all references; *_over_predicted: references "
                "with at least one prediction",
            }
        )
        return MetricResult(
            summary=summary,
            columns={"csp_matched": matched, "csp_rms": rms, "csp_reason": reason},
            details=details,
            protocol=protocol,
        )
