"""What the design report shows, read from a run folder: ``read_run(RUN) -> RunView``.

A run folder holds ``candidates.db`` (the ``CandidateStore``), ``design.json`` (spec, targets,
timings, top list) and ``top/*.cif``. Any of them may be missing or partial (a run killed mid-way, a
run still going, a run without targets): ``read_run`` never fails on that, it records what is
missing in ``RunView.missing`` for the report to say. It reads only: opening a run without a
database does not create one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import z_to_symbol
from crystalforge.design.store import STATUSES, CandidateStore, StoreError
from crystalforge.io.files import crystal_to_cif

STAGES: tuple[str, ...] = ("filter", "dedupe", "screen", "relax", "hull", "predict", "rank")
"""The pipeline's stages in order (a run may hold fewer, or extra ones after these)."""
HULL_LIMIT = 0.1
"""eV/atom: the usual "stable or nearly so" line drawn on the E_hull plot."""
_NOT_STAGES = {"cid", "round", "source", "material_id", "error", "formula", "natoms"}
_PROPERTY_COLUMN = re.compile(r"^(screen|predict)_(.+)_mean$")
_CIF_NAME = re.compile(r"^\d+_([A-Za-z0-9-]+)_.*\.cif$")
_IMAGE_TOL = 1e-3  # atoms this close to a cell face are drawn on the opposite face too


@dataclass(frozen=True)
class Target:
    """A target window on a property; ``low``/``high`` None: open on that side."""

    property: str
    low: float | None
    high: float | None


@dataclass(frozen=True)
class StageCount:
    """One funnel step: candidates ``done`` here and in every step before, and this stage's outcomes.

    The first step, ``generated``, counts every candidate; its ``failed`` are those without a structure.
    """

    name: str
    passed: int
    rejected: int
    failed: int
    seconds: float | None


@dataclass(frozen=True)
class CifFile:
    """A CIF offered for download: its label (``P1``, ``symmetrized``), file name and text."""

    label: str
    name: str
    text: str


@dataclass(frozen=True)
class RunView:
    """Everything the report shows about one run (see ``read_run``)."""

    path: Path
    meta: Mapping[str, object]
    rows: list[dict[str, object]]
    stages: list[str]
    funnel: list[StageCount]
    targets: list[Target]
    properties: list[str]
    top: list[dict[str, object]]
    ranked: bool
    structures: dict[str, dict[str, object]] = field(default_factory=dict)
    cifs: dict[str, list[CifFile]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def number(value: object) -> float | None:
    """``value`` as a finite float, or None (missing, text, bool, NaN, ±inf)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def suspect_limit(meta: Mapping[str, object]) -> float:
    """The run's ``suspect_e_hull`` (eV/atom): an E_hull below it is flagged; -inf when off, -0.2 when unrecorded."""
    spec = meta.get("spec")
    limit = number(spec.get("suspect_e_hull", -0.2)) if isinstance(spec, Mapping) else -0.2
    return -math.inf if limit is None else limit


def round_results(meta: Mapping[str, object]) -> list[Mapping[str, object]]:
    """``design.json``'s per-round records (``design.active``; empty for a run of one round)."""
    found = meta.get("round_results")
    return [r for r in found if isinstance(r, Mapping)] if isinstance(found, list) else []


def read_meta(run: Path, missing: list[str]) -> dict[str, object]:
    """``design.json`` as a dict ({} when absent or unreadable, with a note in ``missing``)."""
    path = run / "design.json"
    if not path.is_file():
        missing.append("design.json is missing: no spec, targets or timings to show")
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        missing.append(f"design.json is unreadable ({exc})")
        return {}
    if not isinstance(meta, dict):
        missing.append("design.json does not hold a JSON object")
        return {}
    return meta


def _targets(meta: Mapping[str, object]) -> list[Target]:
    out = []
    raw = meta.get("targets")
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("property"), str):
            out.append(Target(str(item["property"]), number(item.get("low")), number(item.get("high"))))
    return out


