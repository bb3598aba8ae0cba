"""User datasets: a folder (or file) of CIF/POSCAR/extxyz structures, or an ASE database.

Each structure's id is its file stem (``name:block``/``name:frame`` for multi-structure files,
the ``material_id`` key or row id for ASE databases). An optional property table (CSV) adds
numeric properties by id: its id column is the first of ``material_id``, ``id``, ``name``,
``filename`` that exists (file names match with or without their extension).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.data.dataset import CrystalDataset, cache_key, cached_build, file_digest
from crystalforge.data.preprocess import PreprocessOptions, preprocess_structure
from crystalforge.io.files import iter_records, structure_files

log = logging.getLogger(__name__)
ID_COLUMNS = ("material_id", "id", "name", "filename")


def read_property_table(path: str | Path) -> dict[str, dict[str, float]]:
    """``id → {property: value}`` from a CSV; non-numeric columns are ignored."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise CrystalError(f"cannot read property table: {exc}", source=str(path)) from None
    id_col = next((c for c in ID_COLUMNS if c in frame.columns), None)
    if id_col is None:
        raise CrystalError(
            f"property table needs one of the columns {ID_COLUMNS}; found {list(frame.columns)}", source=str(path)
        )
    numeric = [c for c in frame.columns if c != id_col and pd.api.types.is_numeric_dtype(frame[c])]
    if not numeric:
        raise CrystalError("property table has no numeric property column", source=str(path))
    out: dict[str, dict[str, float]] = {}
    for _, row in frame.iterrows():
        key = str(row[id_col])
        values = {str(c): float(row[c]) for c in numeric if not np.isnan(float(row[c]))}
        out[key] = values
        stem = Path(key).stem
        out.setdefault(stem, values)
    return out


def _apply(crystal: Crystal, options: PreprocessOptions) -> Crystal:
    if options == PreprocessOptions.raw():
        return crystal
    structure = preprocess_structure(crystal.to_pymatgen(), options)
    return Crystal.from_pymatgen(structure, material_id=crystal.material_id).replace(properties=crystal.properties)


def _read_ase_db(path: Path) -> tuple[list[Crystal], list[Candidate]]:
    from ase.db import connect

    crystals: list[Crystal] = []
    failures: list[Candidate] = []
    for row in connect(str(path)).select():
        ident = str(row.get("material_id") or row.id)
        try:
            atoms = row.toatoms()
            atoms.info.update({k: v for k, v in row.key_value_pairs.items()})
            crystals.append(Crystal.from_ase(atoms, material_id=ident))
        except CrystalError as exc:
            failures.append(Candidate.failure(f"{path} row {row.id} ({ident})", exc.problem, material_id=ident))
    return crystals, failures


def load_user_dataset(
    path: str | Path,
    *,
    properties: str | Path | None = None,
    options: PreprocessOptions | None = None,
    use_cache: bool = True,
) -> CrystalDataset:
    """A dataset from a folder/file of structures or an ASE ``.db``, with an optional property table.

    User data is kept as given by default (``PreprocessOptions.raw()``); pass ``options`` to
    apply the benchmark preprocessing. Bad files are skipped and reported in ``failures``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    opts = options or PreprocessOptions.raw()
    table = read_property_table(properties) if properties else {}
    is_db = p.is_file() and p.suffix.lower() == ".db"
    files = [p] if p.is_file() else structure_files(p)
    if not files:
        raise CrystalError("folder holds no structure files (.cif, .vasp, POSCAR, .extxyz, .xyz, .npz)", source=str(p))
    key: dict[str, Any] = {
        "kind": "user",
        "files": [(str(f.relative_to(p)) if f != p else f.name, file_digest(f)) for f in files],
        "options": opts.to_dict(),
        "properties": file_digest(Path(properties)) if properties else None,
    }

    def build() -> tuple[list[Crystal], list[Candidate]]:
        raw: list[Crystal] = []
        failures: list[Candidate] = []
        if is_db:
            raw, failures = _read_ase_db(p)
        else:
            for record in iter_records(p):
                if record.crystal is None:
                    problem = record.error or "unreadable"
                    failures.append(Candidate.failure(record.source, problem, material_id=record.material_id))
                else:
                    raw.append(record.crystal)
        out = []
        for crystal in raw:
            try:
                c = _apply(crystal, opts)
            except (CrystalError, ValueError) as exc:
                failures.append(Candidate.failure(str(crystal.material_id), str(exc)))
                continue
            if table:
                extra = table.get(str(c.material_id)) or table.get(Path(str(c.material_id)).stem)
                if extra is None:
                    failures.append(
                        Candidate.failure(str(c.material_id), "no row in the property table (kept without properties)")
                    )
                else:
                    c = c.replace(properties={**c.properties, **extra})
            out.append(c)
        return out, failures

    name = p.stem if p.is_file() else p.name
    digest = cache_key(key)
    return cached_build(
        f"user-{name}-{digest[:8]}",
        "all",
        key,
        build,
        use_cache=use_cache,
        metadata={"source": str(p), "preprocess": opts.to_dict(), "protocol": "user"},
    )
