"""The evaluation suite: metrics as small objects over an ``EvaluationContext``, run into one report.

Each metric has a ``name``, the context inputs it ``requires`` and a call returning a
``MetricResult`` (summary numbers under the published keys, per-sample columns, details, protocol).
``run_evaluation`` runs every metric whose requirements the context meets; a metric that is
skipped says why in the protocol block, and a metric that fails on odd input never stops the run:
its exception is recorded and the other metrics still report.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.versions import distribution_version
from crystalforge.evaluation.context import EvaluationContext, group_members
from crystalforge.evaluation.features import cached_features
from crystalforge.evaluation.metrics.coverage import coverage
from crystalforge.evaluation.metrics.distribution import density_values, num_elements_values, property_wasserstein
from crystalforge.evaluation.metrics.matching import csp_match
from crystalforge.evaluation.metrics.stability import stability
from crystalforge.evaluation.metrics.symmetry import symmetry_report
from crystalforge.evaluation.metrics.targeting import target_success
from crystalforge.evaluation.report import MetricReport

FEATURE_CHUNK = 100
"""Crystals fingerprinted per resumable chunk (see ``cached_features``)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricResult:
    """What one metric adds to the report."""

    summary: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # name → one value per sample
    details: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)


class Metric(Protocol):
    """A metric of the suite."""

    name: str

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Why the context cannot feed this metric, or None when it can."""

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Compute the metric."""


def _scatter(ctx: EvaluationContext, indices: Sequence[int], values: Sequence[Any], fill: Any = None) -> list[Any]:
    """Spread values computed on a subset of samples back to one value per sample."""
    out = [fill] * ctx.n
    for i, v in zip(indices, values, strict=True):
        out[i] = v
    return out


def _parsed(ctx: EvaluationContext) -> tuple[list[int], list[Crystal]]:
    idx = ctx.parsed_indices()
    return idx, [ctx.samples[i].crystal for i in idx]  # type: ignore[misc]


