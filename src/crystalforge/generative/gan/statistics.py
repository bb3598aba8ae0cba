"""MatGAN's published-style statistics of generated compositions, as plain functions (no CLI, no files).

Dan et al. (2020) judged their generator by the share of its formulas that are new (not in the
training set: > 98 %), that pass SMACT charge neutrality and electronegativity balance, and by how
many compositions deliberately left out of training it generates again (recovery: about 60 % of a
leave-out set). ``composition_statistics`` measures the same on ``n`` raw generator draws (one latent
each, no rejection; ``screen=True`` measures the screened compositions ``sample`` uses instead); it is
``usable_draws`` (the draws) then ``statistics_of_draws`` (the figures), for a caller that also
scores the same draws otherwise:

- ``valid``: share of the ``n`` draws with 1..``max_atoms`` atoms (the others cannot become crystals);
- ``charge_neutral``: share of the valid draws passing ``screening.is_charge_neutral`` (SMACT);
- ``unique``: distinct reduced formulas over valid draws;
- ``novel``: share of valid draws whose reduced formula is not a training formula;
- ``recovery``: share of the held-out formulas (reduced formulas of ``held_out`` that are not training
  formulas, e.g. the test split's) that some draw has.

Compositions are compared as reduced formulas (``screening.reduced_formula``): a draw of Na2Cl2 in
the cell recovers NaCl. Inputs are compositions as atomic numbers per atom (``Crystal.atomic_numbers``)
or ``{Z: count}``; the caller loads them (generative code never reads data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from crystalforge.generative.gan.drawing import draw_counts
from crystalforge.generative.gan.model import MatGAN
from crystalforge.generative.gan.screening import Formula, is_charge_neutral, reduced_formula

__all__ = ["CompositionStatistics", "composition_statistics", "statistics_of_draws", "usable_draws"]

Composition = Iterable[int] | Mapping[int, int]
"""Atomic numbers, one per atom (``Crystal.atomic_numbers``), or ``{Z: count}``."""


@dataclass(frozen=True)
class CompositionStatistics:
    """Shares in [0, 1] (see the module docstring) and the counts behind them."""

    n: int
    valid: float
    charge_neutral: float
    unique: float
    novel: float
    recovery: float
    num_valid: int
    num_train_formulas: int
    num_held_out: int
    num_recovered: int
    screened: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return asdict(self)


def composition_statistics(
    model: MatGAN,
    n: int,
    *,
    train: Iterable[Composition],
    held_out: Iterable[Composition] = (),
    screen: bool = False,
    generator: torch.Generator | None = None,
) -> CompositionStatistics:
    """The statistics of ``n`` compositions drawn from ``model`` (raw draws unless ``screen``)."""
    drawn = usable_draws(model, n, screen=screen, generator=generator)
    return statistics_of_draws(drawn, n, train=train, held_out=held_out, screened=screen)


def usable_draws(
    model: MatGAN, n: int, *, screen: bool = False, generator: torch.Generator | None = None
) -> list[dict[int, int]]:
    """``{Z: count}`` of those of ``n`` draws that hold 1..``max_atoms`` atoms, in draw order.

    Raw generator draws (one latent each) unless ``screen`` (the screened compositions ``sample`` uses).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    model.eval()
    if screen:
        counts, _ = model.draw(n, generator=generator, screen=True)
    else:
        counts = draw_counts(model.generator, n, generator=generator)
    sizes = counts.sum(dim=1)
    usable = (sizes >= 1) & (sizes <= model.config.max_atoms)
    return [model.codec.composition(row) for row in counts[usable]]


def statistics_of_draws(
    drawn: Sequence[Mapping[int, int]],
    n: int,
    *,
    train: Iterable[Composition],
    held_out: Iterable[Composition] = (),
    screened: bool = False,
) -> CompositionStatistics:
    """The statistics of ``drawn`` (``usable_draws``), the usable ones of ``n`` draws."""
    if n < 1 or len(drawn) > n:
        raise ValueError(f"need n >= 1 draws and at most n drawn compositions, got n={n} and {len(drawn)}")
    formulas = [reduced_formula(c) for c in drawn]
    known = _formulas(train)
    left_out = _formulas(held_out) - known
    distinct = set(formulas)
    neutral = {f: is_charge_neutral(dict(f)) for f in distinct}
    valid = len(formulas)
    return CompositionStatistics(
        n=n,
        valid=valid / n,
        charge_neutral=_share(sum(neutral[f] for f in formulas), valid),
        unique=_share(len(distinct), valid),
        novel=_share(sum(f not in known for f in formulas), valid),
        recovery=_share(len(left_out & distinct), len(left_out)),
        num_valid=valid,
        num_train_formulas=len(known),
        num_held_out=len(left_out),
        num_recovered=len(left_out & distinct),
        screened=screened,
    )


def _formulas(compositions: Iterable[Composition]) -> set[Formula]:
    """Reduced formulas of compositions given per atom or as ``{Z: count}``."""
    return {reduced_formula(comp) for comp in compositions}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
