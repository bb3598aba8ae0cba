"""Jobs for the runner: what to generate, for de novo generation and structure prediction.

A job names one crystal to generate and carries what its template needs: the number of atoms, the
composition for CSP, and target properties for a conditioned model. Names follow one rule so
outputs link back to their inputs: ``gen_<i>`` for DNG and fixed-formula runs, ``<id>`` (k = 1) or
``<id>_<j>`` (k > 1) for CSP targets, which is what ``evaluate(task="csp")`` links by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.generative.interfaces import GenerativeModel
from crystalforge.sampling.runner import Job
from crystalforge.sampling.templates import parse_formula


def require_task(model: GenerativeModel, task: str, name: str) -> None:
    """Raise ``ValueError`` unless ``model`` can do ``task`` (``"csp"`` or ``"dng"``)."""
    if task not in model.tasks:
        have = "/".join(t.upper() for t in model.tasks)
        hint = (
            "CSP needs a CSP model (a DNG model generates types itself; use `crystalforge csp` with a CSP model)"
            if task == "csp"
            else "a CSP model needs --composition (or use `crystalforge csp`)"
        )
        raise ValueError(f"model {name} is a {have} model; {hint}")


def require_conditions(model: GenerativeModel, properties: Mapping[str, float], name: str) -> None:
    """Raise ``ValueError`` for a target property the model cannot be conditioned on."""
    unknown = sorted(set(properties) - set(model.conditions))
    if unknown:
        known = ", ".join(model.conditions) or "none: it is unconditional"
        raise ValueError(f"model {name} cannot be conditioned on {unknown} (its conditions: {known})")


def dng_jobs(
    n: int,
    *,
    num_atoms: int | None = None,
    stats: DatasetStats | None = None,
    seed: int = 0,
    properties: Mapping[str, float] | None = None,
) -> list[Job]:
    """``n`` de novo jobs; atom counts from ``num_atoms`` or drawn from the training distribution."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_atoms is not None:
        counts = np.full(n, num_atoms)
    elif stats is None:
        raise ValueError("this model has no dataset statistics: pass num_atoms")
    else:
        counts = stats.sample_num_atoms(n, rng=np.random.default_rng(seed))
    return [Job(f"gen_{i:05d}", int(c), properties=dict(properties or {})) for i, c in enumerate(counts)]


def formula_jobs(formula: str, n: int, *, properties: Mapping[str, float] | None = None) -> list[Job]:
    """``n`` jobs for one composition (a formula taken literally as the cell content)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z = tuple(parse_formula(formula))
    return [Job(f"gen_{i:05d}", len(z), z, properties=dict(properties or {})) for i in range(n)]


def csp_jobs(
    targets: Sequence[tuple[str, Sequence[int]]], *, k: int = 1, properties: Mapping[str, float] | None = None
) -> list[Job]:
    """``k`` predictions per ``(name, atomic numbers)`` target, round by round (all first tries first)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not targets:
        raise ValueError("nothing to predict: give formulas or a reference")
    props = dict(properties or {})
    return [
        Job(name if k == 1 else f"{name}_{j}", len(z), tuple(int(v) for v in z), properties=props)
        for j in range(k)
        for name, z in targets
    ]


def formula_targets(formulas: Sequence[str]) -> list[tuple[str, list[int]]]:
    """``(name, atomic numbers)`` of each formula (spaces dropped from the name)."""
    return [(f.replace(" ", ""), parse_formula(f)) for f in formulas]


def generation_jobs(
    model: GenerativeModel,
    stats: DatasetStats | None,
    *,
    n: int,
    num_atoms: int | None = None,
    composition: str | None = None,
    properties: Mapping[str, float] | None = None,
    seed: int = 0,
    name: str = "model",
) -> list[Job]:
    """``generate``'s jobs: de novo (counts from ``num_atoms`` or ``stats``), or ``n`` of one composition."""
    require_task(model, "dng" if composition is None else "csp", name)
    require_conditions(model, properties or {}, name)
    if composition is not None:
        return formula_jobs(composition, n, properties=properties)
    return dng_jobs(n, num_atoms=num_atoms, stats=stats, seed=seed, properties=properties)


def prediction_jobs(
    model: GenerativeModel,
    targets: Sequence[tuple[str, Sequence[int]]],
    *,
    formulas: Sequence[str] = (),
    k: int = 1,
    name: str = "model",
) -> list[Job]:
    """``csp``'s jobs: ``k`` predictions for each target and each formula (a CSP model is required)."""
    require_task(model, "csp", name)
    return csp_jobs([*targets, *formula_targets(formulas)], k=k)
