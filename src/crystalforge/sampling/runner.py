"""Chunked, seeded, resumable generation to disk, for any ``GenerativeModel``.

Jobs are cut into chunks of ``batch_size`` crystals. Chunk ``k`` is sampled with seed ``seed + k``
and written atomically, then its record (``io.run_folder.ChunkRecord``: a digest of its jobs, the
names written, the failures), so an interrupted run (``kill -9`` included) continues with the first
chunk without a record and gives the same files as an uninterrupted one. A chunk is reused when
its record names exactly its jobs now (names, atom counts, compositions, targets, start
structures), whatever the structures hold: a family that chooses its own atom counts (MatGAN,
CDVAE) resumes like any other. At the end the chunks are gathered into one CIF per structure (P1
and symmetrised), ``failures.csv`` and, last, the samples file; the folder layout is
``io.run_folder.RunFolder``. ``run.json`` records the run's settings (model, sampler, steering,
seed, chunk size); once chunks exist, resuming with other settings is an error rather than a
silent mix of two runs. The chunk size is one of them: it decides which structures share a seed.

Jobs carry target ``properties``: a property-conditioned model reads them from the template (a
missing value is NaN and hidden by ``condition_mask``). A generated structure that is not a
crystal (a flat cell, NaN or inf anywhere) or that is over ``core.limits`` (which every reader
refuses) is not written but listed with its reason in ``failures.csv`` and logged with its name;
the rest of its chunk is kept. Evaluating the folder
counts it as an invalid sample, so no rate is computed over survivors only.

Chunks may be sampled on several workers (``workers``: local processes or Ray actors): each worker
loads the model once by its name, samples whole chunks with torch on one thread and hands the
crystals back; this process writes them in chunk order after each wave of ``workers`` chunks. A
chunk's randomness depends only on ``(seed, k)``, so the folder is byte for byte that of a serial
run, and a kill loses at most the wave in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.limits import StructureLimits
from crystalforge.execution import ExecutorConfig, make_executor
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, model_dtype
from crystalforge.interrupt import check_interrupted
from crystalforge.io.atomic import atomic_write
from crystalforge.io.files import read_structures, write_structures
from crystalforge.io.run_folder import ChunkRecord, JSONValue, RunFolder
from crystalforge.sampling.samplers import as_plan, sample
from crystalforge.sampling.templates import (
    template_from_compositions,
    template_from_num_atoms,
    template_from_structures,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One crystal to generate: its name and what the template needs.

    ``composition``: Z per atom for CSP (None for DNG). ``properties``: target values of a
    property-conditioned model (absent or NaN: unconditioned for that property). ``start``: the
    structure a refinement starts from (``SamplerConfig.start_time > 0``; its types are the composition).
    """

    name: str
    num_atoms: int
    composition: tuple[int, ...] | None = None
    properties: Mapping[str, float] = field(default_factory=dict)
    start: Crystal | None = field(default=None, compare=False)


def jobs_template(jobs: Sequence[Job], dtype: torch.dtype) -> CrystalBatch:
    """The sampling template of a chunk of jobs (names as ``material_ids``, properties as conditions)."""
    keys = sorted({k for j in jobs for k in j.properties})
    properties = {k: [float(j.properties.get(k, math.nan)) for j in jobs] for k in keys}
    compositions = [j.composition for j in jobs]
    starts = [j.start for j in jobs]
    if any(c is not None for c in starts):
        if not all(c is not None for c in starts):
            raise ValueError("a chunk mixes refinement jobs (start structure given) and others")
        template = template_from_structures([c for c in starts if c is not None], dtype=dtype, properties=properties)
    elif all(c is not None for c in compositions):
        template = template_from_compositions(
            [c for c in compositions if c is not None], dtype=dtype, properties=properties
        )
    elif any(c is not None for c in compositions):
        raise ValueError("a chunk mixes CSP jobs (composition given) and DNG jobs")
    else:
        template = template_from_num_atoms([j.num_atoms for j in jobs], dtype=dtype, properties=properties)
    return template.replace(material_ids=tuple(j.name for j in jobs))


ChunkResult = tuple[list[Crystal], list[tuple[str, str]]]
"""A chunk's crystals and its ``(name, reason)`` failures."""


class WithModel(Protocol):
    """What a worker's loader returns (``training.loading.LoadedModel`` is one)."""

    @property
    def model(self) -> GenerativeModel:
        """The model."""


