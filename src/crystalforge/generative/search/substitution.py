"""The ``substitution`` family: known prototypes with data-mined ion substitutions (de novo only).

The classic way to propose new inorganic crystals (Hautier et al. 2011; the substitution baselines
of the generative-model reviews): take a known structure, swap its ions for ones that are known to
substitute for them, keep the charge-neutral results.

**Fit.** Training remembers the training structures as prototypes (types, fractional coordinates,
lattices: ``memory.CrystalMemory`` with geometry, at most ``max_memory`` of them, a seeded reservoir
sample beyond). The substitution table is not fitted here: it is pymatgen's copy of Hautier's
ICSD-mined table (``substitution_table``), restricted to substitutes of ``elements`` (by default the
training data's elements). The loss also fits θ, the mean ``ln(V / V_ref)`` with ``V_ref`` summed
atomic-radius spheres (``SearchModel``): it is the one parameter the optimiser needs and is
reported with the run's metrics, but sampling does not use it (volumes come from the prototypes).

**Sampling** (DNG; one crystal at a time, each with a NumPy generator seeded from the torch generator):

- prototype: a remembered structure with the template's ``n`` atoms; if none, one whose size ``m``
  divides ``n`` (the largest such), repeated ``n/m`` times along its first lattice vector; else one
  of the nearest size, and the crystal then has that many atoms, not ``n`` (logged; plan constraints
  are refused then, since they act on the template's atoms).
- species: pymatgen's oxidation-state guess for the prototype (``guess_species``); prototypes
  without one (most intermetallics) are redrawn.
- substitution: each ion ``old`` independently gets a substitute drawn with probability proportional
  to ``exp(λ(new, old))`` (itself included). A draw is kept only when the new elements are distinct,
  the charges sum to zero and the composition differs from the prototype's; otherwise a new prototype
  and substitution are drawn, up to ``max_tries`` in all. When every try fails the crystal is a drawn
  prototype unchanged (a copy of a training structure, logged with how many there were).
- volume: the cell is scaled isotropically by the ratio of summed ionic volumes,
  ``V_new = V_proto · Σ r_new³ / Σ r_old³`` over the atoms (Shannon radii of the species with their
  oxidation states, ``substitution_table``); fractional coordinates are the prototype's.

CSP is not offered: it would need a prototype with the target's stoichiometry pattern, which the
memory may lack, and a job must always return a crystal; so ``tasks = ("dng",)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.elements import MAX_Z, element_table
from crystalforge.generative.interfaces import SamplePlan, SampleStep
from crystalforge.generative.search.base import SearchModel, assemble, crystal_rows
from crystalforge.generative.search.memory import CrystalMemory, rows_for_size
from crystalforge.generative.search.substitution_table import (
    DEFAULT_RADIUS,
    SubstitutionTable,
    guess_species,
    substitution_table,
)

__all__ = ["Substitution", "SubstitutionConfig", "build_substitution", "resolve_substitution"]

logger = logging.getLogger(__name__)

FAMILY = "substitution"

Structure = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(atomic_numbers [n], frac_coords [n, 3], lattice [3, 3])`` of one crystal."""


@dataclass(frozen=True)
class SubstitutionConfig:
    """Options of the ``substitution`` family (``model:`` in a training YAML).

    Attributes:
        max_memory: prototypes remembered at most (a seeded reservoir sample of a larger set); each
            costs about 16 bytes per atom slot in the checkpoint.
        elements: atomic numbers substitutes may have; empty means the training data's elements
            (filled by ``resolve_substitution``).
        max_tries: prototype + substitution draws per crystal before falling back to a copy.
        seed: seed of the reservoir sample.
        max_atoms: width of the memory (filled from the data).
        num_train: training structures in one pass (filled from the data).

    """

    max_memory: int = 10_000
    elements: tuple[int, ...] = ()
    max_tries: int = 50
    seed: int = 0
    max_atoms: int = 0
    num_train: int = 0

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.max_memory < 0:
            raise ValueError(f"max_tries must be >= 1 and max_memory >= 0, got {self.max_tries}, {self.max_memory}")
        bad = [z for z in self.elements if not 1 <= z <= MAX_Z]
        if bad:
            raise ValueError(f"elements: {bad} are not atomic numbers 1..{MAX_Z}")

    @property
    def capacity(self) -> int:
        """Memory slots: ``max_memory``, or fewer when the training set is smaller."""
        return min(self.max_memory, self.num_train) if self.num_train else self.max_memory


def atomic_volumes() -> np.ndarray:
    """``[119]`` Å³: a sphere of each element's atomic radius (``DEFAULT_RADIUS`` where there is none)."""
    radius = np.array(element_table().atomic_radius, dtype=np.float64)
    radius[~np.isfinite(radius)] = DEFAULT_RADIUS
    volumes: np.ndarray = 4.0 * math.pi / 3.0 * radius**3
    volumes[0] = 0.0
    return volumes


