"""The Python API behind the CLI: what notebooks, scripts and tests call.

``load_dataset`` resolves a benchmark name, a reduced protocol or a path; ``read_structures`` /
``write_structures`` handle every structure format, including the crystal text format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from crystalforge.core.crystal import Crystal
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.errors import CrystalError
from crystalforge.data.benchmark import load_benchmark
from crystalforge.data.dataset import CrystalDataset
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.sources import BENCHMARKS, REDUCED, known_datasets
from crystalforge.data.stats import compute_dataset_stats
from crystalforge.data.user import load_user_dataset
from crystalforge.evaluation.context import Sample
from crystalforge.evaluation.report import MetricReport
from crystalforge.io import files as _files

_log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".cftxt")
"""File names that hold crystals in the crystal text format (one block per crystal)."""


def load_dataset(
    name: str | Path,
    split: str = "train",
    root: str | Path | None = None,
    *,
    preprocess: PreprocessOptions | None = None,
    properties: str | Path | None = None,
    workers: int | None = None,
    cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> CrystalDataset:
    """A sized, indexable dataset of ``Crystal``.

    ``name``: ``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``, a reduced protocol such as
    ``mp_20_reduced``, or a path to a folder/file of structures or an ASE ``.db`` (then ``split``
    is ignored and ``properties`` may name a CSV property table). ``root`` overrides the data
    directory. Benchmarks are Niggli-reduced by default (``PreprocessOptions``); user data is
    kept as given unless ``preprocess`` says otherwise.
    """
    key = str(name)
    if key in BENCHMARKS or key in REDUCED:
        if properties is not None:
            raise ValueError("properties= applies to user datasets; benchmarks carry their own property columns")
        return load_benchmark(
            key, split, root=root, options=preprocess, workers=workers, use_cache=cache, progress=progress
        )
    path = Path(key).expanduser()
    if path.exists():
        return load_user_dataset(path, properties=properties, options=preprocess, use_cache=cache)
    raise KeyError(f"unknown dataset {key!r}: not one of {', '.join(known_datasets())}, and no such file or folder")


def dataset_stats(dataset: CrystalDataset | Iterable[Crystal]) -> DatasetStats:
    """Statistics (num-atoms histogram, density, lattice moments, element frequencies)."""
    if isinstance(dataset, CrystalDataset):
        return compute_dataset_stats(dataset.arrays)
    return compute_dataset_stats(dataset)


def _is_text(path: Path, fmt: str | None) -> bool:
    return fmt == "text" or (fmt is None and path.suffix.lower() in TEXT_SUFFIXES)


def iter_records(path: str | Path, *, fmt: str | None = None) -> Iterable[_files.Record]:
    """Records from any supported file or folder, the crystal text format included."""
    p = Path(path)
    if _is_text(p, fmt) and p.is_file():
        from crystalforge.representations.tokens import CrystalText

        text_codec = CrystalText()
        blocks = [b for b in p.read_text().split("\n\n") if b.strip()]
        if not blocks:
            yield _files.Record(str(p), error="file is empty")
        for i, block in enumerate(blocks):
            try:
                yield _files.Record(f"{p}:{i}", crystal=text_codec.decode(block))
            except CrystalError as exc:
                yield _files.Record(f"{p}:{i}", error=exc.problem)
        return
    yield from _files.iter_records(p, fmt=fmt)


def read_structures(path: str | Path, *, fmt: str | None = None, skip_bad: bool = False) -> list[Crystal]:
    """All crystals in a file or folder (CIF, POSCAR, extxyz, npz archive, crystal text).

    The first bad record raises ``CrystalError`` naming it, unless ``skip_bad`` (then bad records
    are logged and left out).
    """
    return _files.collect_crystals(iter_records(path, fmt=fmt), skip_bad=skip_bad)


def write_structures(
    crystals: Iterable[Crystal],
    path: str | Path,
    *,
    fmt: str | None = None,
    symmetrize: bool = False,
    symprec: float = _files.DEFAULT_SYMPREC,
) -> Path:
    """Write crystals to ``path`` atomically.

    Formats: ``cif`` (P1, or the symmetrised cell with ``symmetrize``), ``poscar``, ``extxyz``,
    ``npz`` or ``text``; by default from the file name.
    """
    p = Path(path)
    if _is_text(p, fmt):
        from crystalforge.io.atomic import atomic_write
        from crystalforge.representations.tokens import CrystalText

        items = list(crystals)
        if not items:
            raise ValueError(f"{p}: nothing to write (no crystals)")
        codec = CrystalText()
        with atomic_write(p, "w") as handle:
            handle.write("\n\n".join(codec.encode(c).rstrip("\n") for c in items) + "\n")
        return p
    return _files.write_structures(crystals, p, fmt=fmt, symmetrize=symmetrize, symprec=symprec)


# ---- evaluation ---------------------------------------------------------------------------------
_CSV_SUFFIXES = (".csv", ".csv.gz")


def read_samples(samples: str | Path | Iterable[Crystal], *, fmt: str | None = None, workers: int = 1) -> list[Sample]:
    """Input records for evaluation, in order.

    ``samples`` is a folder of structure files, one file (CIF, extxyz, POSCAR, npz archive, crystal
    text, or a CDVAE-format CSV), or crystals in memory. Unreadable records are kept as
    ``Sample``s with an ``error`` so they are counted, never dropped. A folder written by
    ``generate``/``csp`` (it holds ``run.json``) gives its ``samples.extxyz`` followed by one
    failed ``Sample`` per structure listed in its ``failures.csv`` (generated but not a crystal).
    """
    from crystalforge.sampling import runner

    if not isinstance(samples, (str, Path)):
        return [Sample(i, c.material_id or f"<crystal {i}>", crystal=c) for i, c in enumerate(samples)]
    path = Path(samples).expanduser()
    if path.is_dir() and runner.is_generation_folder(path):
        made = path / runner.SAMPLES_FILE  # absent when every structure failed
        items = _read_sample_records(made, fmt, workers) if made.is_file() else []
        failed = runner.read_failures(path)
        return items + [
            Sample(
                len(items) + i,
                f"{runner.FAILURES_FILE}: {name}",
                error=f"generation failed: {reason}",
                material_id=name,
            )
            for i, (name, reason) in enumerate(failed)
        ]
    uncounted = runner.read_failures(path.parent) if path.is_file() and runner.is_generation_folder(path.parent) else []
    if uncounted:
        _log.warning(
            "%s: %d structures of this generation run are listed in %s and not counted; evaluate the "
            "folder %s to count them as invalid",
            path,
            len(uncounted),
            runner.FAILURES_FILE,
            path.parent,
        )
    return _read_sample_records(path, fmt, workers)


def _read_sample_records(path: Path, fmt: str | None, workers: int) -> list[Sample]:
    """The records of one file or folder of structure files, unreadable ones included."""
    if path.is_file() and (fmt == "csv" or path.name.lower().endswith(_CSV_SUFFIXES)):
        from crystalforge.data.dataset import parse_csv_rows

        rows = parse_csv_rows(path, options=PreprocessOptions.raw(), workers=workers)
        return [
            Sample(
                i,
                f"{path.name} row {row}",
                crystal=crystal,
                error=None if failure is None else failure.problem,
                material_id=None if failure is None else failure.material_id,
            )
            for i, (row, crystal, failure) in enumerate(rows)
        ]
    return [
        Sample(i, r.source, crystal=r.crystal, error=r.error, material_id=r.ident)
        for i, r in enumerate(iter_records(path, fmt=fmt))
    ]


def _reference_crystals(
    reference: str | Path | Sequence[Crystal], split: str, root: str | Path | None, workers: int | None
) -> tuple[list[Crystal], str]:
    """The reference crystals and a name for the protocol block."""
    if not isinstance(reference, (str, Path)):
        return list(reference), "<in memory>"
    key = str(reference)
    if key in BENCHMARKS or key in REDUCED:
        return list(load_benchmark(key, split, root=root, workers=workers)), f"{key}/{split}"
    path = Path(key).expanduser()
    if not path.exists():
        raise KeyError(f"unknown reference {key!r}: not one of {', '.join(known_datasets())}, and no such file")
    if path.name.lower().endswith(_CSV_SUFFIXES):
        from crystalforge.data.dataset import parse_csv

        crystals, failures = parse_csv(path, options=PreprocessOptions.raw(), workers=workers or 1)
        for failure in failures:
            _log.warning("reference: skipped %s", failure)
    else:
        crystals = read_structures(path, skip_bad=True)
    if not crystals:
        raise CrystalError("the reference holds no readable structure", source=str(path))
    return crystals, path.name


def _train_crystals(
    train: str | Path | Sequence[Crystal] | bool | None,
    reference: str | Path | Sequence[Crystal] | None,
    root: str | Path | None,
    workers: int | None,
) -> tuple[list[Crystal] | None, str | None]:
    """The training set for novelty: given, or the reference protocol's complete train split."""
    if train is False:
        return None, "not requested"
    if train is not None and train is not True:
        return _reference_crystals(train, "train", root, workers)
    if reference is None:
        return None, "no reference (pass train= for novelty)"
    key = str(reference) if isinstance(reference, (str, Path)) else ""
    if key not in BENCHMARKS and key not in REDUCED:
        return None, "no training set given (pass train=)"
    try:
        return list(load_benchmark(key, "train", root=root, workers=workers)), f"{key}/train"
    except FileNotFoundError:
        return None, f"{key}/train is not present here (novelty needs the complete training split)"


