"""Chunked, seeded, resumable generation to disk, for any ``GenerativeModel``.

Jobs are cut into chunks of ``batch_size`` crystals. Chunk ``k`` is sampled with seed ``seed + k``
and written atomically, so an interrupted run continues with the first missing chunk and gives the
same structures as an uninterrupted one. At the end the chunks are gathered into the samples file
and one CIF per structure (P1 and symmetrised); the folder layout is ``io.run_folder.RunFolder``.
``run.json`` records the run's settings (model, sampler, steering, seed, chunk size); once chunks
exist, resuming with other settings is an error rather than a silent mix of two runs, and a chunk
is reused only if it holds exactly its jobs (names, atom counts and, for CSP, compositions).

Jobs carry target ``properties``: a property-conditioned model reads them from the template (a
missing value is NaN and hidden by ``condition_mask``). A generated structure that is not a
crystal (a flat or NaN cell) is not written but listed with its reason in ``failures.csv``;
evaluating the folder counts it as an invalid sample, so no rate is computed over survivors only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan, SamplerConfig, model_dtype
from crystalforge.io.atomic import atomic_write
from crystalforge.io.files import read_structures, write_structures
from crystalforge.io.run_folder import JSONValue, RunFolder
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
) -> list[Crystal]:
    """Generate every job (resuming from chunks already on disk); return the crystals in job order.

    ``sampler`` is a plan (settings + guidance + constraints) or plain settings (None: the model's
    default). ``model_name`` is stored in ``run.json`` with the sampler settings, guidance and
    constraints, seed and chunk size; a folder whose chunks were made with other settings raises
    ``ValueError``.
    """
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
    model = model.to(device)
    dtype = model_dtype(model)
    crystals: list[Crystal] = []
    failed_before = folder.failed_names()
    n_chunks = math.ceil(len(jobs) / batch_size)
    for k in range(n_chunks):
        part = jobs[k * batch_size : (k + 1) * batch_size]
        path = folder.chunk_path(k)
        made = _finished_chunk(path, part, failed_before)
        if made is None:
            generator = torch.Generator(device=device).manual_seed(seed + k)
            result = sample(model, jobs_template(part, dtype).to(device), plan, generator=generator)
            if result.num_crystals != len(part):
                raise RuntimeError(f"the model returned {result.num_crystals} crystals for {len(part)} jobs")
            # outputs are named by their jobs, whatever the family kept; targets are not results
            result = result.replace(material_ids=tuple(j.name for j in part), properties={}, condition_mask={})
            made, failed = _to_crystals(result)
            for name, reason in failed:
                logger.warning("%s: generated structure is unusable (%s); not written", name, reason)
            if made:
                write_structures(made, path)
            else:  # every structure failed: an empty chunk file marks the chunk as done
                with atomic_write(path) as handle:
                    handle.write("")
            folder.append_failures(failed)  # after the chunk: a crash between never lists twice
        crystals.extend(made)
        if progress:
            progress(len(part))
    write_outputs(folder, crystals, symmetrize=symmetrize)
    return crystals


def write_outputs(folder: RunFolder, crystals: Sequence[Crystal], *, symmetrize: bool = True) -> None:
    """The samples file and one CIF per structure (P1, and symmetrised unless spglib fails)."""
    if not crystals:
        return
    write_structures(list(crystals), folder.samples_file)
    for crystal in crystals:
        name = str(crystal.material_id)
        write_structures([crystal], folder.cif_path(name))
        if symmetrize:
            try:
                write_structures([crystal], folder.cif_path(name, symmetrized=True), symmetrize=True)
            except Exception as exc:  # noqa: BLE001 - spglib can fail on odd cells; the P1 file exists
                logger.warning("%s: no symmetrised CIF (%s)", name, exc)


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


def _to_crystals(batch: CrystalBatch) -> tuple[list[Crystal], list[tuple[str, str]]]:
    """Generated batch → crystals (named by the batch's ids); degenerate ones (flat cell, NaN) as (name, reason)."""
    crystals, failures = batch.split_checked()
    names = batch.material_ids or tuple(f"<crystal {i}>" for i in range(batch.num_crystals))
    return [c for c in crystals if c is not None], [(str(names[i]), exc.problem) for i, exc in failures]
