"""Shared helpers for the benchmark scripts: data directory and machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$CRYSTALFORGE_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("CRYSTALFORGE_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "mp_20").is_dir():
        raise SystemExit(f"benchmark data not found in {root}; set CRYSTALFORGE_DATA_DIR")
    return root


def machine() -> str:
    """One line describing this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


CSP_CHUNK = 256
"""Compositions per sampled batch, as the sampling runner uses (its seeds are per chunk)."""


def perov_5_csp_jobs() -> tuple[object, list, list]:
    """The shipped ``perov_5-csp`` flow model, the perov_5 test set and one CSP job per composition."""
    from crystalforge.data.resolve import resolve_reference
    from crystalforge.sampling.jobs import csp_jobs
    from crystalforge.training.loading import load_model

    model = load_model("perov_5-csp").model
    reference, _ = resolve_reference("perov_5", "test", None, None)
    jobs = csp_jobs([(str(c.material_id), c.atomic_numbers.tolist()) for c in reference], k=1)
    return model, reference, jobs


def perov_5_ablation(doc: str, runs_help: str):
    """The perov_5 CSP ablation scripts' command line (``--runs A:B:C ... --workers --json``), model and jobs.

    Returns ``(args, model, jobs, specs)`` with ``specs`` as ``(text, int A, float B, float C)``;
    sampling runs on one torch thread.
    """
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help=runs_help)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    specs = []
    for text in args.runs:
        try:
            first, second, third = text.split(":")
            specs.append((text, int(first), float(second), float(third)))
        except ValueError:
            parser.error(f"--runs {text!r}: expected {runs_help}")
    torch.set_num_threads(1)
    model, _, jobs = perov_5_csp_jobs()
    return args, model, jobs, specs


def sample_flow(model, jobs: list, times, anti_annealing: float) -> list:
    """Crystals of ``jobs`` integrated over the time grid ``times`` (``[S + 1]``), seeded per chunk as the runner."""
    import torch

    from crystalforge.sampling.runner import jobs_template

    crystals = []
    steps = len(times) - 1
    for k in range(0, len(jobs), CSP_CHUNK):
        template = jobs_template(jobs[k : k + CSP_CHUNK], torch.float32)
        generator = torch.Generator().manual_seed(k // CSP_CHUNK)
        b = len(template)
        with torch.no_grad():
            state = model.sample_prior(template, generator)
            for i in range(steps):
                t, dt = times[i].expand(b), (times[i + 1] - times[i]).expand(b)
                outputs = model.predict(state, t)
                state = model.step(state, outputs, t, dt, anti_annealing=anti_annealing, generator=generator)
        crystals += state.replace(properties={}, condition_mask={}).split()
    return crystals
