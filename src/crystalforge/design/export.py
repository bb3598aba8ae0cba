"""The last stages: rank the predicted candidates, then export the top N (CIFs and ``top.csv``).

``rank_candidates`` ranks every candidate done in ``predict`` on the spec's objectives (Pareto
fronts, ties broken by the weighted score, or the score alone) and records ``rank_position``
(1-based), ``rank_score`` and ``rank_front`` for each; it reruns in full on every run (it is cheap,
and a raised budget changes every position).

``export_top`` writes ``RUN/top/<position:02d>_<cid>_<formula>.cif`` (P1, the relaxed structure),
the same name under ``RUN/top/symmetrized/`` (spglib, symprec 0.1 Å) and ``RUN/top.csv``, one row
per exported candidate. Files of an earlier top that left it are removed.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from crystalforge.design.rank import rank
from crystalforge.design.stages import DesignContext, stage_bar
from crystalforge.interrupt import check_interrupted
from crystalforge.io.atomic import atomic_write
from crystalforge.io.files import write_structures

__all__ = ["TOP_COLUMNS", "export_top", "rank_candidates", "suspect"]

log = logging.getLogger(__name__)

TOP_COLUMNS = (
    "rank_position", "cid", "formula", "natoms", "round", "rank_front", "rank_score", "hull_e_above_hull",
    "hull_suspect", "relax_energy_per_atom", "relax_space_group", "relax_converged", "relax_rmsd", "dedupe_novel",
    "dedupe_match", "predict_in_window", "screen_score",
)  # fmt: skip
"""The first columns of ``top.csv``; every ``predict_<prop>_mean/std`` follows, then the CIF paths."""


def rank_candidates(ctx: DesignContext) -> list[str]:
    """Rank every predicted candidate; record the rank stage; return the keys best first."""
    rows = [r for r in ctx.store.table() if r.get("predict") == "done"]
    if not rows:
        return []
    ranking = rank(rows, ctx.spec.ranking_objectives(), by=ctx.spec.ranking)
    bar = stage_bar(ctx, len(rows), "rank")
    try:
        for i, row in enumerate(rows):
            score = float(ranking.score[i])
            values = {
                "position": int(ranking.position[i]) + 1,
                "score": score if math.isfinite(score) else math.nan,
                "front": int(ranking.front[i]),
            }
            ctx.store.record("rank", str(row["cid"]), values)
            bar.update(1)
    finally:
        bar.close()
    return [str(rows[i]["cid"]) for i in ranking.order]


def suspect(e_hull: object, below: float | None) -> bool:
    """Whether an E_hull is suspect: finite and below ``below`` (``DesignSpec.suspect_e_hull``; None: never)."""
    return below is not None and isinstance(e_hull, (int, float)) and math.isfinite(float(e_hull)) and e_hull < below


def _file_name(position: int, key: str, formula: str) -> str:
    safe = "".join(ch for ch in formula if ch.isalnum())
    return f"{position:02d}_{key}_{safe}.cif"


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def export_top(ctx: DesignContext, order: Sequence[str]) -> list[dict[str, object]]:
    """Write the first ``top`` candidates of ``order`` (CIFs and ``top.csv``); return their table rows."""
    top = list(order[: ctx.spec.top])
    folder = ctx.run / "top"
    sym = folder / "symmetrized"
    keep: set[Path] = set()
    by_key: dict[str, Mapping[str, object]] = {str(r["cid"]): r for r in ctx.store.table() if r["cid"] in set(top)}
    rows: list[dict[str, object]] = []
    for position, (key, candidate) in enumerate(zip(top, ctx.store.candidates(top), strict=True), start=1):
        crystal = candidate.crystal
        assert crystal is not None
        name = _file_name(position, key, crystal.formula)
        crystal = crystal.replace(material_id=key)
        write_structures([crystal], folder / name)
        keep.add(folder / name)
        symmetrized: str = ""
        try:
            write_structures([crystal], sym / name, symmetrize=True)
            keep.add(sym / name)
            symmetrized = f"top/symmetrized/{name}"
        except Exception as exc:  # noqa: BLE001 - spglib can fail on an odd cell; the P1 file exists
            check_interrupted()
            log.warning("%s: no symmetrised CIF (%s)", key, exc)
        row = {**by_key[key], "cif": f"top/{name}", "cif_symmetrized": symmetrized}
        rows.append({**row, "hull_suspect": suspect(row.get("hull_e_above_hull"), ctx.spec.suspect_e_hull)})
    for stale in [*folder.glob("*.cif"), *sym.glob("*.cif")]:
        if stale not in keep:
            stale.unlink()
    _write_table(ctx.run / "top.csv", rows)
    return rows


def _write_table(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    predicted = sorted({k for r in rows for k in r if k.startswith("predict_") and k.endswith(("_mean", "_std"))})
    columns = [*TOP_COLUMNS, *predicted, "cif", "cif_symmetrized"]
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
