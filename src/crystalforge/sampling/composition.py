"""Composition and chemical-system targeting: which elements, and how many of each, a sample may hold.

* DNG within a chemical system: ``AllowedElements``, a ``Guidance`` setting the type logits of every
  other element to ``−inf`` (allowed is not required: filter with ``in_chemical_system``).
* DNG with a given stoichiometry: ``FixedComposition``, a ``Constraint`` writing the template's
  types (``composition_template``) into the state as the type process reveals atoms.
* CSP within a chemical system: ``enumerate_compositions`` lists the cell compositions to submit,
  optionally charge balanced with SMACT's oxidation-state lists (optional ``smact``).

Type processes work on class indices of the model's ``TypeVocabulary`` (class 0 = mask), read by
``type_vocabulary``. User guide: ``docs/steering.md``.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, MAX_Z, TypeVocabulary, element_table, symbol_to_z, z_to_symbol
from crystalforge.core.extras import require
from crystalforge.core.segment import segment_sum
from crystalforge.generative.interfaces import FieldOutputs, PredictFn, StepContext
from crystalforge.sampling.templates import parse_formula, template_from_compositions

__all__ = [
    "OXIDATION_STATE_LISTS", "AllowedElements", "FixedComposition", "chemical_system_mask", "composition_template",
    "enumerate_compositions", "formula_string", "in_chemical_system", "parse_elements", "type_vocabulary",
]  # fmt: skip

logger = logging.getLogger(__name__)

ElementsLike = str | Sequence[int | str]
"""``"Li,P,S"``, ``"Li-P-S"``, ``["Li", "P", "S"]`` or ``[3, 15, 16]``."""

OXIDATION_STATE_LISTS = ("icsd24", "icsd16", "smact14", "sp", "wiki")
"""SMACT's oxidation-state lists (``Element.oxidation_states_<name>``); ``icsd24`` is smact ≥ 3's default."""

_SYMBOL = re.compile(r"[A-Za-z]{1,3}")


# ---- element sets --------------------------------------------------------------------------------
def parse_elements(elements: ElementsLike) -> tuple[int, ...]:
    """Atomic numbers of an element set, in the given order without repeats.

    Accepts ``"Li,P,S"``, ``"Li-P-S"``, ``"Li P S"`` or a sequence of symbols / atomic numbers.
    Raises ``ValueError`` naming every unknown symbol.
    """
    split = [s for s in re.split(r"[\s,;\-/]+", elements) if s] if isinstance(elements, str) else None
    tokens: list[int | str] = list(elements) if split is None else list(split)
    if not tokens:
        raise ValueError(f"no elements given in {elements!r}")
    out: list[int] = []
    bad: list[str] = []
    for token in tokens:
        z = _z_or_none(token)
        if z is None:
            bad.append(repr(token))
        elif z not in out:
            out.append(z)
    if bad:
        raise ValueError(f"unknown element(s) {', '.join(bad)} in {elements!r}")
    return tuple(out)


def _z_or_none(token: int | str) -> int | None:
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        return int(token) if 1 <= int(token) <= MAX_Z else None
    if not isinstance(token, str) or not _SYMBOL.fullmatch(token.strip()):
        return None
    try:
        return symbol_to_z(token)
    except KeyError:
        return None


def _symbols(zs: Sequence[int]) -> str:
    return ", ".join(z_to_symbol(z) for z in zs)


def type_vocabulary(model: object) -> TypeVocabulary:
    """The type vocabulary of a model that generates atom types (its type process's, else its backbone's).

    Raises ``ValueError`` for a model that keeps the template's types (CSP) or exposes no vocabulary.
    """
    tasks = getattr(model, "tasks", ())
    if "dng" not in tasks and "csp" in tasks:
        raise ValueError(
            "this model keeps the template's atom types (CSP): restrict it by choosing the compositions "
            "(enumerate_compositions + composition_template), not with type guidance or constraints"
        )
    processes = getattr(model, "processes", None)
    process = processes.get("atomic_numbers") if isinstance(processes, Mapping) else None
    for vocab in (getattr(process, "vocab", None), getattr(getattr(model, "backbone", None), "type_vocabulary", None)):
        if isinstance(vocab, TypeVocabulary):
            return vocab
    raise ValueError(f"cannot find a type vocabulary on {type(model).__name__} (no type process with .vocab)")


def _check_in_vocabulary(zs: Sequence[int], vocab: TypeVocabulary) -> None:
    missing = sorted(set(zs) - set(vocab.atomic_numbers))
    if missing:
        raise ValueError(
            f"element(s) {_symbols(missing)} are not in the model's type vocabulary "
            f"({_symbols(vocab.atomic_numbers)}): the model cannot generate them"
        )


# ---- DNG: allowed elements (guidance) ------------------------------------------------------------
class AllowedElements:
    """Guidance restricting generated atom types to an element set (``−inf`` logits for all others).

    Works with the masked type processes (``MaskedTypeFlow``, ``AbsorbingD3PM``): both reveal an atom
    by drawing from ``softmax(logits / T)``, which never picks a ``−inf`` class. Put it *last* in
    ``SamplePlan.guidance`` (outermost), so a guidance that mixes logits (classifier-free guidance:
    ``(1 + w)·c − w·u``) never sees the ``−inf`` values (``∞ − ∞`` is NaN). Atoms already revealed
    before sampling (a template or constraint that fixes types) are not changed. It restricts,
    never requires: use ``in_chemical_system(..., require_all=True)`` to keep full-system samples.
    """

    requires_grad = False

    def __init__(self, elements: ElementsLike, vocab: TypeVocabulary) -> None:
        self.elements = parse_elements(elements)
        _check_in_vocabulary(self.elements, vocab)
        self.vocab = vocab
        allowed = np.zeros(vocab.size, dtype=bool)
        allowed[vocab.class_of_z()[list(self.elements)]] = True
        allowed[vocab.class_of_z()[MASK_Z]] = True  # the mask class is the processes' business
        self._allowed = torch.from_numpy(allowed)

    @classmethod
    def for_model(cls, model: object, elements: ElementsLike) -> AllowedElements:
        """The guidance for ``model``'s type vocabulary (``ValueError`` for a CSP model or unknown elements)."""
        return cls(elements, type_vocabulary(model))

    def __call__(self, predict: PredictFn, state: CrystalBatch, t: Tensor) -> FieldOutputs:
        """``predict``'s outputs with the type logits of disallowed elements set to ``−inf``."""
        out = predict(state, t)
        logits = out.atomic_numbers
        if logits is None:
            raise ValueError("AllowedElements: the model predicts no atom types (a CSP model keeps the template's)")
        if logits.dim() != 2 or logits.shape[-1] != self.vocab.size:
            raise ValueError(
                f"AllowedElements: expected type logits [N, {self.vocab.size}] over the model's vocabulary, "
                f"got {tuple(logits.shape)} (this type process cannot be restricted by logits)"
            )
        allowed = self._allowed.to(logits.device)
        return replace(out, atomic_numbers=logits.masked_fill(~allowed, float("-inf")))