# ---- metrics ------------------------------------------------------------------------------------
class ValidityMetric:
    """Structure, composition and overall validity (unreadable records count as invalid)."""

    name = "validity"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Percentages over all input records."""
        report = ctx.validity_report()
        idx = ctx.parsed_indices()
        struct = _scatter(ctx, idx, [c.struct_valid for c in report.crystals], False)
        comp = _scatter(ctx, idx, [c.comp_valid for c in report.crystals], False)
        reason = _scatter(ctx, idx, [c.reason for c in report.crystals], None)
        for i, s in enumerate(ctx.samples):
            if s.crystal is None:
                reason[i] = f"unreadable: {s.error}"
        valid = ctx.valid_mask().tolist()

        def pct(flags: list[bool]) -> float:
            return 100.0 * sum(flags) / len(flags) if flags else math.nan

        return MetricResult(
            summary={"validity_struct": pct(struct), "validity_comp": pct(comp), "validity": pct(valid)},
            columns={"struct_valid": struct, "comp_valid": comp, "valid": valid, "validity_reason": reason},
            protocol=dict(report.protocol),
        )


class CoverageMetric:
    """COV-R / COV-P of valid samples against the reference (CrystalNN + Magpie fingerprints)."""

    name = "coverage"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference, both featurizers and the cutoffs."""
        if ctx.reference is None:
            return "no reference set"
        if ctx.struct_featurizer is None or ctx.comp_featurizer is None:
            return "not requested (or no fingerprint featurizers given)"
        if ctx.coverage_cutoffs is None:
            return f"no published cutoffs for reference {ctx.reference_name!r}"
        return None

    def _features(self, ctx: EvaluationContext, crystals: Sequence[Crystal], label: str, cache: Path | None) -> tuple:
        out = []
        for featurizer in (ctx.struct_featurizer, ctx.comp_featurizer):
            bar = ctx.progress(None, f"{featurizer.name} fingerprints ({label})")
            try:
                out.append(cached_features(featurizer, crystals, cache_dir=cache, chunk_size=FEATURE_CHUNK))
            finally:
                bar.close()
        return tuple(out)

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Featurize the parsed samples and the (cached) reference, then count coverage."""
        assert ctx.reference is not None
        assert ctx.coverage_cutoffs is not None
        idx, crystals = _parsed(ctx)
        with ctx.timed("coverage.fingerprints_reference"):
            ref_struct, ref_comp = self._features(ctx, ctx.reference, str(ctx.reference_name), ctx.cache_dir)
        with ctx.timed("coverage.fingerprints_samples"):
            gen_struct, gen_comp = self._features(ctx, crystals, "samples", ctx.sample_cache_dir)
        valid = ctx.valid_mask()[idx]
        struct_cut, comp_cut = ctx.coverage_cutoffs
        result = coverage(
            gen_struct, gen_comp, ref_struct, ref_comp, struct_cutoff=struct_cut, comp_cutoff=comp_cut, gen_valid=valid
        )
        # The published scripts let every fingerprinted sample in, valid or not: report that too.
        literal = coverage(gen_struct, gen_comp, ref_struct, ref_comp, struct_cutoff=struct_cut, comp_cutoff=comp_cut)
        n_unread = ctx.n - len(idx)
        # COV-P divides by all generated crystals: unreadable records count in the denominator.
        scale = len(idx) / ctx.n if ctx.n else 0.0
        rows = result.per_generated()
        summary = {"cov_recall": result.cov_recall, "cov_precision": result.cov_precision * scale}
        details = {
            key: value
            for key, value in result.summary().items()
            if key not in ("cov_recall", "cov_precision", "protocol")
        }
        details.update(
            {
                "cov_recall_all_fingerprinted": literal.cov_recall,
                "cov_precision_all_fingerprinted": literal.cov_precision * scale,
                "n_unreadable": n_unread,
            }
        )
        columns = {key: _scatter(ctx, idx, [r[key] for r in rows]) for key in rows[0]} if rows else {}
        protocol = dict(result.protocol)
        protocol.update(
            {
                "reference": ctx.reference_name,
                "struct_fingerprint": ctx.struct_featurizer.name,
                "comp_fingerprint": ctx.comp_featurizer.name,
                "samples_entering": "valid samples with finite fingerprints (issue/METRICS-NOTES rule); "
                "the scripts' all-fingerprinted variant is in details",
            }
        )
        return MetricResult(summary=summary, columns=columns, details=details, protocol=protocol)


class PropertyDistributionMetric:
    """Wasserstein distances of density and number of elements (random 1,000 valid samples)."""

    name = "property_distribution"

    def __init__(self, n_samples: int = 1000) -> None:
        self.n_samples = n_samples

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference."""
        return None if ctx.reference is not None else "no reference set"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """The two distances; the sampled samples are marked per structure."""
        assert ctx.reference is not None
        idx, crystals = _parsed(ctx)
        valid = ctx.valid_mask()[idx]
        density, num_elements = density_values(crystals), num_elements_values(crystals)
        out: dict[str, Any] = {}
        details: dict[str, Any] = {}
        for key, gen, values in (
            ("wdist_density", density, density_values),
            ("wdist_num_elements", num_elements, num_elements_values),
        ):
            result = property_wasserstein(
                gen, values(ctx.reference), n_samples=self.n_samples, seed=ctx.seed, gen_valid=valid, name=key
            )
            out[key] = result.distance
            details[key] = {k: v for k, v in result.summary().items() if k not in ("distance", "protocol")}
        # the sampled flags and protocol are the last draw's (#elements; the density draw differs only at NaN density)
        columns = {
            "density": _scatter(ctx, idx, density.tolist()),
            "num_elements": _scatter(ctx, idx, [int(v) for v in num_elements]),
            "wdist_sampled": _scatter(ctx, idx, result.sampled.tolist(), False),
        }
        return MetricResult(summary=out, columns=columns, details=details, protocol=dict(result.protocol))


