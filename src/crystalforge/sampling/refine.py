"""Refinement: a process-based model starts from given structures put on its path at ``start_time``.

This is SDEdit's idea, and FlowLLM's second stage: a proposer (an autoregressive model, a search
baseline, a user's own guesses) gives rough structures, and the flagship flow integrates them from
an intermediate time to 1 instead of from the prior. The lower ``start_time``, the more noise is
put on each proposal (0 would forget it entirely; ``SamplerConfig`` refuses it here), the more the
model may move it. A CSP model keeps each proposal's composition; a DNG model may change the types
too. Outputs are named ``<proposal id>`` (``k = 1``) or ``<proposal id>_<j>``, in a resumable run
folder like ``generate``'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from crystalforge.core.crystal import Crystal
from crystalforge.generative.interfaces import GenerativeModel, SamplerConfig
from crystalforge.io.files import read_structures
from crystalforge.sampling.runner import Job, run_jobs
from crystalforge.sampling.samplers import with_overrides

__all__ = ["Loaded", "refine_jobs", "refine_proposals"]


class Loaded(Protocol):
    """What refinement needs of a loaded model (``training.loading.LoadedModel`` is one)."""

    @property
    def model(self) -> GenerativeModel:
        """The model."""

    @property
    def sampler(self) -> SamplerConfig:
        """Its default sampler settings."""


def refine_jobs(model: GenerativeModel, proposals: Sequence[Crystal], *, k: int = 1) -> list[Job]:
    """One job per proposal (``k`` per proposal when ``k > 1``), its structure the start."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    csp = "csp" in model.tasks
    jobs: list[Job] = []
    for i, crystal in enumerate(proposals):
        name = str(crystal.material_id) if crystal.material_id is not None else f"proposal-{i}"
        composition = tuple(int(z) for z in crystal.atomic_numbers) if csp else None
        for j in range(k):
            label = name if k == 1 else f"{name}_{j}"
            jobs.append(Job(label, crystal.num_atoms, composition, start=crystal))
    repeated = [name for name, count in Counter(j.name for j in jobs).items() if count > 1]
    if repeated:
        raise ValueError(f"two proposals are both named {repeated[0]!r}: refinement outputs are named by proposal")
    return jobs


def refine_proposals(
    model: str | Path,
    proposals: str | Path | Iterable[Crystal],
    *,
    load: Callable[[str | Path], Loaded],
    out: str | Path,
    start_time: float = 0.6,
    k: int = 1,
    steps: int | None = None,
    anti_annealing: float | Mapping[str, float] | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    progress: Callable[[int], object] | None = None,
) -> list[Crystal]:
    """Refine every proposal (a structure file/folder or crystals) with ``model`` from ``start_time`` to 1.

    ``load`` turns the model's name or path into the model and its default sampler (the api passes
    ``training.loading.load_model``).

    ``steps`` counts the steps over ``[start_time, 1]`` (default: the model's, scaled by ``1 - start_time``
    so that the step size is that of a full run).
    """
    if not 0.0 < start_time < 1.0:
        raise ValueError(f"start_time must be in (0, 1) for a refinement, got {start_time}")
    starts = read_structures(proposals, skip_bad=True) if isinstance(proposals, (str, Path)) else list(proposals)
    if not starts:
        raise ValueError(f"no proposals to refine in {proposals}")
    loaded = load(model)
    net, default = loaded.model, loaded.sampler
    if steps is None:
        steps = max(1, round(default.steps * (1.0 - start_time)))
    plan = with_overrides(replace(default, start_time=start_time), steps=steps, anti_annealing=anti_annealing)
    jobs = refine_jobs(net, starts, k=k)
    return run_jobs(
        net, jobs, out, sampler=plan, batch_size=batch_size, seed=seed, device=device, progress=progress,
        model_name=str(model),
    )  # fmt: skip