def in_chemical_system(crystal: object, elements: ElementsLike, *, require_all: bool = False) -> bool:
    """Whether a crystal's elements lie in ``elements`` (and, with ``require_all``, include them all).

    ``crystal``: anything with ``atomic_numbers`` (``Crystal``) or the atomic numbers themselves.
    """
    z = getattr(crystal, "atomic_numbers", crystal)
    present = set(np.asarray(z.cpu() if isinstance(z, Tensor) else z).reshape(-1).tolist())
    allowed = set(parse_elements(elements))
    return present <= allowed and (not require_all or present == allowed)


def chemical_system_mask(batch: CrystalBatch, elements: ElementsLike, *, require_all: bool = False) -> Tensor:
    """Per-crystal ``[B]`` bool: ``in_chemical_system`` for every crystal of a batch."""
    zs = parse_elements(elements)
    table = torch.zeros(MAX_Z + 1, dtype=torch.bool, device=batch.device)
    table[list(zs)] = True
    idx, b = batch.crystal_idx, batch.num_crystals
    ok = segment_sum((~table[batch.atomic_numbers]).to(torch.int64), idx, b) == 0
    for z in zs if require_all else ():
        ok &= segment_sum((batch.atomic_numbers == z).to(torch.int64), idx, b) > 0
    return ok