def run_jobs(
    model: GenerativeModel,
    jobs: Sequence[Job],
    out_dir: str | Path,
    *,
    sampler: SamplePlan | SamplerConfig | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int], object] | None = None,
    symmetrize: bool = True,
    model_name: str | None = None,
    workers: int | ExecutorConfig = 1,
    load: Callable[[str], WithModel] | None = None,
) -> list[Crystal]:
    """Generate every job (resuming from chunks already on disk); return the crystals in job order.

    ``sampler`` is a plan (settings + guidance + constraints) or plain settings (None: the model's
    default). ``model_name`` is stored in ``run.json`` with the sampler settings, guidance and
    constraints, seed and chunk size; a folder whose chunks were made with other settings raises
    ``ValueError``. With several ``workers`` (or Ray) the pending chunks are sampled by worker
    processes, each loading the model once as ``load(model_name).model`` (a picklable top-level
    function, e.g. ``training.loading.load_model``); the files are the same as with one.
    """
    config = ExecutorConfig.of(workers)
    if config.parallel and (load is None or model_name is None):
        raise ValueError("sampling on several workers needs the model's name and a loader (model_name=, load=)")
    folder = RunFolder(Path(out_dir))
    plan = as_plan(sampler, model)
    settings: dict[str, JSONValue] = {
        "model": model_name,
        "sampler": asdict(plan.sampler),
        "seed": seed,
        "batch_size": batch_size,
    }
    if plan.guidance or plan.constraints:
        settings["steering"] = [steering_record(g) for g in (*plan.guidance, *plan.constraints)]
    if any(j.properties for j in jobs):
        settings["targets"] = targets_digest(jobs)
    folder.record_settings(settings, resuming=folder.has_chunks())
    folder.chunk_dir.mkdir(parents=True, exist_ok=True)
    folder.remove_temporaries()
    model = model.to(device)
    parts = [jobs[k * batch_size : (k + 1) * batch_size] for k in range(math.ceil(len(jobs) / batch_size))]
    results: dict[int, ChunkResult] = {}
    for k, part in enumerate(parts):
        finished = _finished_chunk(folder, k, part)
        if finished is not None:
            results[k] = finished
            if progress:
                progress(len(part))
    pending = [k for k in range(len(parts)) if k not in results]
    pool = None
    if config.parallel:
        pool = make_executor(
            config, initializer=_start_worker, initargs=(load, model_name, device), start_method="spawn"
        )
    with pool or nullcontext():
        for start in range(0, len(pending), config.workers):  # one wave: sampled, then written in order
            check_interrupted()
            wave = pending[start : start + config.workers]
            tasks = [ChunkTask(parts[k], seed + k, plan, device) for k in wave]
            sampled = pool.map(_sample_in_worker, tasks) if pool else [_sample_chunk(model, t) for t in tasks]
            for k, (made, failed) in zip(wave, sampled, strict=True):
                results[k] = _keep_chunk(folder, k, parts[k], made, failed)
                if progress:
                    progress(len(parts[k]))
    crystals = [c for k in range(len(parts)) for c in results[k][0]]
    folder.write_failures([f for k in range(len(parts)) for f in results[k][1]])
    write_outputs(folder, crystals, symmetrize=symmetrize)
    return crystals


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to sample: its jobs, its seed (``seed + k``), the sampler plan and the device."""

    jobs: Sequence[Job]
    seed: int
    plan: SamplePlan
    device: str


def _sample_chunk(model: GenerativeModel, task: ChunkTask) -> ChunkResult:
    """Sample one chunk's jobs → its usable crystals (named by their jobs) and the failures."""
    generator = torch.Generator(device=task.device).manual_seed(task.seed)
    template = jobs_template(task.jobs, model_dtype(model)).to(task.device)
    result = sample(model, template, task.plan, generator=generator)
    if result.num_crystals != len(task.jobs):
        raise RuntimeError(f"the model returned {result.num_crystals} crystals for {len(task.jobs)} jobs")
    # outputs are named by their jobs, whatever the family kept; targets are not results
    result = result.replace(material_ids=tuple(j.name for j in task.jobs), properties={}, condition_mask={})
    return _to_crystals(result)


def _keep_chunk(
    folder: RunFolder, k: int, part: Sequence[Job], made: Sequence[Crystal], failed: Sequence[tuple[str, str]]
) -> ChunkResult:
    """Log chunk ``k``'s failures, write it and its record; return the crystals as read back and the failures."""
    for name, reason in failed:
        logger.warning("%s: generated structure is unusable (%s); not written", name, reason)
    written = tuple(str(c.material_id) for c in made)
    record = ChunkRecord(jobs_digest(part), written, tuple(failed))
    return _write_chunk(folder, k, made, record), list(failed)


_WORKER_MODEL: GenerativeModel | None = None


def _start_worker(load: Callable[[str], WithModel], model_name: str, device: str) -> None:
    """Executor initializer: one torch thread, the model loaded once for every chunk of this worker."""
    global _WORKER_MODEL
    torch.set_num_threads(1)
    _WORKER_MODEL = load(model_name).model.to(device)


def _sample_in_worker(task: ChunkTask) -> ChunkResult:
    assert _WORKER_MODEL is not None, "worker not initialised"
    return _sample_chunk(_WORKER_MODEL, task)


