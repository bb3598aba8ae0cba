"""The ``random_symmetric`` family: random crystals with a random space group, the PyXtal way.

The baseline every generative model of crystals is compared with (PyXtal, Fredericks et al. 2021):
place the atoms of a composition on the Wyckoff positions of a randomly drawn space group.

**Fit.** Training remembers the training compositions (``memory.CrystalMemory``, types only: at
most ``max_memory`` of them, a seeded reservoir sample beyond) and fits θ, the mean of
``ln(V / V_pyxtal)`` over the training cells, where ``V_pyxtal = Σ_atoms (4π/3)(r_cov³ + r_vdW³)/2``
is the mean of PyXtal's own volume estimate (it draws each element's volume uniformly between its
covalent and van der Waals spheres). So generated cells get the data's density, composition by
composition, where PyXtal's default (``factor=1.1``) is far too loose for inorganic crystals.

**Sampling** (one crystal at a time, each with a NumPy generator seeded from the torch generator):

- composition: a CSP crystal (every template atom typed) keeps its template types, in its order. A
  DNG crystal (any ``MASK_Z`` atom; known atoms are written back by the plan's constraints) draws a
  remembered composition with exactly ``n`` atoms; if none has ``n`` atoms, one whose size ``m``
  divides ``n`` (the largest such), scaled by ``n/m``; else one of the nearest size, its counts
  rescaled to ``n`` by largest remainders (``memory.scale_counts``): the template's size always holds.
- structure: a space group drawn uniformly from ``space_groups`` (inclusive), then PyXtal's
  ``from_random(3, group, species, counts, factor=exp(θ))``; a group that is incompatible with the
  counts or fails is redrawn, up to ``max_tries`` groups. When all fail, the crystal gets uniformly
  random positions in a cubic P1 cell (logged, with how many crystals fell back).
- volume: the cell is then scaled isotropically to exactly ``V_pyxtal · exp(θ)`` (PyXtal's own
  volume is random around it); fractional coordinates, hence the symmetry, are unchanged.

Needs the optional package ``pyxtal`` (``pip install "crystalforge[baselines]"``): the config refuses
to be made without it, so ``crystalforge train``/``generate`` stop before any work.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MASK_Z, MAX_Z, z_to_symbol
from crystalforge.core.extras import MissingDependencyError, is_available, require
from crystalforge.generative.interfaces import SamplePlan, SampleStep
from crystalforge.generative.search.base import SearchModel, assemble, crystal_rows
from crystalforge.generative.search.memory import CrystalMemory, rows_for_size, scale_counts

__all__ = ["RandomSymmetric", "RandomSymmetricConfig", "build_random_symmetric", "resolve_random_symmetric"]

logger = logging.getLogger(__name__)

FAMILY = "random_symmetric"
FEATURE = "the random_symmetric model family (random symmetric structures by PyXtal)"

Structure = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(atomic_numbers [n], frac_coords [n, 3], lattice [3, 3])`` of one crystal."""


@dataclass(frozen=True)
class RandomSymmetricConfig:
    """Options of the ``random_symmetric`` family (``model:`` in a training YAML).

    Attributes:
        max_memory: compositions remembered at most (a seeded reservoir sample of a larger set).
        space_groups: ``(first, last)`` space-group numbers drawn uniformly (inclusive).
        max_tries: space groups tried per crystal before the P1 fallback.
        seed: seed of the reservoir sample.
        max_atoms: width of the memory (filled from the data by ``resolve_random_symmetric``).
        num_train: training structures in one pass (filled from the data).

    """

    max_memory: int = 50_000
    space_groups: tuple[int, int] = (2, 230)
    max_tries: int = 50
    seed: int = 0
    max_atoms: int = 0
    num_train: int = 0

    def __post_init__(self) -> None:
        first, last = self.space_groups
        if not 1 <= first <= last <= 230:
            raise ValueError(f"space_groups must satisfy 1 <= first <= last <= 230, got {self.space_groups}")
        if self.max_tries < 1 or self.max_memory < 0:
            raise ValueError(f"max_tries must be >= 1 and max_memory >= 0, got {self.max_tries}, {self.max_memory}")
        if not is_available("pyxtal"):
            raise MissingDependencyError("pyxtal", FEATURE, "baselines")

    @property
    def capacity(self) -> int:
        """Memory slots: ``max_memory``, or fewer when the training set is smaller."""
        return min(self.max_memory, self.num_train) if self.num_train else self.max_memory


@lru_cache(maxsize=1)
def pyxtal_volumes() -> np.ndarray:
    """``[119]`` Å³: the mean of PyXtal's covalent and van der Waals sphere volumes per element.

    Elements PyXtal has no radii for (Z > 96) get the median of the others (PyXtal cannot place
    them: such crystals end in the P1 fallback).
    """
    element = require("pyxtal.database.element", FEATURE, extra="baselines").Element
    table = np.full(MAX_Z + 1, np.nan)
    for z in range(1, MAX_Z + 1):
        radii = element(z_to_symbol(z))
        rc, rv = radii.covalent_radius, radii.vdw_radius
        if rc and rv:
            table[z] = 4.0 * math.pi / 3.0 * (float(rc) ** 3 + float(rv) ** 3) / 2.0
    table[np.isnan(table)] = np.nanmedian(table[1:])
    table[MASK_Z] = 0.0
    return table


