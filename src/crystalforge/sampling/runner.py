"""Chunked, seeded, resumable generation to disk.

Templates are cut into chunks of ``batch_size`` crystals. Chunk ``k`` is sampled with seed
``seed + k`` and written atomically to ``<out>/chunks/chunk_<k>.extxyz``, so an interrupted run
continues with the first missing chunk and gives the same structures as an uninterrupted one. At the
end the chunks are gathered into ``samples.extxyz`` and one CIF per structure (P1 in ``cif/``,
symmetrised in ``cif_symmetrized/``). ``run.json`` records the run's settings (model, sampler,
seed, chunk size); once chunks exist, resuming with other settings is an error rather than a silent
mix of two runs, and a chunk is reused only if it holds exactly its jobs (names, atom counts and,
for CSP, compositions). A generated structure that is not a crystal (a flat or NaN cell) is not
written but listed with its reason in ``failures.csv``; evaluating the folder (``read_failures``,
``crystalforge evaluate <out>``) counts it as an invalid sample, so no rate is computed over
survivors only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from crystalforge.core.crystal import Crystal, CrystalBatch
from crystalforge.core.errors import CrystalError
from crystalforge.io.atomic import atomic_write
from crystalforge.io.files import read_structures, write_structures
from crystalforge.sampling.samplers import SamplerConfig, sample
from crystalforge.sampling.templates import template_from_compositions, template_from_num_atoms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One crystal to generate: its name and what the template needs."""

    name: str
    num_atoms: int
    composition: tuple[int, ...] | None = None  # Z per atom for CSP; None for DNG


RUN_FILE = "run.json"
SAMPLES_FILE = "samples.extxyz"
FAILURES_FILE = "failures.csv"


def _template(jobs: Sequence[Job], dtype: torch.dtype) -> CrystalBatch:
    if all(j.composition is not None for j in jobs):
        return template_from_compositions([j.composition for j in jobs], dtype=dtype)  # type: ignore[misc]
    if any(j.composition is not None for j in jobs):
        raise ValueError("a chunk mixes CSP jobs (composition given) and DNG jobs")
    return template_from_num_atoms([j.num_atoms for j in jobs], dtype=dtype)


def run_jobs(
    model: Any,
    jobs: Sequence[Job],
    out_dir: str | Path,
    *,
    sampler: SamplerConfig,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    symmetrize: bool = True,
    model_name: str | None = None,
) -> list[Crystal]:
    """Generate every job (resuming from chunks already on disk); return the crystals in job order.

    ``model_name`` is stored in ``run.json`` with the sampler, seed and chunk size; a folder whose
    chunks were made with other settings raises ``ValueError``.
    """
    out = Path(out_dir)
    chunk_dir = out / "chunks"
    settings = {"model": model_name, "sampler": asdict(sampler), "seed": seed, "batch_size": batch_size}
    _check_run_settings(out, settings, resuming=any(chunk_dir.glob("chunk_*.extxyz")))
    chunk_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device)
    dtype = next(model.parameters()).dtype
    crystals: list[Crystal] = []
    failed_before = {name for name, _ in read_failures(out)}
    n_chunks = math.ceil(len(jobs) / batch_size)
    for k in range(n_chunks):
        part = jobs[k * batch_size : (k + 1) * batch_size]
        path = chunk_dir / f"chunk_{k:05d}.extxyz"
        made = _finished_chunk(path, part, failed_before)
        if made is None:
            generator = torch.Generator(device=device).manual_seed(seed + k)
            result = sample(model, _template(part, dtype).to(device), sampler, generator=generator)
            made, failed = _to_crystals(result, [j.name for j in part])
            for name, reason in failed:
                logger.warning("%s: generated structure is unusable (%s); not written", name, reason)
            if made:
                write_structures(made, path)
            else:  # every structure failed: an empty chunk file marks the chunk as done
                with atomic_write(path) as handle:
                    handle.write("")
            _append_failures(out / FAILURES_FILE, failed)  # after the chunk: a crash between never lists twice
        crystals.extend(made)
        if progress:
            progress(len(part))
    if crystals:
        write_structures(crystals, out / SAMPLES_FILE)
        for crystal in crystals:
            write_structures([crystal], out / "cif" / f"{crystal.material_id}.cif")
            if symmetrize:
                try:
                    write_structures([crystal], out / "cif_symmetrized" / f"{crystal.material_id}.cif", symmetrize=True)
                except Exception as exc:  # noqa: BLE001 - spglib can fail on odd cells; the P1 file exists
                    logger.warning("%s: no symmetrised CIF (%s)", crystal.material_id, exc)
    return crystals


def _check_run_settings(out: Path, settings: dict[str, Any], *, resuming: bool) -> None:
    """Write ``run.json``; when resuming (chunks exist), first check the earlier run used these settings."""
    record = json.loads(json.dumps(settings, default=str))  # as it reads back from disk
    path = out / RUN_FILE
    if resuming and path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable run record ({exc}); use a new output folder") from None
        if before != record:
            diff = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
            shown = "; ".join(f"{k}: {before.get(k)!r} before, {record.get(k)!r} now" for k in diff)
            raise ValueError(
                f"{out} holds a run with other settings ({shown}); resume with the same settings or use a new --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


def _finished_chunk(path: Path, part: Sequence[Job], failed: set[str]) -> list[Crystal] | None:
    """The crystals of a chunk file written by an earlier run of these jobs, else None (sample it).

    A chunk is finished when it holds every job of ``part`` except those listed as failed, each with
    the job's number of atoms and (CSP) composition.
    """
    if not path.exists():
        return None
    done = read_structures(path) if path.stat().st_size else []
    expected = [j for j in part if j.name not in failed]
    if [c.material_id for c in done] == [j.name for j in expected] and all(
        c.num_atoms == j.num_atoms
        and (j.composition is None or sorted(c.atomic_numbers.tolist()) == sorted(j.composition))
        for c, j in zip(done, expected, strict=True)
    ):
        return done
    logger.warning("%s does not hold this run's jobs; regenerating it", path)
    return None


def read_failures(out_dir: str | Path) -> list[tuple[str, str]]:
    """``(job name, reason)`` for each structure a generation folder could not write (its ``failures.csv``)."""
    path = Path(out_dir) / FAILURES_FILE
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [(row[0], row[1]) for row in list(csv.reader(handle))[1:] if row]


def is_generation_folder(path: str | Path) -> bool:
    """True for a folder written by ``run_jobs`` (it holds ``run.json``)."""
    return (Path(path) / RUN_FILE).is_file()


def _to_crystals(batch: CrystalBatch, names: Sequence[str]) -> tuple[list[Crystal], list[tuple[str, str]]]:
    """Generated batch → crystals named ``names``; degenerate ones (flat cell, NaN) as (name, reason)."""
    cpu = batch.to("cpu", torch.float64)
    bounds = [0, *torch.cumsum(cpu.num_atoms, 0).tolist()]
    good, bad = [], []
    for b, name in enumerate(names):
        s, e = bounds[b], bounds[b + 1]
        try:
            good.append(
                Crystal(
                    cpu.atomic_numbers[s:e].numpy(),
                    cpu.frac_coords[s:e].numpy(),
                    cpu.lattice[b].numpy(),
                    material_id=name,
                )
            )
        except CrystalError as exc:
            bad.append((name, exc.problem))
    return good, bad


def _append_failures(path: Path, failed: Sequence[tuple[str, str]]) -> None:
    if not failed:
        return
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(["name", "reason"])
        writer.writerows(failed)