def _stages_present(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Stages with a status on some row: the known ones in pipeline order, then any others."""
    found: set[str] = set()
    for row in rows:
        found.update(k for k, v in row.items() if "_" not in k and k not in _NOT_STAGES and v in STATUSES)
    return [s for s in STAGES if s in found] + sorted(found - set(STAGES))


def _seconds(meta: Mapping[str, object], stage: str) -> float | None:
    stages = meta.get("stages")
    entry = stages.get(stage) if isinstance(stages, Mapping) else None
    return number(entry.get("seconds")) if isinstance(entry, Mapping) else None


def _properties(targets: Sequence[Target], rows: Sequence[Mapping[str, object]]) -> list[str]:
    names = [t.property for t in targets]
    for row in rows:
        for key in row:
            match = _PROPERTY_COLUMN.match(key)
            if match and match.group(2) not in names:
                names.append(match.group(2))
    return names


def _pick_top(
    rows: Sequence[dict[str, object]], meta: Mapping[str, object], stages: Sequence[str], limit: int
) -> tuple[list[dict[str, object]], bool]:
    """The candidates to list, best first, and whether they are ranked.

    design.json's ``top`` (the exported candidates, whose CIFs are under ``top/``), else the ranking
    (``rank_position``, cut at the spec's ``top``), else the candidates that went furthest.
    """
    by_cid = {str(r.get("cid")): r for r in rows}
    listed = meta.get("top")
    if isinstance(listed, list) and any(str(c) in by_cid for c in listed):
        return [by_cid[str(c)] for c in listed if str(c) in by_cid][:limit], True
    ranked = [r for r in rows if number(r.get("rank_position")) is not None]
    if ranked:
        ranked.sort(key=lambda r: number(r.get("rank_position")) or 0.0)
        spec = meta.get("spec")
        top = number(spec.get("top")) if isinstance(spec, Mapping) else None
        return ranked[: min(limit, int(top))] if top is not None and top >= 1 else ranked[:limit], True

    def progress(row: Mapping[str, object]) -> tuple[float, float]:
        done = 0
        for stage in stages:
            if row.get(stage) != "done":
                break
            done += 1
        hull = number(row.get("hull_e_above_hull"))
        return (-done, math.inf if hull is None else hull)

    with_structure = [r for r in rows if number(r.get("natoms"))]
    return sorted(with_structure, key=progress)[:limit], False


def viewer_structure(crystal: Crystal) -> dict[str, object]:
    """A structure for the 3D view: formula, lattice rows (Å) and ``[symbol, x, y, z]`` per drawn atom.

    Atoms on a cell face, edge or corner are drawn at every equivalent face (as structure viewers
    do), so a cubic cell shows its eight corners.
    """
    lattice = np.asarray(crystal.lattice, dtype=np.float64)
    atoms: list[list[object]] = []
    for z, frac in zip(crystal.atomic_numbers, crystal.frac_coords, strict=True):
        symbol = z_to_symbol(int(z))
        near = [axis for axis in range(3) if frac[axis] < _IMAGE_TOL or frac[axis] > 1 - _IMAGE_TOL]
        for mask in range(1 << len(near)):
            shifted = np.array(frac, dtype=np.float64)
            for bit, axis in enumerate(near):
                if mask >> bit & 1:
                    shifted[axis] += 1.0 if shifted[axis] < 0.5 else -1.0
            x, y, w = (shifted @ lattice).tolist()
            atoms.append([symbol, round(x, 4), round(y, 4), round(w, 4)])
    return {"formula": crystal.formula, "lattice": np.round(lattice, 5).tolist(), "atoms": atoms}


def _cif_files(run: Path) -> dict[str, list[CifFile]]:
    """The CIFs under ``top/`` (P1) and ``top/symmetrized/``, by candidate id."""
    out: dict[str, list[CifFile]] = {}
    for label, folder in (("P1", run / "top"), ("symmetrized", run / "top" / "symmetrized")):
        for path in sorted(folder.glob("*.cif")) if folder.is_dir() else []:
            match = _CIF_NAME.match(path.name)
            if match and path.is_file():
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                out.setdefault(match.group(1), []).append(CifFile(label, path.name, text))
    return out


def _missing_stages(stages: Sequence[str], targets: Sequence[Target]) -> list[str]:
    effect = {
        "filter": "no validity filter results",
        "dedupe": "no novelty: the novelty column is empty",
        "screen": "no screened property values",
        "relax": "no relaxation: the space group and RMSD columns are empty",
        "hull": "no E_hull values: the E_hull plot and column are empty",
        "predict": "no predicted properties after relaxation",
        "rank": "no ranking: the table lists the candidates that went furthest",
    }
    out = []
    for stage in STAGES:
        if stage not in stages:
            why = " (the run has no targets)" if stage in ("screen", "predict") and not targets else ""
            out.append(f"stage {stage!r} has no results yet{why}: {effect[stage]}")
    return out


def read_run(run: str | Path, *, limit: int = 50) -> RunView:
    """Read a run folder for the report; ``limit`` bounds the listed top candidates.

    Raises ``FileNotFoundError`` when ``run`` is not a folder; everything else missing is noted.
    """
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such design run folder")
    missing: list[str] = []
    meta = read_meta(path, missing)
    targets = _targets(meta)
    rows: list[dict[str, object]] = []
    store = None
    db = path / "candidates.db"
    if not db.is_file():
        missing.append("candidates.db is missing: the run has stored no candidates yet")
    else:
        try:
            store = CandidateStore(db)
            rows = store.table()
        except (StoreError, OSError) as exc:
            missing.append(f"candidates.db is unreadable ({exc})")
            store = None
    stages = _stages_present(rows)
    passed = store.funnel(stages) if store is not None and stages else {}
    no_structure = sum(1 for r in rows if not number(r.get("natoms")))  # failed at generation
    funnel = [StageCount("generated", len(rows), 0, no_structure, _seconds(meta, "generate"))]
    funnel += [
        StageCount(
            s,
            passed.get(s, 0),
            sum(1 for r in rows if r.get(s) == "rejected"),
            sum(1 for r in rows if r.get(s) == "failed"),
            _seconds(meta, s),
        )
        for s in stages
    ]
    if rows:
        missing += _missing_stages(stages, targets)
    top, ranked = _pick_top(rows, meta, stages, limit)
    structures: dict[str, dict[str, object]] = {}
    cifs = _cif_files(path)
    written = 0
    if store is not None and top:
        keys = [str(r["cid"]) for r in top]
        for i, (key, candidate) in enumerate(zip(keys, store.candidates(keys), strict=True)):
            if candidate.crystal is None:
                continue
            structures[key] = viewer_structure(candidate.crystal)
            if key not in cifs:
                name = f"{i + 1:02d}_{key}_{candidate.crystal.formula}.cif"
                cifs[key] = [CifFile("P1", name, crystal_to_cif(candidate.crystal))]
                written += 1
    if written:
        missing.append(
            f"{written} listed candidate(s) have no CIF under top/: their P1 CIF is written from the stored structure"
        )
    return RunView(
        path, meta, rows, stages, funnel, targets, _properties(targets, rows), top, ranked, structures, cifs, missing
    )