class Substitution(SearchModel):
    """Charge-neutral ion substitutions on remembered prototypes; see the module docstring."""

    tasks = ("dng",)

    def __init__(self, config: SubstitutionConfig) -> None:
        memory = CrystalMemory(
            config.capacity, config.max_atoms, pass_size=config.num_train, seed=config.seed, geometry=True
        )
        super().__init__(FAMILY, memory, atomic_volumes())
        self.config = config

    def sample(
        self, template: CrystalBatch, plan: SamplePlan, *, generator: torch.Generator | None = None
    ) -> Iterator[SampleStep]:
        """One step: a substituted prototype per template crystal (the template's types are not read)."""
        self.check_plan(plan)
        table = substitution_table()
        allowed = np.isin(table.atomic_numbers, np.asarray(self.config.elements or range(1, MAX_Z + 1)))
        weights = table.weights * allowed[:, None]
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**62, (template.num_crystals,), generator=generator, device=device).tolist()
        types = self.memory.types()
        sizes = (types > 0).sum(axis=1)
        crystals: list[Structure] = []
        copies = resized = 0
        for z, seed in zip(crystal_rows(template), seeds, strict=True):
            rng = np.random.default_rng(seed)
            rows, m = rows_for_size(sizes, len(z))
            structure = self._substituted(table, weights, types, rows, m, rng)
            if structure is None:
                copies += 1
                structure = self._prototype(int(rows[rng.integers(len(rows))]), m)
            if len(z) % m == 0 and m != len(z):
                structure = _repeat(structure, len(z) // m)
            resized += len(structure[0]) != len(z)
            crystals.append(structure)
        if copies:
            logger.warning(
                "%s: %d of %d crystals are unchanged prototypes (no charge-neutral new substitution in %d tries)",
                FAMILY, copies, len(crystals), self.config.max_tries,
            )  # fmt: skip
        if resized:
            logger.warning("%s: %d crystals have the nearest remembered size, not the asked one", FAMILY, resized)
        yield from self.finish(assemble(template, crystals), template, plan, generator)

    def _prototype(self, row: int, m: int) -> Structure:
        """Remembered structure ``row`` (``m`` atoms) as it is."""
        z = self.memory.atomic_numbers[row, :m].cpu().numpy().astype(np.int64)
        return z, self.memory.frac_coords(row)[:m], self.memory.lattice(row)

    def _substituted(
        self,
        table: SubstitutionTable,
        weights: np.ndarray,
        types: np.ndarray,
        rows: np.ndarray,
        m: int,
        rng: np.random.Generator,
    ) -> Structure | None:
        """A charge-neutral, new substitution of a drawn prototype (``max_tries`` draws), or None."""
        for _ in range(self.config.max_tries):
            row = int(rows[rng.integers(len(rows))])
            elements, inverse, counts = np.unique(types[row, :m], return_inverse=True, return_counts=True)
            charges = guess_species(elements.tolist(), counts.tolist())
            if charges is None:
                continue
            old = [table.index((int(z), q)) for z, q in zip(elements, charges, strict=True)]
            columns = [weights[:, o] for o in old if o is not None]
            if len(columns) != len(old) or any(c.sum() <= 0 for c in columns):
                continue
            new = np.array([rng.choice(len(c), p=c / c.sum()) for c in columns])
            new_z = table.atomic_numbers[new]
            if len(set(new_z.tolist())) != len(new_z) or int((counts * table.charges[new]).sum()) != 0:
                continue
            if _composition(new_z, counts) == _composition(elements, counts):
                continue  # the prototype's own composition: nothing new
            before = float((counts * table.radius[np.array(old)] ** 3).sum())
            after = float((counts * table.radius[new] ** 3).sum())
            _, frac, lattice = self._prototype(row, m)
            return new_z[inverse], frac, lattice * (after / before) ** (1.0 / 3.0)
        return None


def _composition(elements: np.ndarray, counts: np.ndarray) -> list[tuple[int, int]]:
    """``(Z, count)`` pairs, sorted: equal for equal compositions."""
    return sorted(zip(elements.tolist(), counts.tolist(), strict=True))


def _repeat(structure: Structure, k: int) -> Structure:
    """``structure`` repeated ``k`` times along its first lattice vector (a k×1×1 supercell)."""
    z, frac, lattice = structure
    shifts = np.repeat(np.arange(k), len(z))
    tiled = np.tile(frac, (k, 1))
    tiled[:, 0] = (tiled[:, 0] + shifts) / k
    scaled = lattice.copy()
    scaled[0] *= k
    return np.tile(z, k), tiled, scaled


def resolve_substitution(config: SubstitutionConfig, stats: DatasetStats | None) -> SubstitutionConfig:
    """The config with the memory's width, the pass size and (if not given) the elements from the data."""
    if stats is None:
        return config
    return replace(
        config,
        max_atoms=config.max_atoms or stats.max_atoms,
        num_train=stats.num_structures,
        elements=config.elements or tuple(stats.elements),
    )


def build_substitution(config: SubstitutionConfig, stats: DatasetStats | None) -> Substitution:
    """The model of ``config`` (pymatgen's table is read on the first sample, not here)."""
    return Substitution(config)
