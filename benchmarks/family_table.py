"""The model-family comparison as one table per dataset, assembled from the measured JSON rows.

    python benchmarks/family_table.py [--dataset mp_20_reduced|perov_5] [--out FILE.md]

Every figure comes from a ``bench_models.py --json`` row (``benchmarks/results``) or a shipped model's
card (training wall time, parameters); nothing is typed by hand. ``ROWS`` names, per family, the DNG
row, the CSP rows (k=1 and best of 20) and the models whose training the row stands on. A missing
file or row is an error naming it, never an empty cell.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    """One family: where its figures are (``FILE:ROW`` in ``benchmarks/results``) and its models."""

    family: str
    models: tuple[str, ...]  # shipped names: training wall time and parameters from their cards
    dng: str | None = None
    csp_k1: str | None = None
    csp_k20: str | None = None


ROWS: dict[str, tuple[Row, ...]] = {
    "mp_20_reduced": (
        Row(
            "flow (flagship)",
            ("mp_20-dng", "mp_20-csp"),
            "families-mp_20-dng-flow.json:0",
            "families-mp_20-csp-k1.json:0",
            "families-mp_20-csp-k20.json:0",
        ),
        Row(
            "diffusion (DiffCSP-style)",
            ("mp_20-dng-diffusion", "mp_20-csp-diffusion"),
            "families-mp_20-dng-diffusion.json:0",
            "mp_20-csp-k1.json:5",
            "mp_20-csp-k20.json:5",
        ),
        Row(
            "CDVAE",
            ("mp_20-cdvae",),
            "families-mp_20-dng-cdvae.json:0",
            "families-mp_20-csp-k1.json:1",
            "families-mp_20-csp-k20.json:1",
        ),
        Row(
            "Con-CDVAE",
            ("mp_20-con-cdvae",),
            "families-mp_20-dng-con-cdvae.json:0",
            "families-mp_20-csp-k1-con-cdvae.json:0",
        ),
        Row("MatGAN + flow CSP", ("mp_20-matgan", "mp_20-csp"), "families-mp_20-dng-matgan.json:0"),
        Row(
            "autoregressive transformer",
            ("mp_20-gpt",),
            "families-mp_20-dng-gpt.json:0",
            "families-mp_20-csp-k1.json:2",
            "families-mp_20-csp-k20.json:2",
        ),
        Row("ion substitution (baseline)", ("mp_20-substitution",), "families-mp_20-dng-substitution.json:0"),
        Row(
            "random symmetric, unrelaxed (baseline)",
            ("mp_20-random-symmetric",),
            "families-mp_20-dng-random-symmetric.json:0",
            "families-mp_20-csp-k1.json:3",
            "families-mp_20-csp-k20.json:3",
        ),
    ),
    "perov_5": (
        Row(
            "flow (flagship)",
            ("perov_5-dng", "perov_5-csp"),
            "families-perov_5-dng.json:0",
            "families-perov_5-csp-k1.json:0",
            "families-perov_5-csp-k20.json:0",
        ),
        Row(
            "diffusion (DiffCSP-style)",
            ("perov_5-dng-diffusion", "perov_5-csp-diffusion"),
            "perov_5-dng.json:2",
            "perov_5-csp-k1.json:4",
            "perov_5-csp-k20.json:5",
        ),
        Row(
            "CDVAE",
            ("perov_5-cdvae",),
            "families-perov_5-dng.json:1",
            "families-perov_5-csp-k1.json:1",
            "families-perov_5-csp-k20.json:1",
        ),
        Row(
            "Con-CDVAE",
            ("perov_5-con-cdvae",),
            "families-perov_5-dng-con-cdvae.json:0",
            "families-perov_5-csp-k1-con-cdvae.json:0",
        ),
        Row("MatGAN + flow CSP", ("perov_5-matgan", "perov_5-csp"), "families-perov_5-dng-gpt-matgan.json:1"),
        Row(
            "autoregressive transformer",
            ("perov_5-gpt",),
            "families-perov_5-dng-gpt-matgan.json:0",
            "families-perov_5-csp-k1-gpt.json:0",
            "families-perov_5-csp-k20.json:2",
        ),
        Row("ion substitution (baseline)", ("perov_5-substitution",), "families-perov_5-dng-baselines.json:0"),
        Row(
            "random symmetric, unrelaxed (baseline)",
            ("perov_5-random-symmetric",),
            "families-perov_5-dng-baselines.json:1",
            None,
            "families-perov_5-csp-k20-random-symmetric.json:0",
        ),
    ),
}

HEADER = (
    "family",
    "validity % (struct / comp)",
    "COV-R % (valid-only)",
    "COV-P % (valid-only)",
    "W-density",
    "W-#elements",
    "unique %",
    "novel %",
    "metastable / S.U.N. % (first 50, CHGNet)",
    "CSP k=1 match % / RMSE",
    "CSP k=20 match % / RMSE",
    "sampling s per 1,000 (DNG; CSP k=1)",
    "training wall s",
    "parameters",
)


@functools.cache
def _results(name: str) -> dict | None:
    """A results file's data, read once per run (a row's file is named by several columns)."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _row(spec: str) -> tuple[dict, dict]:
    """``(row, file)`` of ``FILE:ROW``; a missing file or row is named."""
    name, _, index = spec.rpartition(":")
    data = _results(name)
    if data is None:
        sys.exit(f"{spec}: no such results file (benchmarks/results/{name})")
    rows = data.get("rows", [])
    if not index.isdigit() or int(index) >= len(rows):
        sys.exit(f"{spec}: the file has {len(rows)} rows")
    return rows[int(index)], data


