"""The evaluation suite: assemble the metrics of a task and run them over an ``EvaluationContext`` into one report.

Each metric lives in its own module with its suite adapter (a ``Metric``: a ``name``, ``missing``
saying why the context cannot feed it, and a call returning a ``MetricResult``). ``run_evaluation``
runs every metric whose requirements the context meets; a metric that is skipped says why in the
protocol block, and a metric that fails on odd input never stops the run: its exception is
recorded and the other metrics still report. A structure that a step gave up on (over the
per-structure time limit) is listed in ``details["aborted"]`` and in its row's ``failure``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from crystalforge.core.extras import MissingDependencyError
from crystalforge.core.versions import distribution_version
from crystalforge.evaluation.context import EvaluationContext, no_structure_reason
from crystalforge.evaluation.metrics.base import Metric
from crystalforge.evaluation.metrics.coverage import CoverageMetric
from crystalforge.evaluation.metrics.csp import CSPMatchMetric
from crystalforge.evaluation.metrics.distribution import PropertyDistributionMetric
from crystalforge.evaluation.metrics.novelty import NoveltyMetric
from crystalforge.evaluation.metrics.stability import StabilityMetric
from crystalforge.evaluation.metrics.symmetry import SymmetryMetric
from crystalforge.evaluation.metrics.targeting import TargetingMetric
from crystalforge.evaluation.metrics.uniqueness import UniquenessMetric
from crystalforge.evaluation.metrics.validity import ValidityMetric
from crystalforge.evaluation.report import MetricReport
from crystalforge.interrupt import check_interrupted

__all__ = ["CSP_METRICS", "DNG_METRICS", "run_evaluation"]

logger = logging.getLogger(__name__)

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


def run_evaluation(ctx: EvaluationContext, metrics: Sequence[Metric] | None = None) -> MetricReport:
    """Run the metrics the context can feed (default: the task's suite); never stop on one metric's failure."""
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
        "time_limit_s": ctx.time_limit_s,
    }
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    for metric in chosen:
        check_interrupted()
        why = metric.missing(ctx)
        if why is not None:
            skipped[metric.name] = why
            continue
        try:
            with ctx.timed(metric.name):
                result = metric(ctx)
        except MissingDependencyError:
            raise  # a missing extra stops the evaluation (the CLI exits 2), never becomes a metric error
        except Exception as exc:  # noqa: BLE001 - one metric's failure must not lose the others
            check_interrupted()
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
    if ctx.aborted:
        details["aborted"] = [
            {"index": i, "source": ctx.samples[i].source, "material_id": ctx.samples[i].material_id, "reason": why}
            for i, why in sorted(ctx.aborted.items())
        ]
    if skipped:
        protocol["skipped"] = skipped
    if errors:
        protocol["errors"] = errors
    return MetricReport(
        summary=summary,
        per_structure=_rows(ctx, columns),
        protocol=protocol,
        details=details,
        timings=dict(ctx.timings),
    )


def _rows(ctx: EvaluationContext, columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """One per-structure row per sample: identity, then every metric's columns, then the failure."""
    rows = []
    for i, sample in enumerate(ctx.samples):
        row: dict[str, Any] = {
            "index": i,
            "source": sample.source,
            "material_id": None if sample.crystal is None else sample.crystal.material_id,
        }
        if ctx.task == "csp":
            link = ctx.link(i)
            row["reference_id"] = None if link is None else link.reference_id
        if sample.crystal is not None:
            row["formula"] = sample.crystal.formula
            row["num_atoms"] = sample.crystal.num_atoms
        for key, values in columns.items():
            row[key] = values[i]
        row["failure"] = _failure(sample.error, row, ctx.aborted.get(i))
        rows.append(row)
    return rows


def _failure(error: str | None, row: Mapping[str, Any], aborted: str | None) -> str | None:
    """The first reason this sample failed, for the per-structure table (None when it did not)."""
    if error is not None:
        return no_structure_reason(error)
    if row.get("valid") is False:
        return f"invalid: {row.get('validity_reason')}"
    if row.get("relax_failure"):
        return f"relaxation: {row['relax_failure']}"
    return aborted