# ---- DNG: fixed composition (constraint) ---------------------------------------------------------
class FixedComposition:
    """Constraint: atoms the template gives a type (``!= MASK_Z``) end with that type; the rest are generated.

    Build the template with ``composition_template`` (every atom typed: the exact stoichiometry).
    After each step the state's types and the type latent (class indices) are rewritten:

    * ``reveal="schedule"`` (default): an atom keeps the mask until the type process reveals it,
      then gets the template's type. Atoms are revealed independently with the process's own
      schedule, so at time ``t`` the model sees what training showed it (each type revealed with
      probability κ(t), the clean type when revealed); at t = 1 every atom is revealed.
    * ``reveal="immediate"``: every given type is shown from t = 0 (CSP-like conditioning). The
      model never saw fully revealed types at small ``t`` in training, so this is out of distribution.

    Only for models that generate types; a CSP model keeps the template's composition by itself.
    """

    def __init__(self, vocab: TypeVocabulary, *, reveal: Literal["schedule", "immediate"] = "schedule") -> None:
        if reveal not in ("schedule", "immediate"):
            raise ValueError(f"reveal must be 'schedule' or 'immediate', got {reveal!r}")
        self.vocab = vocab
        self.reveal = reveal
        self._mask_class = int(vocab.class_of_z()[MASK_Z])
        self._tables_cpu = (torch.from_numpy(vocab.class_of_z()), torch.from_numpy(vocab.z_of_class()))
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @classmethod
    def for_model(cls, model: object, *, reveal: Literal["schedule", "immediate"] = "schedule") -> FixedComposition:
        """The constraint for ``model``'s type vocabulary (``ValueError`` for a CSP model)."""
        return cls(type_vocabulary(model), reveal=reveal)

    def apply(self, state: CrystalBatch, t: Tensor, context: StepContext) -> CrystalBatch:
        """``state`` with the template's types on its revealed (or, ``"immediate"``, all) given atoms."""
        given_z = context.template.atomic_numbers.to(state.device)
        if given_z.shape != state.atomic_numbers.shape:
            raise ValueError("FixedComposition: the template and the state have different atoms")
        given = given_z != MASK_Z
        if not bool(given.any()):
            raise ValueError("FixedComposition: the template gives no atom types (build it with composition_template)")
        if state.device not in self._tables:  # one host→device copy per device
            self._tables[state.device] = (self._tables_cpu[0].to(state.device), self._tables_cpu[1].to(state.device))
        class_of_z, z_of_class = self._tables[state.device]
        given_classes = class_of_z[given_z]
        if bool((given_classes < 0).any()):
            _check_in_vocabulary(sorted(set(given_z[given_classes < 0].tolist())), self.vocab)
        classes = state.latents.get("atomic_numbers")
        if classes is None:  # a constraint before this one replaced the types: read them back
            classes = class_of_z[state.atomic_numbers]
        keep = given if self.reveal == "immediate" else given & (classes != self._mask_class)
        new = torch.where(keep, given_classes, classes)
        return state.replace(atomic_numbers=z_of_class[new], latents={**state.latents, "atomic_numbers": new})


# ---- templates and formulas ----------------------------------------------------------------------
def _atoms_of(composition: str | Mapping[str, int] | Mapping[int, int]) -> list[int]:
    if isinstance(composition, str):
        return parse_formula(composition)
    atoms: list[int] = []
    for key, count in composition.items():
        (z,) = parse_elements([key])
        if int(count) != count or count < 0:
            raise ValueError(f"count of {key!r} must be a non-negative integer, got {count!r}")
        atoms.extend([z] * int(count))
    if not atoms:
        raise ValueError(f"composition {composition!r} has no atoms")
    return atoms


