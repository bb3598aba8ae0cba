"""Jobs for the runner: what to generate, for de novo generation and structure prediction.

A job names one crystal to generate and carries what its template needs: the number of atoms, the
composition for CSP, and target properties for a conditioned model. Names follow one rule so
outputs link back to their inputs: ``gen_<i>`` for DNG and fixed-formula runs, ``<id>`` (k = 1) or
``<id>_<j>`` (k > 1) for CSP targets, which is what ``evaluate(task="csp")`` links by.

A fixed composition works with either task: a CSP model keeps the template's types by itself, a DNG
model gets the ``FixedComposition`` constraint (``composition_plan``). A chemical system for CSP is
turned into its cell compositions by ``enumerate_compositions`` (``system_formulas``), each
predicted like a ``--formula`` and named by its formula. Elements a model cannot place (outside its
type vocabulary) are refused before sampling, naming the elements and the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import TypeVocabulary, z_to_symbol
from crystalforge.generative.interfaces import GenerativeModel, SamplePlan
from crystalforge.sampling.cfg import condition_value
from crystalforge.sampling.composition import (
    FixedComposition,
    enumerate_compositions,
    formula_string,
    parse_elements,
    type_vocabulary,
)
from crystalforge.sampling.runner import Job
from crystalforge.sampling.templates import parse_formula

log = logging.getLogger(__name__)


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


def require_conditions(model: GenerativeModel, properties: Mapping[str, object], name: str) -> None:
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
        raise ValueError("nothing to predict: give formulas, a reference or a chemical system")
    props = dict(properties or {})
    return [
        Job(name if k == 1 else f"{name}_{j}", len(z), tuple(int(v) for v in z), properties=props)
        for j in range(k)
        for name, z in targets
    ]


def formula_targets(formulas: Sequence[str]) -> list[tuple[str, list[int]]]:
    """``(name, atomic numbers)`` of each formula (spaces dropped from the name)."""
    return [(f.replace(" ", ""), parse_formula(f)) for f in formulas]


def model_vocabulary(model: GenerativeModel) -> TypeVocabulary | None:
    """The elements ``model`` can place: a DNG model's type process vocabulary, else its backbone's (None: unknown)."""
    if "dng" in model.tasks:
        try:
            return type_vocabulary(model)
        except ValueError:
            pass
    vocab = getattr(getattr(model, "backbone", None), "type_vocabulary", None)
    return vocab if isinstance(vocab, TypeVocabulary) else None


def require_elements(model: GenerativeModel, elements: Sequence[int], name: str, what: str) -> None:
    """Raise ``ValueError`` naming the elements of ``what`` that ``model`` (called ``name``) cannot place."""
    vocab = model_vocabulary(model)
    if vocab is None:
        return
    missing = sorted({int(z) for z in elements} - set(vocab.atomic_numbers))
    if missing:
        symbols = ", ".join(z_to_symbol(z) for z in missing)
        raise ValueError(
            f"{what}: element(s) {symbols} are not in the vocabulary of model {name} "
            f"({len(vocab.atomic_numbers)} elements), so it cannot place them"
        )


def system_formulas(
    model: GenerativeModel,
    system: str,
    *,
    max_atoms: int = 20,
    max_formulas: int | None = None,
    charge_balanced: bool = True,
    name: str = "model",
) -> list[str]:
    """The cell compositions of a chemical system (``"Li-P-S"``) as formulas, for CSP with ``model``.

    Every composition containing all the elements with at most ``max_atoms`` atoms (multiples of a
    formula included: one cell per size), charge balanced by SMACT's ``icsd24`` list unless
    ``charge_balanced=False`` (``sampling.composition.enumerate_compositions``); ``max_formulas``
    keeps the first that many reduced formulas. Elements outside the model's vocabulary are refused.
    """
    zs = parse_elements(system)
    require_elements(model, zs, name, f"chemical system {system}")
    if max_formulas is not None and max_formulas < 1:
        raise ValueError(f"max_formulas must be >= 1, got {max_formulas}")
    cells = enumerate_compositions(zs, max_atoms=max_atoms, charge_balanced=charge_balanced, max_formulas=max_formulas)
    if not cells:
        balanced = "charge-balanced " if charge_balanced else ""
        hint = " or switch off charge balance" if charge_balanced else ""
        raise ValueError(
            f"chemical system {system} has no {balanced}composition with at most {max_atoms} atoms "
            f"(try a larger max_atoms{hint})"
        )
    return [formula_string(c) for c in cells]


def composition_plan(
    model: GenerativeModel, plan: SamplePlan, composition: str | None, *, elements: str | None = None
) -> SamplePlan:
    """``plan`` for ``generate(composition=...)``: a DNG model gets ``FixedComposition`` (a CSP model needs nothing).

    ``elements`` (an allowed set, as ``--elements``) must hold every element of the composition.
    """
    if composition is None:
        return plan
    if elements:
        outside = sorted(set(parse_formula(composition)) - set(parse_elements(elements)))
        if outside:
            symbols = ", ".join(z_to_symbol(z) for z in outside)
            raise ValueError(f"composition {composition} has element(s) {symbols} outside the allowed set {elements}")
    if "csp" in model.tasks:
        return plan
    return replace(plan, constraints=(*plan.constraints, FixedComposition.for_model(model)))


def generation_jobs(
    model: GenerativeModel,
    stats: DatasetStats | None,
    *,
    n: int,
    num_atoms: int | None = None,
    composition: str | None = None,
    properties: Mapping[str, float | str] | None = None,
    seed: int = 0,
    name: str = "model",
) -> list[Job]:
    """``generate``'s jobs: de novo (counts from ``num_atoms`` or ``stats``), or ``n`` of one composition.

    A composition needs a CSP model, or a DNG model sampled with ``composition_plan``'s constraint.
    ``properties``: condition values, numbers or text (``crystal_system=cubic``; ``sampling.cfg.condition_value``).
    """
    require_conditions(model, properties or {}, name)
    values = {k: condition_value(k, v) for k, v in (properties or {}).items()}
    if composition is None:
        require_task(model, "dng", name)
        return dng_jobs(n, num_atoms=num_atoms, stats=stats, seed=seed, properties=values)
    jobs = formula_jobs(composition, n, properties=values)
    if num_atoms is not None and num_atoms != jobs[0].num_atoms:
        raise ValueError(
            f"num_atoms={num_atoms} contradicts composition {composition} ({jobs[0].num_atoms} atoms): give one of them"
        )
    require_elements(model, jobs[0].composition or (), name, f"composition {composition}")
    return jobs


def prediction_jobs(
    model: GenerativeModel,
    targets: Sequence[tuple[str, Sequence[int]]],
    *,
    formulas: Sequence[str] = (),
    system: str | None = None,
    max_atoms: int = 20,
    max_formulas: int | None = None,
    charge_balanced: bool = True,
    k: int = 1,
    name: str = "model",
) -> list[Job]:
    """``csp``'s jobs: ``k`` predictions for each target, each formula and each composition of ``system``.

    A CSP model is required; ``system`` options as in ``system_formulas``.
    """
    require_task(model, "csp", name)
    found = formula_targets(formulas)
    if system is not None:
        found += formula_targets(
            system_formulas(model, system, max_atoms=max_atoms, max_formulas=max_formulas,
                            charge_balanced=charge_balanced, name=name)
        )  # fmt: skip
    everything, seen = [], set()
    for target, z in [*targets, *found]:  # one job per name: a repeat would overwrite its structure file
        if target in seen:
            log.warning("%s is asked for more than once (formula, system or reference); predicting it once", target)
            continue
        seen.add(target)
        require_elements(model, z, name, target)
        everything.append((target, z))
    return csp_jobs(everything, k=k)
