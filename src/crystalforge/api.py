"""The Python API (CLI, notebooks, tests): names resolved, work handed to packages; ``workers``: processes or Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

from crystalforge.core import Candidate, Crystal, CrystalBatch, CrystalError, DatasetStats, z_to_symbol
from crystalforge.core.extras import MissingDependencyError, require
from crystalforge.data.benchmark import expected_rows
from crystalforge.data.paths import cache_dir, data_dir
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.resolve import dataset_stats, load_dataset, resolve_reference, resolve_train
from crystalforge.data.samples import read_samples
from crystalforge.data.sources import BENCHMARKS, REDUCED, SPLITS, known_datasets
from crystalforge.design.pipeline import run_design
from crystalforge.design.report import write_report
from crystalforge.design.serve import check_run, serve_runs
from crystalforge.evaluation.report import MetricReport
from crystalforge.evaluation.run import evaluate_candidates, featurizers_needed
from crystalforge.execution import ExecutorConfig
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan
from crystalforge.io.files import detect_format, iter_records, read_structures, write_structures
from crystalforge.predictors import PredictorEnsemble, PredictorTrainConfig, PropertyGNNConfig
from crystalforge.pretrained import list_models
from crystalforge.progress import progress_bar
from crystalforge.relax.registry import make_relaxer
from crystalforge.sampling.jobs import composition_plan, generation_jobs, prediction_jobs
from crystalforge.sampling.refine import refine_proposals
from crystalforge.sampling.runner import Job, run_jobs
from crystalforge.sampling.samplers import parse_anti_annealing, with_overrides
from crystalforge.sampling.steering import Steering, parse_target, run_steered
from crystalforge.screening.judge import judged
from crystalforge.screening.predict import predict_properties
from crystalforge.training.config import TrainConfig
from crystalforge.training.loading import LoadedModel, load_model
from crystalforge.training.predictor import train_predictor

__all__ = [
    "BENCHMARKS", "REDUCED", "SPLITS", "Candidate", "Crystal", "CrystalBatch", "CrystalError", "DatasetStats",
    "ExecutorConfig", "LoadedModel", "MissingDependencyError", "PredictorEnsemble", "PredictorTrainConfig",
    "PreprocessOptions", "PropertyGNNConfig", "Steering", "check_run", "csp", "data_dir",
    "dataset_stats", "design", "detect_format", "evaluate", "expected_rows", "generate", "iter_records",
    "known_datasets", "list_models", "load_dataset", "load_model", "parse_anti_annealing", "parse_target",
    "predict_properties", "progress_bar", "read_samples", "read_structures", "refine", "require", "serve_runs",
    "train", "train_predictor", "write_report", "write_structures", "z_to_symbol",
]  # fmt: skip

Progress = Callable[[int], object] | None
AntiAnnealing = float | Mapping[str, float] | None
JobsFor = Callable[[GenerativeModel, DatasetStats | None, int], list[Job]]


def _run(model: str | Path, out: str | Path, jobs_for: JobsFor, steps: int | None, anti_annealing: AntiAnnealing,
         plan: SamplePlan | None, batch_size: int, seed: int, device: str, progress: Progress,
         steering: Steering | None = None, n: int = 0, composition: str | None = None,
         workers: int | ExecutorConfig = 1) -> list[Crystal]:  # fmt: skip
    """Load the model, build its jobs, run them (steered: serially) with its sampler overridden where given."""
    net, _, stats, default = load_model(model)
    sampler = with_overrides(default, steps=steps, anti_annealing=anti_annealing, plan=plan)
    sampler = composition_plan(net, sampler, composition, elements=steering.elements if steering else None)
    run = {"model_name": str(model), "batch_size": batch_size, "seed": seed, "device": device, "progress": progress}
    return (run_steered(net, partial(jobs_for, net, stats), n, out, steering, sampler, **run) if steering else
            run_jobs(net, jobs_for(net, stats, n), out, sampler=sampler, workers=workers, load=load_model, **run))  # type: ignore[arg-type]  # fmt: skip


def generate(model: str | Path = "perov_5-dng", *, n: int = 100, out: str | Path, num_atoms: int | None = None,
             composition: str | None = None, properties: Mapping[str, float | str] | None = None,
             steps: int | None = None, anti_annealing: AntiAnnealing = None, plan: SamplePlan | None = None,
             steering: Steering | None = None, seed: int = 0, device: str = "cpu", batch_size: int = 256,
             progress: Progress = None, workers: int | ExecutorConfig = 1) -> list[Crystal]:  # fmt: skip
    """Generate ``n`` crystals into ``out`` (resumable; ``workers`` sample chunks unless steered; ``sampling.runner``).

    ``composition`` (a formula: the cell content): CSP, or DNG with ``FixedComposition``; ``properties``
    are targets of a conditioned model; ``plan`` adds guidance/constraints; ``steering``: targets, routes,
    elements, motif (``sampling.steering``); ``anti_annealing`` (``s`` or ``{field: s}``) scales flow velocities.
    """

    def jobs_for(net: GenerativeModel, stats: DatasetStats | None, count: int) -> list[Job]:
        return generation_jobs(net, stats, n=count, num_atoms=num_atoms, composition=composition,
                               properties=properties, seed=seed, name=str(model))  # fmt: skip

    return _run(model, out, jobs_for, steps, anti_annealing, plan, batch_size, seed, device, progress, steering, n,
                composition, workers)  # fmt: skip


def csp(model: str | Path = "perov_5-csp", *, out: str | Path, formulas: Sequence[str] = (), device: str = "cpu",
        reference: str | Path | None = None, split: str = "test", limit: int | None = None, batch_size: int = 256,
        system: str | None = None, max_atoms: int = 20, max_formulas: int | None = None, charge_balanced: bool = True,
        steps: int | None = None, anti_annealing: AntiAnnealing = None, seed: int = 0, root: str | Path | None = None,
        k: int = 1, progress: Progress = None, workers: int | ExecutorConfig = 1) -> list[Crystal]:  # fmt: skip
    """``k`` structures per formula, reference entry or ``system`` composition, named ``<id|formula>[_<j>]``."""
    crystals = [] if reference is None else resolve_reference(reference, split, root, None)[0][:limit]
    targets = [(str(c.material_id), c.atomic_numbers.tolist()) for c in crystals]

    def jobs_for(net: GenerativeModel, stats: DatasetStats | None, count: int) -> list[Job]:
        return prediction_jobs(net, targets, formulas=formulas, system=system, max_atoms=max_atoms, k=k,
                               max_formulas=max_formulas, charge_balanced=charge_balanced, name=str(model))  # fmt: skip

    return _run(model, out, jobs_for, steps, anti_annealing, None, batch_size, seed, device, progress, workers=workers)


def evaluate(samples: str | Path | Iterable[Crystal], *, reference: str | Path | Sequence[Crystal] | None = "mp_20",
             task: str = "dng", split: str = "test", train: str | Path | Sequence[Crystal] | bool | None = None,
             relax: str | None = None, coverage: bool = True, coverage_cutoffs: tuple[float, float] | None = None,
             k: int | None = None, target: tuple[str, float | None, float | None] | None = None,
             fmt: str | None = None, judge: str | Path | None = None, out: str | Path | None = None,
             workers: int | ExecutorConfig = 1, root: str | Path | None = None, show_progress: bool = False,
             time_limit_s: float | str | None = "env") -> MetricReport:  # fmt: skip
    """Evaluate generated (``task="dng"``) or predicted (``task="csp"``) crystals by the pinned protocol: docs/metrics.

    ``target`` ``(property, low, high)`` is scored on ``judge``'s predictions, else the samples' own values;
    ``train=False`` skips novelty; ``relax`` names an MLIP; ``time_limit_s``: seconds per structure in hang-prone steps.
    """
    candidates = judged(read_samples(samples, fmt=fmt, workers=workers), judge, None if target is None else target[0])
    ref, ref_name = (None, None) if reference is None else resolve_reference(reference, split, root, workers)
    train_set, train_name = (None, "unused in CSP") if task == "csp" else resolve_train(train, reference, root, workers)
    key, struct_fp, comp_fp, relaxer = str(reference) if isinstance(reference, (str, Path)) else None, None, None, None
    if coverage and ref is not None and featurizers_needed(task, key, coverage_cutoffs):
        from crystalforge.representations.fingerprints import CrystalNNFingerprint, MagpieComposition

        struct_fp, comp_fp = CrystalNNFingerprint(workers=workers), MagpieComposition(scaler="cdvae", workers=workers)
    if relax:  # the cache makes a rerun resume
        relaxer = make_relaxer(relax, workers=workers, cache_file=Path(out or cache_dir()) / f"relax-{relax}.jsonl")
    try:
        return evaluate_candidates(
            candidates, task=task, reference=ref, reference_name=ref_name, reference_key=key, train=train_set, k=k,
            train_name=train_name, struct_featurizer=struct_fp, comp_featurizer=comp_fp, relaxer=relaxer, time_limit_s=
            time_limit_s, coverage_cutoffs=coverage_cutoffs, target=target, show_progress=show_progress, out=None if
            out is None else Path(out), workers=workers, cache_dir=cache_dir() / "fingerprints")  # fmt: skip
    finally:
        if relaxer is not None:
            relaxer.close()


def train(config: str | Path | TrainConfig, out: str | Path, *, overrides: Sequence[str] = ()) -> Path:
    """Train (or resume) any family from a YAML config or a ``TrainConfig``; returns the exported ``model.pt``."""
    from crystalforge.config import load_config
    from crystalforge.training.run import train as run_training

    require("lightning", "training (crystalforge train)")
    return run_training(config if isinstance(config, TrainConfig) else load_config(TrainConfig, config, overrides), out)


refine = partial(refine_proposals, load=load_model)
"""``refine(model, proposals, *, out, start_time=0.6, k=1, steps=None, ...)``: ``sampling.refine``."""

design = partial(run_design, generate=generate)
"""``design(spec | YAML path | None, *, progress=, relax_with=, **fields) -> DesignResult``: ``design.pipeline``."""
