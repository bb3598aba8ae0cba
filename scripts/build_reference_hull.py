"""One-off: build the reference convex-hull table for the stability metric from MLIP energies.

Entries: every structure of mp_20 (train_partial, val, test) and mpts_52 (val, test) in the data
directory, de-duplicated by material_id (the first file in that order keeps the structure; all
sources are recorded). Energies: CHGNet 0.3.0 single points on the given DFT-relaxed cells
(default), or full CHGNet relaxations with ``--relax`` (a GPU or long session: ~12 h on 2 CPU
cores). Elemental references: for every element that occurs, CHGNet-relaxed simple prototypes
(fcc, bcc, hcp, simple cubic, diamond; fcc only for noble gases; an isolated diatomic molecule
in a 12 Å box, positions relaxed, for H, N, O, F, Cl, Br, I) and CHGNet-relaxed copies of the
dataset's own elemental structures. The hull keeps whichever is lowest.

Resumable: every energy is appended to a JSON-lines cache in ``--work-dir`` as soon as it is
computed; rerunning the same command continues where it stopped.

Output (written atomically): ``--out`` (``reference_hull_<version>.csv.gz``: sorted rows,
energies rounded to 1e-5 eV/atom, gzip with mtime 0 so equal tables give equal bytes) and the
sibling ``reference_hull_<version>.json`` with the provenance.

    python scripts/build_reference_hull.py                      # full static build
    python scripts/build_reference_hull.py --limit 200 --out trial/reference_hull.csv.gz
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import io
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.versions import distribution_version
from crystalforge.data.dataset import file_digest, parse_csv
from crystalforge.data.paths import DATA_ENV, cache_dir, data_dir
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS
from crystalforge.evaluation.hull import DEFAULT_HULL_VERSION, HullEntry, hull_data_path, write_hull_table
from crystalforge.io.atomic import atomic_write
from crystalforge.relax import CachedRelaxer, RelaxResult, chgnet_relaxer, chgnet_static_relaxer

log = logging.getLogger("build_reference_hull")

REPO = Path(__file__).resolve().parents[1]
SOURCES = (
    ("mp_20", "train_partial"),
    ("mp_20", "val"),
    ("mp_20", "test"),
    ("mpts_52", "val"),
    ("mpts_52", "test"),
)
MOLECULAR = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
"""Diatomic elements and the experimental bond length (Å) the molecule starts from."""
NOBLE_GASES = ("He", "Ne", "Ar", "Kr", "Xe", "Rn")
BOX = 12.0
"""Å, edge of the cubic box around a diatomic molecule (twice CHGNet's 6 Å graph cutoff)."""
SUSPICIOUS_GAP = 0.2
"""eV/atom; a prototype this far below the best dataset elemental structure is flagged."""


# ---- inputs ------------------------------------------------------------------------------------
def _portable_args(argv: list[str]) -> list[str]:
    """The command line without machine paths: a path argument becomes ``<its option name>``."""
    out, previous = [], ""
    for arg in argv:
        out.append(f"<{previous.lstrip('-')}>" if previous in PATH_OPTIONS and "=" not in arg else arg)
        previous = arg
    return out


PATH_OPTIONS = ("--data-dir", "--out", "--work-dir")


def resolve_data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser()
    if os.environ.get(DATA_ENV):
        return data_dir()
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else data_dir()


def read_sources(root: Path, limit: int | None, workers: int) -> tuple[list[Crystal], dict[str, list[str]], dict]:
    """Crystals de-duplicated by material_id, their sources, and per-file provenance."""
    crystals: dict[str, Crystal] = {}
    sources: dict[str, list[str]] = {}
    files: dict[str, Any] = {}
    for name, split in SOURCES:
        path = BENCHMARKS[name].split_file(root, split)
        label = f"{name}/{split}"
        rows = None
        if limit is not None:
            remaining = limit - len(crystals)
            if remaining <= 0:
                break
            rows = np.arange(remaining)  # rows beyond the file's end are dropped below
            import pandas as pd

            n_rows = len(pd.read_csv(path, usecols=["material_id"]))
            rows = rows[rows < n_rows]
        t0 = time.perf_counter()
        parsed, failures = parse_csv(path, options=PreprocessOptions.raw(), rows=rows, workers=workers, label=label)
        duplicates = 0
        for crystal in parsed:
            ident = str(crystal.material_id)
            if ident in crystals:
                duplicates += 1
            else:
                crystals[ident] = crystal
            sources.setdefault(ident, []).append(label)
        files[label] = {
            "file": str(path.relative_to(root)),
            "sha256": file_digest(path),
            "rows_parsed": len(parsed),
            "parse_failures": [str(f) for f in failures],
            "duplicates_of_earlier_files": duplicates,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s: %d structures (%d failures, %d duplicates)", label, len(parsed), len(failures), duplicates)
    return list(crystals.values()), sources, files


# ---- elemental prototypes ------------------------------------------------------------------------
def nn_distance(symbol: str) -> float:
    """Starting nearest-neighbour distance (Å): twice pymatgen's empirical atomic radius."""
    from pymatgen.core import Element

    el = Element(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if symbol in NOBLE_GASES and el.van_der_waals_radius:
            return 2.0 * float(el.van_der_waals_radius)
        for radius in (el.atomic_radius, el.atomic_radius_calculated, el.van_der_waals_radius):
            if radius:
                return 2.0 * float(radius)
    return 3.0


def prototypes(symbol: str) -> list[tuple[str, Crystal]]:
    """(kind, crystal) starting structures for one element."""
    from crystalforge.core.elements import symbol_to_z

    z = symbol_to_z(symbol)
    if symbol in MOLECULAR:
        d = MOLECULAR[symbol]
        frac = [[0.5 - d / (2 * BOX), 0.5, 0.5], [0.5 + d / (2 * BOX), 0.5, 0.5]]
        return [("diatomic-box", Crystal([z, z], frac, np.eye(3) * BOX, material_id=f"proto-{symbol}-diatomic"))]
    d = nn_distance(symbol)
    fcc = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * d * math.sqrt(2)
    out = [("fcc", Crystal([z], [[0, 0, 0]], fcc))]
    if symbol in NOBLE_GASES:
        return [(k, c.replace(material_id=f"proto-{symbol}-{k}")) for k, c in out]
    a_bcc = 2 * d / math.sqrt(3)
    bcc = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]) * a_bcc
    c_hcp = d * math.sqrt(8 / 3)
    hcp = np.array([[d, 0, 0], [-d / 2, d * math.sqrt(3) / 2, 0], [0, 0, c_hcp]])
    a_dia = 4 * d / math.sqrt(3)
    out += [
        ("bcc", Crystal([z], [[0, 0, 0]], bcc)),
        ("hcp", Crystal([z, z], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]], hcp)),
        ("sc", Crystal([z], [[0, 0, 0]], np.eye(3) * d)),
        ("diamond", Crystal([z, z], [[0, 0, 0], [0.25, 0.25, 0.25]], fcc / (d * math.sqrt(2)) * a_dia)),
    ]
    return [(k, c.replace(material_id=f"proto-{symbol}-{k}")) for k, c in out]