class SymmetryMetric:
    """Space group of each sample and the fraction above P1 (spglib)."""

    name = "symmetry"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """``symmetric_rate`` over the samples spglib could analyse."""
        idx, crystals = _parsed(ctx)
        report = symmetry_report(crystals, workers=ctx.workers)
        rows = report.per_crystal()
        columns = {key: _scatter(ctx, idx, [r[key] for r in rows]) for key in rows[0]} if rows else {}
        details = {k: v for k, v in report.summary().items() if k not in ("symmetric_rate", "protocol")}
        return MetricResult(
            summary={"symmetric_rate": report.symmetric_rate},
            columns=columns,
            details=details,
            protocol=report.protocol,
        )


class TargetingMetric:
    """Success rate of valid samples whose property lies in the target window."""

    name = "targeting"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a property name and window."""
        return None if ctx.property_name and ctx.target_window else "no property target given"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Samples without the property count as failures."""
        assert ctx.property_name is not None
        assert ctx.target_window is not None
        values = np.array(
            [_number(None if s.crystal is None else s.crystal.properties.get(ctx.property_name)) for s in ctx.samples]
        )
        low, high = ctx.target_window
        result = target_success(values, low=low, high=high, valid=ctx.valid_mask(), name=ctx.property_name)
        rows = result.per_crystal()
        columns = {key: [r[key] for r in rows] for key in rows[0]} if rows else {}
        columns[f"target_{ctx.property_name}"] = values.tolist()
        return MetricResult(
            summary={"target_success_rate": result.success_rate}, columns=columns, protocol=result.protocol
        )


class CSPMatchMetric:
    """Match rate and RMSE of predictions against their references, k=1 and best of k.

    k=1 uses DiffCSP's single-sample rule (prediction and reference both valid); best of k uses the
    rule of DiffCSP's multi-sample script (prediction valid; the reference's validity not checked).
    One matching pass serves both.
    """

    name = "csp_match"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a reference and linked predictions."""
        if ctx.reference is None:
            return "no reference set"
        if not any(s.group for s in ctx.samples):
            return "no sample is linked to a reference material_id"
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """One ``csp_match`` pass (rule "cdvae"), then k=1 under the DiffCSP rule from its rows."""
        assert ctx.reference is not None
        valid = ctx.valid_mask()
        groups = group_members(ctx.samples)
        k = ctx.k or max(len(v) for v in groups.values())
        predictions = {g: [ctx.samples[i].crystal for i in idx[:k]] for g, idx in groups.items()}
        pred_valid = {g: [bool(valid[i]) for i in idx[:k]] for g, idx in groups.items()}
        ref_valid = ctx.reference_validity()
        result = csp_match(
            predictions,
            ctx.reference,
            k=k,
            rule="cdvae",
            pred_valid=pred_valid,
            ref_valid=ref_valid,
            workers=ctx.workers,
        )
        ref_ok = {c.material_id: bool(v) for c, v in zip(ctx.reference, ref_valid, strict=True)}
        first = [p for p in result.predictions if p.index == 0 and p.matched and ref_ok[p.material_id]]
        rms1 = [p.rms for p in first if p.rms is not None]
        n_ref = result.num_references
        summary = {
            "match_rate": 100.0 * len(rms1) / n_ref if n_ref else math.nan,
            "rmse": float(np.mean(rms1)) if rms1 else math.nan,
            "match_rate_k": result.match_rate,
            "rmse_k": result.rmse,
        }
        matched = [None] * ctx.n
        rms: list[Any] = [None] * ctx.n
        reason: list[Any] = ["not linked to a reference material_id"] * ctx.n
        for p in result.predictions:
            if p.material_id not in groups or p.index >= len(groups[p.material_id]):
                continue  # a reference without predictions: reported in details, no sample row
            i = groups[p.material_id][p.index]
            matched[i], rms[i], reason[i] = p.matched, p.rms, p.reason
        for idx in groups.values():
            for i in idx[k:]:
                reason[i] = f"beyond k={k}"
        details = {
            "k": k,
            "n_references": n_ref,
            "n_references_valid": int(np.sum(ref_valid)),
            "n_references_with_predictions": len(groups),
            # For a partial run (csp --limit N): the same rates over the references that have predictions.
            "match_rate_over_predicted": 100.0 * len(rms1) / len(groups) if groups else math.nan,
            "match_rate_k_over_predicted": (100.0 * result.num_matched / len(groups) if groups else math.nan),
            "n_unlinked_samples": sum(1 for s in ctx.samples if s.group is None),
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
        protocol = dict(result.protocol)
        protocol.update(
            {
                "k": k,
                "rule_k1": "diffcsp: prediction and reference both valid",
                "rule_best_of_k": "diffcsp multi-sample script: prediction valid",
            }
        )
        protocol.pop("rule", None)
        return MetricResult(
            summary=summary,
            columns={"csp_matched": matched, "csp_rms": rms, "csp_reason": reason},
            details=details,
            protocol=protocol,
        )


class UniquenessMetric:
    """Fraction of samples that are the first of their structure-matching cluster."""

    name = "uniqueness"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Always computable."""
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Over all input records (unreadable ones are never unique)."""
        result = ctx.uniqueness()
        return MetricResult(
            summary={"unique_rate": result.unique_rate},
            columns={
                "unique": [s.unique for s in result.structures],
                "duplicate_of": [None if s.unique else s.representative for s in result.structures],
            },
            protocol=result.protocol,
        )


class NoveltyMetric:
    """Fraction of samples that match no training structure of the same reduced formula."""

    name = "novelty"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs the protocol's training set."""
        return None if ctx.train is not None else f"no training set ({ctx.train_name})"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """Over all input records (unreadable ones are never novel)."""
        result = ctx.novelty()
        return MetricResult(
            summary={"novel_rate": result.novel_rate},
            columns={
                "novel": [s.novel for s in result.structures],
                "matches_train": [s.matched_id for s in result.structures],
            },
            protocol={**result.protocol, "train": ctx.train_name},
        )


