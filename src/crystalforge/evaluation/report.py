"""``MetricReport``: the summary, one row per input structure, and the protocol, written to disk.

``summary.json`` holds the published key names (percentages 0-100, distances as plain numbers; a
key is absent when its metric was not computed), ``per_structure.csv`` one row per input record
(every metric's value and any failure reason) and ``summary.md`` a short Markdown table.
All three are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystalforge.io.atomic import atomic_write

SUMMARY_KEYS = (
    "n",
    "validity_struct",
    "validity_comp",
    "validity",
    "cov_recall",
    "cov_precision",
    "cov_recall_valid_only",
    "cov_precision_valid_only",
    "wdist_density",
    "wdist_num_elements",
    "wdist_formation_energy",
    "match_rate",
    "match_rate_over_predicted",
    "rmse",
    "match_rate_k",
    "match_rate_k_over_predicted",
    "rmse_k",
    "unique_rate",
    "novel_rate",
    "stable_rate",
    "metastable_rate",
    "sun_rate",
    "msun_rate",
    "mean_rmsd_relax",
    "symmetric_rate",
    "target_success_rate",
)
"""Summary keys in the order they are written; only computed ones appear."""

_LABELS = {
    "n": ("structures", ""),
    "validity_struct": ("structure validity", "%"),
    "validity_comp": ("composition validity", "%"),
    "validity": ("validity", "%"),
    "cov_recall": ("COV-R (every fingerprinted sample, as the published scripts)", "%"),
    "cov_precision": ("COV-P (every fingerprinted sample, as the published scripts)", "%"),
    "cov_recall_valid_only": ("COV-R (valid samples only)", "%"),
    "cov_precision_valid_only": ("COV-P (valid samples only)", "%"),
    "wdist_density": ("Wasserstein density", "g/cm³"),
    "wdist_num_elements": ("Wasserstein #elements", ""),
    "wdist_formation_energy": ("Wasserstein formation energy", "eV/atom"),
    "match_rate": ("match rate (k=1, over all references)", "%"),
    "match_rate_over_predicted": ("match rate (k=1, over references with a prediction)", "%"),
    "rmse": ("RMSE (k=1)", ""),
    "match_rate_k": ("match rate (best of k, over all references)", "%"),
    "match_rate_k_over_predicted": ("match rate (best of k, over references with a prediction)", "%"),
    "rmse_k": ("RMSE (best of k)", ""),
    "unique_rate": ("unique", "%"),
    "novel_rate": ("novel", "%"),
    "stable_rate": ("stable (E_hull ≤ 0)", "%"),
    "metastable_rate": ("metastable (E_hull ≤ 0.1 eV/atom)", "%"),
    "sun_rate": ("S.U.N.", "%"),
    "msun_rate": ("M.S.U.N.", "%"),
    "mean_rmsd_relax": ("mean RMSD on relaxation", "Å"),
    "symmetric_rate": ("above P1", "%"),
    "target_success_rate": ("property target hit", "%"),
}


def _plain(value: Any) -> Any:
    """JSON-safe plain value: NumPy scalars/arrays → Python, NaN/inf → None, anything else → str."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, dict)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class MetricReport:
    """What one evaluation computed.

    ``summary`` maps the published keys to numbers; ``per_structure`` has one dict per input
    record, in input order; ``protocol`` records every setting (dataset, split, cutoffs, matcher
    tolerances, relaxer, hull version, package version); ``details`` holds larger extras
    (space-group histogram, per-reference CSP rows, sample sizes); ``timings`` seconds per metric.
    """

    summary: Mapping[str, float | int]
    per_structure: Sequence[Mapping[str, Any]]
    protocol: Mapping[str, Any]
    details: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float | int:
        return self.summary[key]

    def to_dict(self) -> dict[str, Any]:
        """``summary.json`` content: the summary keys, then ``protocol``, ``details``, ``timings``."""
        ordered = {k: self.summary[k] for k in SUMMARY_KEYS if k in self.summary}
        ordered.update({k: v for k, v in self.summary.items() if k not in ordered})
        out: dict[str, Any] = dict(ordered)
        out["protocol"] = dict(self.protocol)
        out["details"] = dict(self.details)
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return _plain(out)

    def to_json(self) -> str:
        """The summary as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_csv(self) -> str:
        """``per_structure.csv`` content; columns are the union of the rows' keys, first-seen order."""
        columns: list[str] = []
        for row in self.per_structure:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.per_structure:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """A short human summary: one table of the computed metrics and the key protocol settings."""
        lines = ["# Evaluation summary", "", "| metric | value |", "|---|---|"]
        for key in SUMMARY_KEYS:
            if key not in self.summary:
                continue
            label, unit = _LABELS.get(key, (key, ""))
            value = self.summary[key]
            shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else _fmt(value)
            lines.append(f"| {label} (`{key}`) | {shown}{' ' + unit if unit and shown != 'n/a' else ''} |")
        lines += self._denominators()
        lines += ["", "## Protocol", ""]
        for key, value in self.protocol.items():
            if isinstance(value, Mapping):
                inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
                lines.append(f"- **{key}**: {inner}")
            else:
                lines.append(f"- **{key}**: {_fmt(value)}")
        failures = [r for r in self.per_structure if r.get("failure")]
        if failures:
            lines += ["", f"## Failures ({len(failures)} of {len(self.per_structure)} inputs)", ""]
            for row in failures[:20]:
                lines.append(f"- `{row.get('source', row.get('index'))}`: {row['failure']}")
            if len(failures) > 20:
                lines.append(f"- ... {len(failures) - 20} more in per_structure.csv")
        return "\n".join(lines) + "\n"

    def _denominators(self) -> list[str]:
        """Markdown lines naming the denominators of the CSP match rates (empty without them)."""
        csp = self.details.get("csp_match")
        if "match_rate" not in self.summary or not isinstance(csp, Mapping) or "n_references" not in csp:
            return []
        return [
            "",
            f"CSP match rates are over all {_fmt(csp['n_references'])} references (the published "
            f"denominator) and, beside them, over the {_fmt(csp.get('n_references_with_predictions'))} "
            "references with at least one prediction.",
        ]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``summary.json``, ``per_structure.csv`` and ``summary.md`` atomically into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "summary": out / "summary.json",
            "per_structure": out / "per_structure.csv",
            "markdown": out / "summary.md",
        }
        for key, text in (
            ("per_structure", self.to_csv()),
            ("markdown", self.to_markdown()),
            ("summary", self.to_json()),
        ):
            with atomic_write(paths[key], "w") as handle:
                handle.write(text)
        return paths


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