def composition_template(
    compositions: Sequence[str | Mapping[str, int] | Mapping[int, int]],
    *,
    dtype: torch.dtype = torch.float32,
    properties: Mapping[str, Sequence[float]] | None = None,
) -> CrystalBatch:
    """A template with one crystal per cell composition (``"Li6P2S8"`` or ``{"Li": 3, "P": 1, "S": 4}``).

    Counts are taken literally as the cell content. For a CSP model this is the job; for a DNG
    model pair it with ``FixedComposition``.
    """
    return template_from_compositions([_atoms_of(c) for c in compositions], dtype=dtype, properties=properties)


def formula_string(composition: Mapping[str, int]) -> str:
    """``{"Li": 3, "P": 1, "S": 4}`` → ``"Li3PS4"`` (in the mapping's order)."""
    return "".join(f"{s}{n if n != 1 else ''}" for s, n in composition.items() if n)


def _canonical_order(zs: Sequence[int]) -> tuple[int, ...]:
    """Elements by increasing Pauling electronegativity (cations first, as formulas are written), then Z."""
    eneg = element_table().electronegativity
    return tuple(sorted(set(zs), key=lambda z: (math.isnan(eneg[z]), 0.0 if math.isnan(eneg[z]) else eneg[z], z)))


# ---- CSP: composition enumeration ----------------------------------------------------------------
def enumerate_compositions(
    elements: ElementsLike,
    *,
    max_atoms: int = 20,
    min_elements: int | None = None,
    charge_balanced: bool = True,
    oxidation_states: str | Mapping[str, Sequence[int]] = "icsd24",
    pauling_test: bool = True,
    multiples: bool = True,
    max_formulas: int | None = None,
) -> list[dict[str, int]]:
    """Cell compositions ``{symbol: count}`` in a chemical system, for CSP jobs.

    Every reduced formula (counts with gcd 1) over ``min_elements`` or more of ``elements`` (default:
    all of them) with at most ``max_atoms`` atoms; with ``multiples`` each is followed by its
    multiples Z·formula up to ``max_atoms`` atoms (one entry per cell size), else only the reduced
    formula is returned. Order is deterministic: by reduced formula size, then more of the earlier
    elements first (elements in increasing electronegativity: Li, P, S), then multiple.
    ``max_formulas`` keeps the first that many *reduced* formulas (logs a warning when it drops some).

    ``charge_balanced``: keep a formula when one oxidation state per element makes it neutral and,
    with ``pauling_test``, every cation is less electronegative than every anion (Pauling values;
    a pair with a missing value passes); single elements and all-metal formulas always pass, as in
    SMACT's rule. ``oxidation_states``: a SMACT list name (``OXIDATION_STATE_LISTS``, needs ``smact``)
    or ``{symbol: [states]}`` given by hand (e.g. ``{"Li": [1], "P": [5], "S": [-2]}``).
    """
    zs = _canonical_order(parse_elements(elements))
    k = len(zs)
    lowest = k if min_elements is None else min_elements
    if not 1 <= lowest <= k:
        raise ValueError(f"min_elements must be in 1..{k}, got {min_elements}")
    if max_atoms < lowest:
        raise ValueError(f"max_atoms={max_atoms} cannot hold {lowest} different elements")
    states = _oxidation_states(zs, oxidation_states) if charge_balanced else {}
    reduced: list[tuple[int, ...]] = []  # counts over all of ``zs`` (0 = absent)
    for size in range(lowest, k + 1):
        for subset in itertools.combinations(range(k), size):
            patterns = _state_patterns([zs[i] for i in subset], states, pauling_test) if charge_balanced else None
            for counts in _reduced_counts(size, max_atoms):
                if patterns is not None and not _neutral(counts, patterns):
                    continue
                full = [0] * k
                for i, c in zip(subset, counts, strict=True):
                    full[i] = c
                reduced.append(tuple(full))
    reduced.sort(key=lambda c: (sum(c), [-x for x in c]))
    if max_formulas is not None and len(reduced) > max_formulas:
        logger.warning("enumerate_compositions: keeping %d of %d reduced formulas", max_formulas, len(reduced))
        reduced = reduced[:max_formulas]
    symbols = [z_to_symbol(z) for z in zs]
    out: list[dict[str, int]] = []
    for counts in reduced:
        for m in range(1, (max_atoms // sum(counts) if multiples else 1) + 1):
            out.append({s: m * c for s, c in zip(symbols, counts, strict=True) if c})
    return out


def _reduced_counts(size: int, max_atoms: int) -> Iterator[tuple[int, ...]]:
    """Positive count tuples of length ``size`` with sum ≤ ``max_atoms`` and gcd 1."""

    def grow(prefix: tuple[int, ...], left: int) -> Iterator[tuple[int, ...]]:
        if len(prefix) == size:
            if math.gcd(*prefix) == 1:
                yield prefix
            return
        still = size - len(prefix) - 1  # atoms the later elements need at least
        for c in range(1, left - still + 1):
            yield from grow((*prefix, c), left - c)

    yield from grow((), max_atoms)


def _oxidation_states(zs: Sequence[int], source: str | Mapping[str, Sequence[int]]) -> dict[int, tuple[int, ...]]:
    """Non-zero oxidation states per element, from a SMACT list or a user mapping."""
    if isinstance(source, Mapping):
        given = {z: tuple(v) for key, v in source.items() for z in parse_elements([key])}
        missing = [z for z in zs if z not in given]
        if missing:
            raise ValueError(f"oxidation_states has no entry for {_symbols(missing)}")
        return {z: tuple(sorted({int(s) for s in given[z] if int(s) != 0})) for z in zs}
    if source not in OXIDATION_STATE_LISTS:
        raise ValueError(f"unknown oxidation-state list {source!r} (known: {', '.join(OXIDATION_STATE_LISTS)})")
    smact = require("smact", "charge-balanced composition enumeration", extra="evaluation")
    out: dict[int, tuple[int, ...]] = {}
    for z in zs:
        try:
            raw = getattr(smact.Element(z_to_symbol(z)), f"oxidation_states_{source}") or ()
        except (KeyError, NameError, ValueError):
            raw = ()  # smact has no data for this element: it can only appear alone or among metals
        out[z] = tuple(sorted({int(s) for s in raw if int(s) != 0}))
    return out


def _state_patterns(
    zs: Sequence[int], states: Mapping[int, Sequence[int]], pauling_test: bool
) -> list[list[tuple[int, ...]]] | None:
    """State options per element for each sign pattern that may be neutral; None: every formula passes."""
    table = element_table()
    if len(zs) == 1 or all(bool(table.is_metal[z]) for z in zs):
        return None
    options = [tuple(states[z]) for z in zs]
    if not pauling_test:
        return [options]
    eneg = [float(table.electronegativity[z]) for z in zs]
    patterns = []
    for signs in itertools.product(*({(s > 0) - (s < 0) for s in opt} for opt in options)):
        cations = [e for e, s in zip(eneg, signs, strict=True) if s > 0 and not math.isnan(e)]
        anions = [e for e, s in zip(eneg, signs, strict=True) if s < 0 and not math.isnan(e)]
        if cations and anions and max(cations) >= min(anions):
            continue
        patterns.append([tuple(x for x in opt if x * s > 0) for opt, s in zip(options, signs, strict=True)])
    return patterns


def _neutral(counts: Sequence[int], patterns: Sequence[Sequence[Sequence[int]]]) -> bool:
    """Whether one state per element (from one pattern) makes ``Σ count·state = 0``."""
    for options in patterns:
        reachable = {0}
        for c, opts in zip(counts, options, strict=True):
            reachable = {r + c * s for r in reachable for s in opts}
        if 0 in reachable:
            return True
    return False