def _dng(spec: str | None) -> list[str]:
    if spec is None:
        return ["—"] * 8
    r, _ = _row(spec)
    relaxed = r.get("relaxed")
    stability = "—" if not relaxed else f"{relaxed['metastable_rate']:.1f} / {relaxed['sun_rate']:.1f}"
    return [
        f"{r['validity']:.1f} ({r['validity_struct']:.1f} / {r['validity_comp']:.1f})",
        _coverage(r, "cov_recall", 2),
        _coverage(r, "cov_precision", 1),
        f"{r['wdist_density']:.3f}",
        f"{r['wdist_num_elements']:.3f}",
        f"{r['unique_rate']:.1f}",
        f"{r['novel_rate']:.1f}",
        stability,
    ]


def _coverage(r: dict, key: str, digits: int) -> str:
    """Headline (every fingerprinted sample) with the valid-only variant in brackets.

    Rows measured before the headline was corrected hold only the valid-only variant, under the
    headline's key: their headline is shown as "n/m" (not measured).
    """
    if f"{key}_valid_only" not in r:
        return f"n/m ({r[key]:.{digits}f})"
    return f"{r[key]:.{digits}f} ({r[key + '_valid_only']:.{digits}f})"


def _csp(spec: str | None, k: int) -> str:
    if spec is None:
        return "—"
    r, data = _row(spec)
    argv = data.get("argv") or []
    rows_k = r.get("k", int(argv[argv.index("--k") + 1]) if "--k" in argv else 1)  # older rows: the run's --k
    if rows_k != k:
        sys.exit(f"{spec}: a k={rows_k} row where k={k} was named")
    rate, rmse = (r["match_rate_k"], r["rmse_k"]) if k > 1 else (r["match_rate"], r["rmse"])
    over = r.get("references")
    return f"{rate:.2f} / {rmse:.4f}" + (f" (of {over:,})" if over else "")


def _per_thousand(spec: str | None) -> str:
    if spec is None:
        return "—"
    r, _ = _row(spec)
    if r.get("resumed") or not r.get("sampling_s") or not r.get("structures"):
        return "—"  # samples reused from an earlier run: no time of its own
    return f"{1000 * r['sampling_s'] / r['structures']:,.0f}"


def _cards() -> dict:
    from crystalforge import api

    return api.list_models()


def table(dataset: str) -> str:
    """The Markdown table of ``dataset``'s rows."""
    cards = _cards()
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in ROWS[dataset]:
        missing = [m for m in row.models if m not in cards]
        if missing:
            sys.exit(f"{row.family}: models {missing} are not shipped (crystalforge models)")
        trained = [cards[m]["training"] for m in row.models]
        wall = " + ".join(f"{t['wall_s']:,}" for t in trained)
        params = " + ".join(f"{t['parameters']:,}" for t in trained)
        times = f"{_per_thousand(row.dng)}; {_per_thousand(row.csp_k1)}"
        cells = [row.family, *_dng(row.dng), _csp(row.csp_k1, 1), _csp(row.csp_k20, 20), times, wall, params]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(ROWS), action="append")
    parser.add_argument("--out", type=Path, help="write the tables here (Markdown) as well as to stdout")
    args = parser.parse_args()
    text = "\n".join(f"**{name}**\n\n{table(name)}" for name in args.dataset or sorted(ROWS))
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