def elements_of(crystals: Iterable[Crystal]) -> list[str]:
    found: set[str] = set()
    for c in crystals:
        found.update(c.composition)
    return sorted(found)


# ---- output -----------------------------------------------------------------------------------------
def write_outputs(out: Path, entries: list[HullEntry], metadata: dict[str, Any]) -> Path:
    buffer = io.StringIO()
    write_hull_table(entries, buffer)
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(buffer.getvalue().encode("utf-8"))
    with atomic_write(out, "wb") as handle:
        handle.write(raw.getvalue())
    stem = out.name.removesuffix(".gz").removesuffix(".csv")
    meta_path = out.with_name(f"{stem}.json")
    with atomic_write(meta_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    for path in (out, meta_path):  # package data must be world-readable (mkstemp makes 0600 files)
        path.chmod(0o644)
    return meta_path


def progress_bar(label: str) -> Any:
    from tqdm import tqdm

    bar = tqdm(desc=label, unit="structure", smoothing=0.05)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


# ---- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help=f"benchmark CSVs (default ${DATA_ENV}, else ../shared/data)")
    parser.add_argument("--version", default=DEFAULT_HULL_VERSION, help="hull version (file names, metadata)")
    parser.add_argument(
        "--out", help="output .csv.gz (default: the package's evaluation/data/reference_hull_<version>)"
    )
    parser.add_argument("--work-dir", help="energy caches (default $CRYSTALFORGE_CACHE_DIR/reference_hull/<version>)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for CHGNet (1 thread each)")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per CHGNet batch (static mode)")
    parser.add_argument("--parse-workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    parser.add_argument("--limit", type=int, help="only the first N structures (a trial; not for evaluation)")
    parser.add_argument(
        "--elemental-limit",
        type=int,
        help="only the first N elemental relaxations (a timing trial; not for evaluation)",
    )
    parser.add_argument("--relax", action="store_true", help="relax every entry with CHGNet instead of single points")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å, for --relax")
    parser.add_argument("--max-steps", type=int, default=500, help="for --relax")
    parser.add_argument("--elemental-fmax", type=float, default=0.02, help="eV/Å, elemental relaxations")
    parser.add_argument("--elemental-max-steps", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per relaxation")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", module="chgnet")
    warnings.filterwarnings("ignore", category=UserWarning)

    started = time.perf_counter()
    root = resolve_data_dir(args.data_dir)
    out = Path(args.out) if args.out else hull_data_path(args.version)[0]
    work = Path(args.work_dir) if args.work_dir else cache_dir() / "reference_hull" / args.version
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    crystals, sources, files = read_sources(root, args.limit, args.parse_workers)
    timings["parse_s"] = round(time.perf_counter() - t0, 1)
    log.info("%d unique structures from %s", len(crystals), root)

    # entry energies
    t0 = time.perf_counter()
    if args.relax:
        entry_relaxer: Any = chgnet_relaxer(
            fmax=args.fmax, max_steps=args.max_steps, workers=args.workers, timeout_s=args.timeout, device=args.device
        )
        chunk = max(4 * args.workers, 8)
        cache_name = "entries-relaxed.jsonl"
    else:
        entry_relaxer = chgnet_static_relaxer(batch_size=args.batch_size, workers=args.workers, device=args.device)
        chunk = max(args.batch_size * args.workers * 4, 256)
        cache_name = "entries-static.jsonl"
    bar, update = progress_bar("entries")
    results = CachedRelaxer(entry_relaxer, work / cache_name, chunk_size=chunk, progress=update).relax(crystals)
    bar.close()
    timings["entries_s"] = round(time.perf_counter() - t0, 1)

    # elemental references
    t0 = time.perf_counter()
    elements = elements_of(crystals)
    starts: list[tuple[str, str, Crystal]] = []  # (element, source label, structure)
    for crystal in crystals:
        if len(crystal.composition) == 1:
            ident = str(crystal.material_id)
            label = ";".join(sources[ident]) + ";chgnet-relaxed"
            starts.append((next(iter(crystal.composition)), label, crystal.replace(material_id=f"{ident}:relaxed")))
    for symbol in elements:
        for kind, crystal in prototypes(symbol):
            starts.append((symbol, f"elemental-prototype/{kind}", crystal))
    if args.elemental_limit is not None:
        starts = starts[: args.elemental_limit]
    element_relaxer = chgnet_relaxer(
        fmax=args.elemental_fmax,
        max_steps=args.elemental_max_steps,
        workers=args.workers,
        timeout_s=args.timeout,
        device=args.device,
    )
    molecule_relaxer = chgnet_relaxer(
        fmax=args.elemental_fmax,
        max_steps=args.elemental_max_steps,
        relax_cell=False,
        workers=1,
        timeout_s=args.timeout,
        device=args.device,
    )
    molecular = [k for k, (_, label, _) in enumerate(starts) if label.endswith("diatomic-box")]
    solid = [k for k in range(len(starts)) if k not in set(molecular)]
    bar, update = progress_bar("elemental")
    elemental_results: dict[int, RelaxResult] = {}
    for group, relaxer in ((solid, element_relaxer), (molecular, molecule_relaxer)):
        cached = CachedRelaxer(relaxer, work / "elemental.jsonl", chunk_size=max(2 * args.workers, 4), progress=update)
        for k, result in zip(group, cached.relax([starts[k][2] for k in group]), strict=True):
            elemental_results[k] = result
    bar.close()
    element_relaxer.close()
    entry_relaxer.close()
    timings["elemental_s"] = round(time.perf_counter() - t0, 1)
    timings["elemental_relaxations"] = len(starts)

    # assemble
    entries: list[HullEntry] = []
    failures: dict[str, str] = {}
    unconverged = 0
    for crystal, result in zip(crystals, results, strict=True):
        ident = str(crystal.material_id)
        if not result.ok:
            failures[ident] = str(result.failure)
            continue
        unconverged += not result.converged
        formula = _formula(result.crystal or crystal)
        entries.append(HullEntry(ident, formula, result.energy_per_atom, ";".join(sources[ident])))
    best_dataset: dict[str, float] = {}
    for entry in entries:
        el = _single_element(entry.formula)
        if el is not None:
            best_dataset[el] = min(best_dataset.get(el, math.inf), entry.energy_per_atom)
    elemental_failures: dict[str, str] = {}
    for k, (_, label, crystal) in enumerate(starts):
        result = elemental_results[k]
        ident = str(crystal.material_id)
        if not result.ok:
            elemental_failures[ident] = str(result.failure)
            continue
        entries.append(HullEntry(ident, _formula(result.crystal or crystal), result.energy_per_atom, label))
    terminals: dict[str, dict[str, Any]] = {}
    suspicious: list[str] = []
    for entry in entries:
        el = _single_element(entry.formula)
        if el is None:
            continue
        if el not in terminals or entry.energy_per_atom < terminals[el]["energy_per_atom"]:
            terminals[el] = {"material_id": entry.material_id, "energy_per_atom": round(entry.energy_per_atom, 5)}
            terminals[el]["source"] = entry.source
    for el, info in terminals.items():
        gap = best_dataset.get(el, math.inf) - info["energy_per_atom"]
        if info["source"].startswith("elemental-prototype") and math.isfinite(gap) and gap > SUSPICIOUS_GAP:
            suspicious.append(f"{el}: {info['material_id']} is {gap:.3f} eV/atom below the best dataset structure")
    missing_terminals = sorted(set(elements) - set(terminals))

    settings_entries = dict(entry_relaxer.settings)
    metadata: dict[str, Any] = {
        "version": args.version,
        "partial": args.limit is not None or args.elemental_limit is not None,
        "limit": args.limit,
        "elemental_limit": args.elemental_limit,
        "mlip": {
            "name": entry_relaxer.name,
            "model": "CHGNet",
            "weights": "0.3.0 (shipped in the chgnet wheel)",
            "package": f"chgnet {distribution_version('chgnet')}",
        },
        "energy_treatment": "none",
        "energy_treatment_note": (
            "CHGNet 0.3.0 was trained on MPtrj energies that already include the MP2020 compatibility "
            "corrections, so its energies are used as they are; use energy_treatment='mp2020' only for an "
            "MLIP that outputs raw GGA/GGA+U energies (rebuild the hull with that MLIP)."
        ),
        "entry_mode": "relaxed" if args.relax else "static",
        "entry_settings": settings_entries,
        "elemental_mode": "relaxed",
        "elemental_settings": dict(element_relaxer.settings),
        "elemental_prototypes": {
            "solids": "fcc, bcc, hcp (ideal c/a), simple cubic, diamond; start nn distance 2 x pymatgen atomic radius",
            "noble_gases": "fcc, start nn distance 2 x van der Waals radius",
            "molecular": f"isolated diatomic in a {BOX:g} A cubic box, positions relaxed: {sorted(MOLECULAR)}",
            "dataset_elementals": "every elemental structure of the sources, CHGNet-relaxed (id '<mp-id>:relaxed')",
        },
        "data_dir": "the benchmark data directory (CRYSTALFORGE_DATA_DIR); files and sha256 under 'sources'",
        "sources": files,
        "counts": {
            "unique_structures": len(crystals),
            "entry_failures": len(failures),
            "entries_unconverged": unconverged,
            "elemental_starts": len(starts),
            "elemental_failures": len(elemental_failures),
            "rows": len(entries),
            "elements": len(elements),
        },
        "elements": elements,
        "terminals": dict(sorted(terminals.items())),
        "missing_terminals": missing_terminals,
        "suspicious_terminals": suspicious,
        "entry_failures": dict(sorted(failures.items())),
        "elemental_failures": dict(sorted(elemental_failures.items())),
        "build": {
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(["python", "scripts/build_reference_hull.py", *_portable_args(sys.argv[1:])])
            if argv is None
            else " ".join(["python", "scripts/build_reference_hull.py", *argv]),
            "seconds": {**timings, "total_s": round(time.perf_counter() - started, 1)},
            "python": platform.python_version(),
            "packages": {p: distribution_version(p) for p in ("crystalforge", "chgnet", "torch", "pymatgen", "ase")},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        },
    }
    meta_path = write_outputs(out, entries, metadata)
    log.info("wrote %s (%d rows) and %s in %.0f s", out, len(entries), meta_path, time.perf_counter() - started)
    if failures or elemental_failures:
        log.info("%d entry and %d elemental failures (listed in the metadata)", len(failures), len(elemental_failures))
    if suspicious:
        log.warning("suspicious terminals: %s", "; ".join(suspicious))
    if missing_terminals:
        log.warning("elements without any elemental reference: %s", ", ".join(missing_terminals))
    return 0


def _formula(crystal: Crystal) -> str:
    """pymatgen's full formula of the cell (``"Fe2 O3"``)."""
    from pymatgen.core import Composition

    return Composition(crystal.composition).formula


def _single_element(formula: str) -> str | None:
    """The element of an elemental full formula (``"Cu4"`` → ``"Cu"``), else None."""
    symbols = {s.rstrip("0123456789") for s in formula.split()}
    return symbols.pop() if len(symbols) == 1 else None


if __name__ == "__main__":
    sys.exit(main())