def evaluate(
    samples: str | Path | Iterable[Crystal],
    *,
    reference: str | Path | Sequence[Crystal] | None = "mp_20",
    task: str = "dng",
    split: str = "test",
    train: str | Path | Sequence[Crystal] | bool | None = None,
    relax: str | None = None,
    coverage: bool = True,
    coverage_cutoffs: tuple[float, float] | None = None,
    k: int | None = None,
    target: tuple[str, float | None, float | None] | None = None,
    out: str | Path | None = None,
    workers: int = 1,
    root: str | Path | None = None,
    fmt: str | None = None,
    show_progress: bool = False,
) -> MetricReport:
    """Evaluate generated (``task="dng"``) or predicted (``task="csp"``) crystals by the pinned protocol.

    Args:
        samples: a folder or file of structures, a CDVAE-format CSV, or crystals.
        reference: a benchmark name (its ``split``, default test), a CSV/structure file, crystals,
            or None (reference-free metrics only).
        split: the benchmark split used as reference (default ``"test"``).
        task: ``"dng"`` or ``"csp"``; for CSP, samples link to reference ``material_id``s by name
            (``mp-1234``, ``mp-1234_3``...), up to ``k`` per reference.
        train: training set for novelty (default: the protocol's train split when complete here;
            False to skip).
        relax: relaxer name (``"chgnet"``) for stability and S.U.N.; results are cached per
            structure under ``out`` (or the cache directory) so an interrupted run resumes.
        coverage: compute COV-R/P (CrystalNN fingerprints cost ~15 ms per site).
        coverage_cutoffs: (structure, composition) cutoffs; default CDVAE's for a benchmark
            reference (needed for a CSV or file reference).
        k: predictions per reference for best-of-k (CSP; default: the most any reference has).
        target: ``(property, low, high)`` window for the targeting success rate; the property is
            read from each sample's ``properties``.
        out: folder for ``summary.json``, ``per_structure.csv`` and ``summary.md``; also caches the
            samples' fingerprints (``fingerprints/``), so an interrupted coverage run resumes.
        workers: processes for fingerprints, matching and relaxation.
        root: data directory for benchmark names.
        fmt: force the sample file format.
        show_progress: progress bars on stderr.

    """
    from crystalforge.data.paths import cache_dir
    from crystalforge.evaluation.context import EvaluationContext, assign_groups, null_progress
    from crystalforge.evaluation.suite import run_evaluation

    if task not in ("dng", "csp"):
        raise ValueError(f"task must be 'dng' or 'csp', not {task!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    items = read_samples(samples, fmt=fmt, workers=workers)
    if not items:
        raise CrystalError(
            "no structures to evaluate", source=str(samples) if isinstance(samples, (str, Path)) else None
        )
    ref, ref_name = (None, None) if reference is None else _reference_crystals(reference, split, root, workers)
    if task == "csp":
        train_set, train_name = None, "not used for CSP"
        if ref is None:
            raise ValueError("task='csp' needs a reference set")
        ids = [c.material_id or "" for c in ref]
        if "" in ids or len(set(ids)) != len(ids):
            raise ValueError(f"reference {ref_name}: CSP needs a distinct material_id for every reference structure")
        items = assign_groups(items, ids)
        if not any(s.group for s in items):
            raise ValueError(
                "no sample is linked to a reference material_id: name files <material_id>.cif or "
                "<material_id>_<k>.cif, or give extxyz frames a material_id"
            )
    else:
        train_set, train_name = _train_crystals(train, reference, root, workers)
    struct_fp = comp_fp = cutoffs = None
    if coverage and ref is not None and task == "dng":
        cutoffs = coverage_cutoffs or _coverage_cutoffs(reference)
        if cutoffs is not None:
            from crystalforge.representations.fingerprints import CrystalNNFingerprint, MagpieComposition

            struct_fp = CrystalNNFingerprint(workers=workers)
            comp_fp = MagpieComposition(scaler="cdvae", workers=workers)
    relaxer = hull = None
    out_dir = None if out is None else Path(out)
    if relax:
        from crystalforge.evaluation.metrics.stability import ReferenceHull
        from crystalforge.relax.ase_relaxer import get_relaxer
        from crystalforge.relax.cache import CachedRelaxer

        cache_file = (out_dir if out_dir is not None else cache_dir()) / f"relax-{relax}.jsonl"
        relaxer = CachedRelaxer(get_relaxer(relax, workers=workers), cache_file)
        hull = ReferenceHull.load()
    ctx = EvaluationContext(
        samples=items,
        task=task,  # type: ignore[arg-type]
        reference=ref,
        reference_name=ref_name,
        train=train_set,
        train_name=train_name,
        struct_featurizer=struct_fp,
        comp_featurizer=comp_fp,
        coverage_cutoffs=cutoffs,
        relaxer=relaxer,
        hull=hull,
        k=k,
        property_name=None if target is None else target[0],
        target_window=None if target is None else (target[1], target[2]),
        workers=workers,
        cache_dir=cache_dir() / "fingerprints",
        sample_cache_dir=None if out_dir is None else out_dir / "fingerprints",
        progress=partial(progress_bar, leave=False) if show_progress else null_progress,
    )
    report = run_evaluation(ctx)
    if out_dir is not None:
        report.write(out_dir)
        relaxed = ctx.relaxed_crystals()
        if relaxed:
            _files.write_structures(relaxed, out_dir / "relaxed.extxyz")
    return report


def _coverage_cutoffs(reference: str | Path | Sequence[Crystal]) -> tuple[float, float] | None:
    """CDVAE's (structure, composition) cutoffs for a benchmark reference, else None."""
    from crystalforge.evaluation.metrics.coverage import coverage_cutoffs

    if not isinstance(reference, (str, Path)):
        return None
    try:
        return coverage_cutoffs(str(reference))
    except KeyError:
        return None


def progress_bar(total: int | None, desc: str, *, leave: bool = True):  # noqa: ANN201 - a tqdm bar
    """A tqdm bar on stderr counting structures (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="struct", file=sys.stderr, disable=None, dynamic_ncols=True, leave=leave)


# ---- models: train, list, load, generate, predict structures ------------------------------------
def list_models() -> dict[str, dict]:
    """Shipped models: name → card (task, kind, dataset, file, default steps, recorded metrics)."""
    import json
    from importlib import resources

    index = resources.files("crystalforge.models").joinpath("index.json")
    return json.loads(index.read_text())


def load_model(model: str | Path) -> tuple[Any, Any, DatasetStats | None]:
    """``(model, train_config, dataset_stats)`` from a shipped name or a ``model.pt`` path."""
    net, config, stats, _ = _load_for_sampling(model)
    return net, config, stats


def _load_for_sampling(model: str | Path) -> tuple[Any, Any, DatasetStats | None, Any]:
    """``load_model`` plus the model's default ``SamplerConfig``.

    Steps: the card's ``default_steps``, else 50 (flow) or 1000 (diffusion); anti-annealing: the
    card's ``default_anti_annealing`` if any (None keeps the processes' setting).
    """
    from importlib import resources

    from crystalforge.sampling.samplers import SamplerConfig
    from crystalforge.training.run import load_model as _load

    cards = list_models()
    card = cards.get(str(model))
    if card is not None:
        path = Path(str(resources.files("crystalforge.models").joinpath(card["file"])))
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise KeyError(
                f"unknown model {str(model)!r}: not a shipped model ({', '.join(sorted(cards)) or 'none'}) nor a file"
            )
    net, config, stats = _load(path)
    card = card or {}
    default = SamplerConfig(
        steps=int(card.get("default_steps", 50 if config.model.kind == "flow" else 1000)),
        anti_annealing=card.get("default_anti_annealing"),
    )
    return net, config, stats, default


def _run_jobs(
    model: str | Path,
    net: Any,
    default: Any,
    jobs: Sequence[Any],
    out: str | Path,
    steps: int | None,
    anti_annealing: float | Mapping[str, float] | None,
    batch_size: int,
    seed: int,
    device: str,
    progress: Callable[[int], None] | None,
) -> list[Crystal]:
    """Run the jobs with the model's default sampler, overridden by ``steps`` / ``anti_annealing`` where given."""
    from dataclasses import replace

    from crystalforge.sampling.runner import run_jobs

    sampler = replace(
        default,
        steps=steps or default.steps,
        anti_annealing=default.anti_annealing if anti_annealing is None else anti_annealing,
    )
    return run_jobs(
        net,
        jobs,
        out,
        sampler=sampler,
        model_name=str(model),
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )


