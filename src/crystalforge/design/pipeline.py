"""``run_design``: a target → ranked, relaxed candidates and the top N's CIFs; resumable and extendable.

The funnel (docs/design.md explains the order): generate (rounds of batches) → filter → dedupe →
screen (the predictor on the as-generated structures: a pre-rank) → relax (only the best
``relax_count`` by that pre-rank: an MLIP relaxation costs ~15–30 s per structure on a CPU) →
hull → predict (the predictor on the relaxed structures) → rank → export.

Everything lives in the run folder ``RUN/``: ``candidates.db`` (the ``CandidateStore``: every
candidate and every stage's result), ``design.json`` (spec, rounds, timings, funnel, top; written
atomically after every stage), ``generate/`` (one generation folder per batch),
``relax-cache.jsonl`` (finished relaxations), ``top/`` and ``top.csv``. A rerun of the same spec
does only what is missing, after a ``kill -9`` or Ctrl-C too: every file is written atomically,
every store write is one transaction, and the temporaries of a killed writer are cleared at the
start, so the results are those of an uninterrupted run (timings aside). A larger ``budget`` adds
a round of new candidates, a larger ``relax_budget`` relaxes more of the screened ones. Settings
that decide what the stored results mean (model, targets, filters, predictor, relaxer, seed, ...)
cannot change on a rerun: that is an error naming them. With ``rounds > 1`` or ``active_learning`` the rounds run one
after another, each relaxing its own best, and the screen's surrogate may learn between them
(``design.active``); ``design.json``'s ``round_results`` records each round.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from crystalforge.core.versions import distribution_version
from crystalforge.design.active import check_stability_head, rounds_summary, run_rounds, split_evenly
from crystalforge.design.export import export_top, rank_candidates
from crystalforge.design.generation import Batch, Generate, generate_batches, plan_batches
from crystalforge.design.spec import EXTENDABLE, STAGES, DesignSpec, SpecError, load_spec, objective_record
from crystalforge.design.stages import (
    DesignContext,
    ProgressFactory,
    dedupe,
    filter_candidates,
    hull,
    predict,
    relax,
    screen,
    stage_bar,
)
from crystalforge.execution import ExecutorConfig
from crystalforge.interrupt import check_interrupted
from crystalforge.io.atomic import atomic_write, remove_temporaries
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.shipped import load_predictor
from crystalforge.progress import null_progress
from crystalforge.relax.interfaces import Relaxer

__all__ = ["DESIGN_FILE", "STORE_FILE", "DesignResult", "Generate", "ProgressFactory", "run_design"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DESIGN_FILE = "design.json"
STORE_FILE = "candidates.db"
RELAX_CACHE = "relax-cache.jsonl"


@dataclass(frozen=True)
class DesignResult:
    """What a design run left in ``run``: the funnel, the top candidates (table rows, best first), timings."""

    run: Path
    funnel: Mapping[str, int]
    top: Sequence[Mapping[str, object]]
    stages: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    report: Path | None = None
    seconds: float = 0.0
    rounds: Sequence[Mapping[str, object]] = ()

    def summary(self) -> str:
        """One line: the funnel, the best candidate and where the results are."""
        f = self.funnel
        words = ("generated", "passed the filters", "new", "screened", "relaxed", "on the hull", "predicted")
        steps = " → ".join(f"{f.get(s, 0)} {w}" for s, w in zip(("generate", *STAGES), words, strict=False))
        best = ""
        if self.top:
            row = self.top[0]
            e_hull = row.get("hull_e_above_hull")
            shown = f"{e_hull:.3f}" if isinstance(e_hull, float) else "?"
            best = f"; best {row.get('cid')} {row.get('formula')} (E_hull {shown} eV/atom)"
        minutes, seconds = divmod(round(self.seconds), 60)
        return (f"design {self.run}: {steps}; top {len(self.top)} in {self.run / 'top'}{best}"
                f"{rounds_summary(self.rounds)} [{minutes}m{seconds:02d}s]")  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_meta(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable design record ({exc}); use a new output folder") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a design record of format version {FORMAT_VERSION}")
    return meta


def _check_resume(path: Path, before: Mapping[str, object], now: Mapping[str, object]) -> None:
    """Refuse to resume a run whose fixed settings differ (the stored results would mean something else).

    A setting newer than the run's record counts as its default there.
    """
    before = {**DesignSpec().record(), **before}
    fixed = [k for k in set(before) | set(now) if k not in EXTENDABLE and before.get(k) != now.get(k)]
    if fixed:
        shown = "; ".join(f"{k}: {before.get(k)!r} before, {now.get(k)!r} now" for k in sorted(fixed))
        raise ValueError(
            f"{path.parent} holds a design run with other settings ({shown}); resume it with the same ones "
            f"(only {', '.join(EXTENDABLE)} may change) or use a new output folder"
        )


def _rounds(meta: Mapping[str, object], budget: int, parts: int = 1) -> list[int]:
    """Round sizes: those recorded (else ``budget`` split into ``parts``), plus one round for the rest of ``budget``."""
    recorded = meta.get("rounds")
    rounds = [int(r) for r in recorded] if isinstance(recorded, list) else []
    planned = sum(rounds)
    if not rounds:
        rounds = split_evenly(budget, parts)
    elif budget > planned:
        rounds.append(budget - planned)
    elif budget < planned:
        log.warning("budget %d is below the %d candidates this run already planned; nothing new is generated",
                    budget, planned)  # fmt: skip
    return rounds


def _write_meta(path: Path, meta: Mapping[str, object]) -> None:
    with atomic_write(path) as handle:
        json.dump(meta, handle, indent=1, allow_nan=False, default=str)


def _report(run: Path) -> Path | None:
    """``crystalforge.design.report.write_report(run)`` when that module is installed (None otherwise)."""
    try:
        module = importlib.import_module("crystalforge.design.report")
    except ModuleNotFoundError as exc:
        if exc.name == "crystalforge.design.report":
            return None
        raise
    writer: Callable[[Path], Path] = module.write_report
    try:
        return writer(run)
    except Exception as exc:  # noqa: BLE001 - the results are written; a broken report must not hide them
        check_interrupted()
        log.warning("the design report could not be written: %s: %s", type(exc).__name__, exc)
        return None


def _check_predictor(spec: DesignSpec, predictor: PredictorEnsemble) -> None:
    unknown = [t.name for t in spec.windows if t.name not in predictor.properties]
    if unknown:
        raise KeyError(
            f"design spec: targets {unknown} are not predicted by {spec.predictor!r} "
            f"(it predicts: {', '.join(predictor.properties)})"
        )


def run_design(
    spec: DesignSpec | str | Path | None = None,
    *,
    generate: Generate,
    progress: ProgressFactory | None = None,
    relax_with: Relaxer | None = None,
    **options: object,
) -> DesignResult:
    """Run (or resume, or extend) a design run into ``spec.out``; see the module docstring.

    Args:
        spec: the spec, its YAML file, or None for the defaults; ``options`` (spec fields) go on top.
        generate: generates one batch (``api.generate``; ``api.design`` passes it).
        progress: progress-bar factory ``(total, desc) -> bar`` for every long stage (None: no bars).
        relax_with: a relaxer object to use (None: ``make_relaxer(spec.relaxer)``, with a result cache in
            the run folder).
        options: spec fields overriding ``spec`` (``budget=500``, ``out="runs/x"``).

    Raises:
        SpecError: a bad spec value (the message names the field).
        MissingDependencyError: a missing optional package (CHGNet, Ray), before any work.
        ValueError: a spec that cannot resume the run in ``out``.
        KeyError: a target the predictor does not predict, an unknown model or predictor.

    """
    spec = load_spec(spec, options)
    if spec.out is None:
        raise SpecError("design spec: out is not set: give the run folder (--out RUN)")
    start = time.perf_counter()
    bars = progress or null_progress
    run = Path(spec.out).expanduser()
    workers: int | ExecutorConfig = ExecutorConfig(spec.workers, ray=spec.ray) if spec.ray else spec.workers
    meta_path = run / DESIGN_FILE
    meta = _load_meta(meta_path)
    record = spec.record()
    if meta:
        before = meta.get("spec")
        _check_resume(meta_path, before if isinstance(before, dict) else {}, record)
    predictor = load_predictor(spec.predictor)
    _check_predictor(spec, predictor)
    check_stability_head(spec, predictor)
    owned = None
    relaxer = relax_with
    if relaxer is None and spec.relax_count > 0:  # a missing MLIP stops the run here, before any work
        from crystalforge.relax import make_relaxer

        owned = relaxer = make_relaxer(spec.relaxer, workers=workers, cache_file=run / RELAX_CACHE)
    from crystalforge.design.store import CandidateStore, candidate_key  # ASE's database, loaded only to run

    ctx = DesignContext(spec, CandidateStore(run / STORE_FILE), run, workers, bars, relaxer, _predictor=predictor)
    for folder in (run, run / "top", run / "top" / "symmetrized"):  # what writers killed mid-write left
        if folder.is_dir():
            remove_temporaries(folder)
    rounds = _rounds(meta, spec.budget, spec.rounds)
    known = meta.get("stages")
    stages: dict[str, dict[str, float]] = {str(k): dict(v) for k, v in known.items()} if isinstance(known, dict) else {}
    meta = {
        "format_version": FORMAT_VERSION, "spec": record,
        "targets": [{"property": t.name, "low": t.low, "high": t.high} for t in spec.windows],
        "objectives": [objective_record(o) for o in spec.ranking_objectives()],
        "rounds": rounds, "stages": stages, "funnel": meta.get("funnel", {}), "top": meta.get("top", []),
        "round_results": meta.get("round_results", []),
        "started": meta.get("started") or _now(), "finished": None,
        "crystalforge_version": distribution_version("crystalforge"),
    }  # fmt: skip
    _write_meta(meta_path, meta)

    def timed(name: str, work: Callable[[], object]) -> None:
        check_interrupted()
        t0 = time.perf_counter()
        work()
        entry = stages.setdefault(name, {"seconds": 0.0, "count": 0})
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 3)
        table = ctx.store.table()
        entry["count"] = len(table) if name == "generate" else sum(1 for r in table if r.get(name) is not None)
        meta["funnel"] = {"generate": len(table), **ctx.store.funnel(STAGES)}
        _write_meta(meta_path, meta)

    try:
        todo = [b for b in plan_batches(rounds, spec.batch_size) if candidate_key(b.round, b.start) not in ctx.store]
        steering = spec.steering()
        factor = spec.oversample if steering is not None and steering.uses_importance else 1
        if todo or ctx.store.pending("dedupe"):  # a missing training set stops the run before generating
            ctx.training_set  # noqa: B018 - resolved and grouped once, here

        def generation(batches: Sequence[Batch]) -> None:
            bar = stage_bar(ctx, sum(b.n for b in batches) * factor, "generate")
            try:
                generate_batches(ctx.store, generate, batches, spec, run=run, bar=bar)
            finally:
                bar.close()

        def save_rounds(records: list[dict[str, object]]) -> None:
            meta["round_results"] = records
            _write_meta(meta_path, meta)

        if spec.rounds > 1 or spec.active_learning:  # one round after another (design.active)
            run_rounds(ctx, rounds, todo, generation=generation, timed=timed, save=save_rounds)
        else:  # every round's candidates through each stage at once; relax picks the best of all rounds
            timed("generate", partial(generation, todo))
            for name, stage in (("filter", filter_candidates), ("dedupe", dedupe), ("screen", screen),
                                ("relax", relax), ("hull", hull), ("predict", predict)):  # fmt: skip
                timed(name, partial(stage, ctx))
        order: list[str] = []
        timed("rank", lambda: order.extend(rank_candidates(ctx)))
        rows = export_top(ctx, order)
    finally:
        if owned is not None:
            owned.close()
    meta["top"] = [str(r["cid"]) for r in rows]
    meta["finished"] = _now()
    _write_meta(meta_path, meta)
    report = _report(run) if spec.report else None
    funnel = {str(k): int(v) for k, v in dict(meta["funnel"]).items()}  # type: ignore[call-overload]
    records = meta["round_results"] if isinstance(meta["round_results"], list) else []
    return DesignResult(run, funnel, rows, stages, report, time.perf_counter() - start, records)