class StabilityMetric:
    """Relax every sample with the MLIP, then E_hull against the reference hull; S.U.N. and M.S.U.N."""

    name = "stability"

    def missing(self, ctx: EvaluationContext) -> str | None:
        """Needs a relaxer and a hull."""
        if ctx.relaxer is None:
            return "no relaxer requested (--relax)"
        if ctx.hull is None:
            return "no reference hull"
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        """S.U.N. needs uniqueness and novelty; without a training set only the stability rates are given."""
        with ctx.timed("stability.relax"):
            results = ctx.relax_results()
        # uniqueness only serves S.U.N., which needs novelty too: without a training set it is not computed
        novel = None if ctx.train is None else ctx.novelty().novel
        unique = None if novel is None else ctx.uniqueness().unique
        out = stability(results, ctx.hull, unique=unique, novel=novel, relaxer=ctx.relaxer)
        summary = {
            "stable_rate": out.stable_rate,
            "metastable_rate": out.metastable_rate,
            "mean_rmsd_relax": out.mean_rmsd_relax,
        }
        if novel is not None:
            summary.update({"sun_rate": out.sun_rate, "msun_rate": out.msun_rate})
        rows = out.structures
        columns = {
            "e_above_hull": [r.e_above_hull for r in rows],
            "stable": [r.stable for r in rows],
            "metastable": [r.metastable for r in rows],
            "sun": [r.sun for r in rows],
            "msun": [r.msun for r in rows],
            "stability_reason": [r.reason for r in rows],
            "relaxed_energy_per_atom": [r.energy_per_atom for r in results],
            "initial_energy_per_atom": [r.initial_energy_per_atom for r in results],
            "relax_rmsd": [r.rmsd for r in results],
            "relax_steps": [r.steps for r in results],
            "relax_converged": [r.converged for r in results],
            "relax_failure": [r.failure for r in results],
        }
        details = {
            "mean_e_above_hull": out.mean_e_above_hull,
            "num_relax_failed": out.num_failed,
            "num_unconverged": out.num_unconverged,
            "num_no_reference": out.num_no_reference,
        }
        if novel is None:
            details["sun"] = f"not computed: no training set ({ctx.train_name})"
        return MetricResult(summary=summary, columns=columns, details=details, protocol=out.protocol)