def generate(
    model: str | Path = "perov_5-dng",
    *,
    n: int = 100,
    out: str | Path,
    num_atoms: int | None = None,
    composition: str | None = None,
    steps: int | None = None,
    anti_annealing: float | Mapping[str, float] | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[Crystal]:
    """Generate ``n`` crystals into ``out`` (resumable; see ``sampling.runner``).

    A DNG model draws the number of atoms from its training distribution unless ``num_atoms`` is
    given; ``composition`` (a formula, taken literally as the cell content) fixes the types, which a
    CSP model requires. ``anti_annealing`` scales flow velocities by ``1 + s·t`` (FlowMM): one value
    for every flow field or ``{"frac_coords": s, ...}``; None takes the model card's default (or the
    processes' own setting), 0 turns it off.
    """
    import numpy as np

    from crystalforge.sampling.runner import Job
    from crystalforge.sampling.templates import parse_formula

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    net, config, stats, default = _load_for_sampling(model)
    if composition is not None:
        z = tuple(parse_formula(composition))
        if config.model.task == "dng":
            raise ValueError(
                "a DNG model generates types itself; use a CSP model (or `crystalforge csp`) for a composition"
            )
        jobs = [Job(f"gen_{i:05d}", len(z), z) for i in range(n)]
    else:
        if config.model.task == "csp":
            raise ValueError("a CSP model needs --composition (or use `crystalforge csp`)")
        if num_atoms is not None:
            counts = np.full(n, num_atoms)
        else:
            if stats is None:
                raise ValueError("this model has no dataset statistics: pass num_atoms")
            counts = stats.sample_num_atoms(n, rng=np.random.default_rng(seed))
        jobs = [Job(f"gen_{i:05d}", int(c)) for i, c in enumerate(counts)]
    return _run_jobs(model, net, default, jobs, out, steps, anti_annealing, batch_size, seed, device, progress)


def csp(
    model: str | Path = "perov_5-csp",
    *,
    out: str | Path,
    formulas: Sequence[str] = (),
    reference: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    k: int = 1,
    steps: int | None = None,
    anti_annealing: float | Mapping[str, float] | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    root: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Crystal]:
    """Predict structures for formulas, or for every composition of a reference split.

    Outputs are named by the reference ``material_id`` (``<id>`` for k=1, ``<id>_<j>`` for k>1),
    ready for ``evaluate(..., task="csp")``; formulas give ``<formula>`` / ``<formula>_<j>``.
    ``anti_annealing`` as in :func:`generate`.
    """
    from crystalforge.sampling.runner import Job
    from crystalforge.sampling.templates import parse_formula

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    net, config, _, default = _load_for_sampling(model)
    if config.model.task != "csp":
        raise ValueError(f"model {model!s} is a {config.model.task.upper()} model; CSP needs a CSP model")
    targets: list[tuple[str, tuple[int, ...]]] = []
    if reference is not None:
        crystals, _ = _reference_crystals(reference, split, root, None)
        crystals = crystals[:limit] if limit is not None else crystals
        targets = [(str(c.material_id), tuple(int(z) for z in c.atomic_numbers)) for c in crystals]
    for formula in formulas:
        targets.append((formula.replace(" ", ""), tuple(parse_formula(formula))))
    if not targets:
        raise ValueError("nothing to predict: give formulas or a reference")
    jobs = [Job(name if k == 1 else f"{name}_{j}", len(z), z) for j in range(k) for name, z in targets]
    return _run_jobs(model, net, default, jobs, out, steps, anti_annealing, batch_size, seed, device, progress)


def train(config: str | Path | Any, out: str | Path, *, overrides: Sequence[str] = ()) -> Path:
    """Train (or resume) from a YAML config (or a ``TrainConfig``); returns the exported ``model.pt``."""
    from crystalforge.config import load_config
    from crystalforge.training.run import TrainConfig
    from crystalforge.training.run import train as _train

    cfg = config if isinstance(config, TrainConfig) else load_config(TrainConfig, config, overrides)
    return _train(cfg, out)