class RandomSymmetric(SearchModel):
    """Random symmetric structures of remembered (DNG) or given (CSP) compositions; see the module docstring."""

    tasks = ("csp", "dng")

    def __init__(self, config: RandomSymmetricConfig) -> None:
        memory = CrystalMemory(config.capacity, config.max_atoms, pass_size=config.num_train, seed=config.seed)
        super().__init__(FAMILY, memory, pyxtal_volumes())
        self.config = config

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """One step: a random symmetric structure per template crystal."""
        self.check_plan(plan)
        pyxtal = require("pyxtal", FEATURE, extra="baselines")
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**62, (template.num_crystals,), generator=generator, device=device).tolist()
        types = self.memory.types()
        sizes = (types > 0).sum(axis=1)
        crystals: list[Structure] = []
        fallbacks = 0
        for z, seed in zip(crystal_rows(template), seeds, strict=True):
            rng = np.random.default_rng(seed)
            if bool((z == MASK_Z).any()):
                species, counts = self._composition(types, sizes, len(z), rng)
                order = None
            else:
                species, counts = np.unique(z, return_counts=True)
                order = z
            structure = self._symmetric(pyxtal, species, counts, rng)
            if structure is None:
                fallbacks += 1
                structure = self._p1(species, counts, rng)
            crystals.append(structure if order is None else _in_order(structure, order))
        if fallbacks:
            logger.warning(
                "%s: %d of %d crystals fell back to random P1 positions (no space group of %d tries worked)",
                FAMILY, fallbacks, len(crystals), self.config.max_tries,
            )  # fmt: skip
        yield from self.finish(assemble(template, crystals), template, plan, generator)

    def _composition(
        self, types: np.ndarray, sizes: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A remembered composition brought to ``n`` atoms: ``(species [k], counts [k])``."""
        rows, m = rows_for_size(sizes, n)
        row = types[int(rows[rng.integers(len(rows))])]
        species, counts = np.unique(row[row > 0], return_counts=True)
        if m != n:
            counts = scale_counts(counts, n)
            species, counts = species[counts > 0], counts[counts > 0]
        return species, counts

    def _symmetric(
        self, pyxtal: ModuleType, species: np.ndarray, counts: np.ndarray, rng: np.random.Generator
    ) -> Structure | None:
        """PyXtal's structure in a random space group (up to ``max_tries`` groups), or None."""
        symbols = [z_to_symbol(int(z)) for z in species]
        numbers = [int(c) for c in counts]
        factor = float(torch.exp(self.log_volume_ratio.detach()))
        first, last = self.config.space_groups
        errors = (pyxtal.msg.Error, RuntimeError, ValueError)  # what PyXtal raises for an infeasible group
        for _ in range(self.config.max_tries):
            group = int(rng.integers(first, last + 1))
            crystal = pyxtal.pyxtal()
            try:
                with warnings.catch_warnings():  # PyXtal warns whenever it enlarges a cell it could not fill
                    warnings.simplefilter("ignore")
                    crystal.from_random(3, group, symbols, numbers, factor=factor, random_state=rng)
                structure = crystal.to_pymatgen()
            except errors:
                continue
            z = np.array([site.specie.Z for site in structure], dtype=np.int64)
            if len(z) != sum(numbers):
                continue
            lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
            scale = (self.target_volume(z) / abs(float(np.linalg.det(lattice)))) ** (1.0 / 3.0)
            return z, np.asarray(structure.frac_coords, dtype=np.float64), lattice * scale
        return None

    def _p1(self, species: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> Structure:
        """The fallback: uniformly random positions in a cube of the learned volume."""
        z = np.repeat(species, counts).astype(np.int64)
        side = self.target_volume(z) ** (1.0 / 3.0)
        return z, rng.random((len(z), 3)), np.eye(3) * side


def _in_order(structure: Structure, order: np.ndarray) -> Structure:
    """``structure``'s atoms permuted so that their types read as ``order`` (same multiset)."""
    z, frac, lattice = structure
    source = np.argsort(z, kind="stable")
    target = np.argsort(order, kind="stable")
    perm = np.empty_like(source)
    perm[target] = source
    return z[perm], frac[perm], lattice


def resolve_random_symmetric(config: RandomSymmetricConfig, stats: DatasetStats | None) -> RandomSymmetricConfig:
    """The config with the memory's width and the pass size read from the training statistics."""
    if stats is None:
        return config
    return replace(config, max_atoms=config.max_atoms or stats.max_atoms, num_train=stats.num_structures)


def build_random_symmetric(config: RandomSymmetricConfig, stats: DatasetStats | None) -> RandomSymmetric:
    """The model of ``config`` (``MissingDependencyError`` naming the ``baselines`` extra without PyXtal)."""
    require("pyxtal", FEATURE, extra="baselines")
    return RandomSymmetric(config)