DNG_METRICS: tuple[Metric, ...] = (
    ValidityMetric(),
    CoverageMetric(),
    PropertyDistributionMetric(),
    UniquenessMetric(),
    NoveltyMetric(),
    StabilityMetric(),
    SymmetryMetric(),
    TargetingMetric(),
)
CSP_METRICS: tuple[Metric, ...] = (
    ValidityMetric(),
    CSPMatchMetric(),
    StabilityMetric(),
    SymmetryMetric(),
    TargetingMetric(),
)


# ---- running ------------------------------------------------------------------------------------


def run_evaluation(ctx: EvaluationContext, metrics: Sequence[Metric] | None = None) -> MetricReport:
    """Run the metrics the context can feed; never stop on one metric's failure."""
    chosen = list(metrics if metrics is not None else (CSP_METRICS if ctx.task == "csp" else DNG_METRICS))
    summary: dict[str, Any] = {"n": ctx.n}
    columns: dict[str, list[Any]] = {}
    details: dict[str, Any] = {}
    protocol: dict[str, Any] = {
        "package": f"crystalforge {distribution_version('crystalforge')}",
        "task": ctx.task,
        "reference": ctx.reference_name,
        "n_reference": None if ctx.reference is None else len(ctx.reference),
        "train": ctx.train_name,
        "seed": ctx.seed,
    }
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    for metric in chosen:
        why = metric.missing(ctx)
        if why is not None:
            skipped[metric.name] = why
            continue
        try:
            with ctx.timed(metric.name):
                result = metric(ctx)
        except Exception as exc:  # noqa: BLE001 - one metric's failure must not lose the others
            logger.error("metric %s failed: %s", metric.name, exc)
            errors[metric.name] = f"{type(exc).__name__}: {exc}"
            details.setdefault("tracebacks", {})[metric.name] = traceback.format_exc(limit=5)
            continue
        summary.update(result.summary)
        for key, values in result.columns.items():
            columns[key] = list(values)
        if result.details:
            details[metric.name] = dict(result.details)
        protocol[metric.name] = dict(result.protocol)
    if ctx.task == "dng" and "wdist_formation_energy" not in summary:
        skipped["formation_energy_distribution"] = "needs a formation-energy predictor (not part of this release)"
    if skipped:
        protocol["skipped"] = skipped
    if errors:
        protocol["errors"] = errors
    rows = []
    for i, sample in enumerate(ctx.samples):
        row: dict[str, Any] = {
            "index": sample.index,
            "source": sample.source,
            "material_id": None if sample.crystal is None else sample.crystal.material_id,
        }
        if ctx.task == "csp":
            row["reference_id"] = sample.group
        if sample.crystal is not None:
            row["formula"] = sample.crystal.formula
            row["num_atoms"] = sample.crystal.num_atoms
        for key, values in columns.items():
            row[key] = values[i]
        row["failure"] = _failure(sample.error, row)
        rows.append(row)
    return MetricReport(
        summary=summary, per_structure=rows, protocol=protocol, details=details, timings=dict(ctx.timings)
    )


def _number(value: Any) -> float:
    """A property value as float; missing or non-numeric → NaN (counted as a failure with its reason)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _failure(error: str | None, row: Mapping[str, Any]) -> str | None:
    """The first reason this sample failed, for the per-structure table (None when it did not)."""
    if error is not None:
        return f"unreadable: {error}"
    if row.get("valid") is False:
        return f"invalid: {row.get('validity_reason')}"
    if row.get("relax_failure"):
        return f"relaxation: {row['relax_failure']}"
    return None