def _write_chunk(folder: RunFolder, k: int, made: Sequence[Crystal], record: ChunkRecord) -> list[Crystal]:
    """Chunk ``k``'s file (empty when every structure failed), then its record; return the crystals as read back.

    The outputs are made from what the chunk file holds (its text rounds coordinates), so a resumed
    run, which reads the file, writes the same bytes as an unbroken one.
    """
    path = folder.chunk_path(k)
    if made:
        write_structures(list(made), path)
    else:
        with atomic_write(path) as handle:
            handle.write("")
    folder.write_chunk_record(k, record)
    return read_structures(path) if made else []


def write_outputs(folder: RunFolder, crystals: Sequence[Crystal], *, symmetrize: bool = True) -> None:
    """One CIF per structure (P1, and symmetrised unless spglib fails), then the samples file.

    The samples file comes last, so a folder that has it has every CIF (a run killed before it left
    CIFs only, which the rerun writes again with the same bytes).
    """
    if not crystals:
        return
    for crystal in crystals:
        name = str(crystal.material_id)
        write_structures([crystal], folder.cif_path(name))
        if symmetrize:
            try:
                write_structures([crystal], folder.cif_path(name, symmetrized=True), symmetrize=True)
            except Exception as exc:  # noqa: BLE001 - spglib can fail on odd cells; the P1 file exists
                logger.warning("%s: no symmetrised CIF (%s)", name, exc)
    write_structures(list(crystals), folder.samples_file)


def steering_record(item: object) -> JSONValue:
    """A guidance's or constraint's settings as plain data, the same in every process (for ``run.json``).

    A dataclass gives its class name and fields; an object with ``settings()`` gives that; any
    other gives its class name only (so two settings of it cannot be told apart on resume).
    """
    name = type(item).__qualname__
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        fields: JSONValue = json.loads(json.dumps(dataclasses.asdict(item), default=str))
        return {"type": name, "settings": fields}
    settings = getattr(item, "settings", None)
    if callable(settings):
        return {"type": name, "settings": json.loads(json.dumps(settings(), default=str))}
    return {"type": name}


def targets_digest(jobs: Sequence[Job]) -> str:
    """A digest of the distinct target settings of the jobs: resuming with other targets is refused.

    Only the distinct settings count, so asking for more structures with the same targets extends a run.
    """
    distinct = sorted({json.dumps(sorted(j.properties.items())) for j in jobs})
    return hashlib.sha256(json.dumps(distinct).encode()).hexdigest()[:16]


def jobs_digest(jobs: Sequence[Job]) -> str:
    """A digest of what decides a chunk's structures besides the settings.

    Each job's name, atom count, composition, targets and start structure count.
    """
    rows = [
        [j.name, j.num_atoms, list(j.composition) if j.composition is not None else None,
         sorted(j.properties.items()), _structure_digest(j.start)]
        for j in jobs
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _structure_digest(crystal: Crystal | None) -> str | None:
    """A digest of a structure's exact arrays (None for no structure)."""
    if crystal is None:
        return None
    digest = hashlib.sha256()
    for array in (crystal.atomic_numbers, crystal.frac_coords, crystal.lattice):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _finished_chunk(
    folder: RunFolder, k: int, part: Sequence[Job]
) -> tuple[list[Crystal], list[tuple[str, str]]] | None:
    """Chunk ``k``'s crystals and failures when an earlier run finished it for these jobs, else None (sample it)."""
    record = folder.chunk_record(k)
    path = folder.chunk_path(k)
    if record is None or not path.exists():
        return None
    if record.jobs != jobs_digest(part):
        logger.warning("%s was made for other jobs; sampling it again", path)
        return None
    try:
        done = read_structures(path) if path.stat().st_size else []
    except CrystalError as exc:  # e.g. written before the reader's limits: a structure it now refuses
        logger.warning("%s cannot be read back (%s); sampling it again", path, exc)
        return None
    if [str(c.material_id) for c in done] != list(record.written):
        logger.warning("%s does not hold what its record lists; sampling it again", path)
        return None
    return done, list(record.failures)


def _to_crystals(batch: CrystalBatch) -> tuple[list[Crystal], list[tuple[str, str]]]:
    """Generated batch → crystals (named by the batch's ids) and, in batch order, ``(name, reason)`` of the rest.

    The rest: degenerate structures (flat cell, NaN or inf) and those over ``core.limits`` (atoms on
    top of each other, ...), which every reader refuses, so they are never written.
    """
    crystals, errors = batch.split_checked()
    names = batch.material_ids or tuple(f"<crystal {i}>" for i in range(batch.num_crystals))
    why = {i: exc.problem for i, exc in errors}
    limits = StructureLimits.from_env()
    made, failed = [], []
    for i, crystal in enumerate(crystals):
        problem = why.get(i) if crystal is None else limits.problem(crystal)
        if problem is None and crystal is not None:
            made.append(crystal)
        else:
            failed.append((str(names[i]), str(problem)))
    return made, failed
