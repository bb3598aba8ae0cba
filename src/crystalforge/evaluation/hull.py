"""The reference convex hull: MLIP energies of reference structures and per-chemical-system phase diagrams.

``ReferenceHull`` holds reference entries (raw MLIP energy per atom of a composition) and builds
pymatgen ``PhaseDiagram``s lazily per chemical system; ``ReferenceHull.load()`` reads the hull
shipped in ``crystalforge/evaluation/data`` (built by ``scripts/build_reference_hull.py``). The
stability metric (``metrics.stability``) asks it for energies above the hull.

Energies must come from the same MLIP as the hull. The hull stores raw MLIP energies; its
``energy_treatment`` is applied identically to the reference entries and to every sample:
``"none"`` (energies used as they are: right for CHGNet, trained on MPtrj energies that already
include the MP2020 corrections) or ``"mp2020"`` (pymatgen's ``MaterialsProject2020Compatibility``
with MP's GGA/GGA+U rules: for MLIPs that output raw GGA/GGA+U energies).

This module imports only ``hull_lp`` from crystalforge; pymatgen is imported lazily.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from crystalforge.evaluation.hull_lp import LP_FROM_ELEMENTS, lower_hull_energy

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core.composition import Composition

__all__ = [
    "DEFAULT_HULL_VERSION",
    "ENERGY_TREATMENTS",
    "HULL_COLUMNS",
    "CompositionLike",
    "EnergyTreatment",
    "HullEntry",
    "ReferenceHull",
    "hull_data_path",
    "mp2020_correction_per_atom",
    "write_hull_table",
]

EnergyTreatment = Literal["none", "mp2020"]
ENERGY_TREATMENTS: tuple[str, ...] = ("none", "mp2020")

CompositionLike: TypeAlias = "Composition | str | Mapping[str, float]"
"""A pymatgen ``Composition``, a formula (``"Fe2O3"``) or element symbol → amount (``Crystal.composition``)."""

DEFAULT_HULL_VERSION = "chgnet-0.3.0-v1"
"""The reference hull shipped in ``crystalforge/evaluation/data`` (built by
``scripts/build_reference_hull.py``)."""

HULL_COLUMNS = ("material_id", "formula", "energy_per_atom", "n_atoms", "source")
"""Columns of the hull table: ``formula`` is pymatgen's full formula (``"Fe2 O3"``, the cell's
counts), ``energy_per_atom`` the raw MLIP energy (eV/atom), ``source`` where the structure came
from (``mp_20/test``, ``mpts_52/val``, ``elemental-prototype/fcc``, ...)."""


def hull_data_path(version: str = DEFAULT_HULL_VERSION) -> tuple[Path, Path]:
    """Paths of the shipped table (``reference_hull_<version>.csv.gz``) and its JSON metadata."""
    root = Path(str(resources.files("crystalforge.evaluation") / "data"))
    return root / f"reference_hull_{version}.csv.gz", root / f"reference_hull_{version}.json"


# ---- energy treatment ---------------------------------------------------------------------------------
def _as_composition(composition: CompositionLike) -> Composition:
    from pymatgen.core.composition import Composition

    if isinstance(composition, Composition):
        return composition
    if isinstance(composition, str):
        return Composition(composition)
    if isinstance(composition, Mapping):
        return Composition({str(k): float(v) for k, v in composition.items()})
    raise TypeError(f"cannot read a composition from {type(composition).__name__}")


_MP2020_CACHE: dict[str, float] = {}


def mp2020_correction_per_atom(composition: CompositionLike) -> float:
    """MP2020 energy correction (eV/atom) for a composition computed with MP's GGA/GGA+U rules.

    The entry is a composition-only ``ComputedEntry`` with ``run_type`` "GGA+U" and MP's U
    values when the most electronegative element is O or F and a U element (Co, Cr, Fe, Mn,
    Mo, Ni, V, W) is present, else "GGA"; ``MaterialsProject2020Compatibility(check_potcar=False)``
    gives the adjustments (anion, oxide-type by formula, GGA/GGA+U mixing). Cached per reduced
    formula. Raises pymatgen's ``CompatibilityError`` if the scheme rejects the entry.
    """
    comp = _as_composition(composition)
    key = comp.reduced_composition.alphabetical_formula
    if key in _MP2020_CACHE:
        return _MP2020_CACHE[key]
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedEntry

    compat = MaterialsProject2020Compatibility(check_potcar=False)
    reduced = comp.reduced_composition
    if len(reduced) == 1:
        _MP2020_CACHE[key] = 0.0
        return 0.0
    most_electronegative = max(reduced.elements, key=lambda el: el.X).symbol
    u_values = compat.u_settings.get(most_electronegative, {})
    hubbards = {el.symbol: float(u_values[el.symbol]) for el in reduced.elements if el.symbol in u_values}
    entry = ComputedEntry(
        reduced,
        0.0,
        parameters={"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards, "software": "mlip"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adjustments = compat.get_adjustments(entry)
    value = float(sum(a.value for a in adjustments)) / float(reduced.num_atoms)
    _MP2020_CACHE[key] = value
    return value


# ---- the reference hull ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HullEntry:
    """One reference entry: raw MLIP energy per atom of a structure with this composition."""

    material_id: str
    formula: str  # pymatgen's full formula, e.g. "Fe2 O3"
    energy_per_atom: float  # eV/atom, raw MLIP energy
    source: str = ""


class ReferenceHull:
    """Reference entries with MLIP energies, and per-chemical-system convex hulls over them.

    Phase diagrams are built lazily, one per chemical system asked for (from the entries of
    that system and all its subsystems), and cached. Use ``load`` for a shipped table,
    ``from_file`` for any table, or the constructor for hand-built entries.

    Args:
        entries: the reference entries (entries with a non-finite energy are dropped).
        metadata: provenance (version, MLIP, energy treatment, build command, counts, ...).
        energy_treatment: ``"none"`` or ``"mp2020"``; None takes ``metadata["energy_treatment"]``
            (``"none"`` when absent).

    """

    def __init__(
        self,
        entries: Iterable[HullEntry],
        *,
        metadata: Mapping[str, Any] | None = None,
        energy_treatment: EnergyTreatment | None = None,
    ) -> None:
        from pymatgen.core.composition import Composition

        self.metadata: dict[str, Any] = dict(metadata or {})
        if self.metadata.get("partial"):
            warnings.warn(
                f"reference hull {self.metadata.get('version')!r} is a partial trial build (--limit); "
                "stability numbers against it are not meaningful",
                stacklevel=2,
            )
        treatment = energy_treatment or self.metadata.get("energy_treatment") or "none"
        if treatment not in ENERGY_TREATMENTS:
            raise ValueError(f"energy_treatment must be one of {ENERGY_TREATMENTS}, got {treatment!r}")
        self.energy_treatment: str = str(treatment)
        self.entries: list[HullEntry] = []
        self._compositions: list[Composition] = []
        self._by_chemsys: dict[frozenset[str], list[int]] = {}
        self.rejected: dict[str, str] = {}  # material_id -> why it was left out of the hull
        for entry in entries:
            if not math.isfinite(entry.energy_per_atom):
                self.rejected[entry.material_id] = "non-finite energy"
                continue
            comp = Composition(entry.formula)
            index = len(self.entries)
            self.entries.append(entry)
            self._compositions.append(comp)
            chemsys = frozenset(el.symbol for el in comp.elements)
            self._by_chemsys.setdefault(chemsys, []).append(index)
        self._treated: dict[int, float] = {}
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}
        self.elements: frozenset[str] = frozenset(
            next(iter(key)) for key in self._by_chemsys if len(key) == 1
        )  # elements with at least one elemental entry (the hull's terminals)

    # ---- construction from files ----------------------------------------------------------------
    @classmethod
    def load(
        cls, version: str = DEFAULT_HULL_VERSION, *, energy_treatment: EnergyTreatment | None = None
    ) -> ReferenceHull:
        """The hull shipped with the package under ``version``.

        Raises:
            FileNotFoundError: if that version is not installed (the message says how to build it).

        """
        table, meta = hull_data_path(version)
        if not table.is_file():
            raise FileNotFoundError(
                f"reference hull {version!r} not found at {table}; build it with "
                f"`python scripts/build_reference_hull.py --out {table}` (see docs/metrics.md, 'Stability')"
            )
        return cls.from_file(table, metadata_path=meta, energy_treatment=energy_treatment)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        metadata_path: str | Path | None = None,
        energy_treatment: EnergyTreatment | None = None,
    ) -> ReferenceHull:
        """Read a hull table (``.csv`` or ``.csv.gz`` with ``HULL_COLUMNS``) and its JSON metadata.

        The metadata defaults to the sibling ``<stem>.json`` (``reference_hull_X.json`` for
        ``reference_hull_X.csv.gz``) and may be absent.
        """
        path = Path(path)
        if metadata_path is None:
            stem = path.name.removesuffix(".gz").removesuffix(".csv")
            metadata_path = path.with_name(f"{stem}.json")
        metadata = json.loads(Path(metadata_path).read_text()) if Path(metadata_path).is_file() else {}
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"material_id", "formula", "energy_per_atom"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: hull table lacks columns {sorted(missing)}")
            entries = [
                HullEntry(
                    material_id=row["material_id"],
                    formula=row["formula"],
                    energy_per_atom=float(row["energy_per_atom"]) if row["energy_per_atom"] else math.nan,
                    source=row.get("source") or "",
                )
                for row in reader
            ]
        return cls(entries, metadata=metadata, energy_treatment=energy_treatment)

    # ---- basic views -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The hull's version (from its metadata), or ``"custom"``."""
        return str(self.metadata.get("version", "custom"))

    @property
    def mlip(self) -> str | None:
        """The name of the MLIP whose energies the hull holds (from its metadata)."""
        value = self.metadata.get("mlip")
        if isinstance(value, Mapping):
            value = value.get("name")
        return None if value is None else str(value)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"ReferenceHull({self.version!r}, {len(self)} entries, {len(self.elements)} elements, "
            f"energy_treatment={self.energy_treatment!r})"
        )

    def describe(self) -> dict[str, Any]:
        """Version, MLIP, energy treatment and size, for protocol blocks."""
        return {
            "version": self.version,
            "mlip": self.mlip,
            "energy_treatment": self.energy_treatment,
            "num_entries": len(self),
            "num_elements": len(self.elements),
        }

    # ---- energies and hulls ----------------------------------------------------------------------------
    def treated_energy_per_atom(self, composition: CompositionLike, energy_per_atom: float) -> float:
        """``energy_per_atom`` after this hull's energy treatment (what enters the hull)."""
        if self.energy_treatment == "mp2020":
            return float(energy_per_atom) + mp2020_correction_per_atom(composition)
        return float(energy_per_atom)

    def _entry_energy(self, index: int) -> float:
        value = self._treated.get(index)
        if value is None:
            entry = self.entries[index]
            try:
                value = self.treated_energy_per_atom(self._compositions[index], entry.energy_per_atom)
            except Exception as exc:  # noqa: BLE001 - pymatgen's CompatibilityError and friends
                self.rejected[entry.material_id] = f"{self.energy_treatment} treatment rejected it: {exc}"
                value = math.nan
            self._treated[index] = value
        return value

    def missing_elements(self, composition: CompositionLike) -> list[str]:
        """Elements of ``composition`` that have no elemental entry in the hull."""
        comp = _as_composition(composition)
        return sorted(el.symbol for el in comp.elements if el.symbol not in self.elements)

    def phase_diagram(self, elements: Iterable[str]) -> PhaseDiagram:
        """The (cached) phase diagram of the chemical system spanned by ``elements``.

        Raises:
            ValueError: if an element has no elemental entry in the hull.

        """
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

        chemsys = frozenset(elements)
        diagram = self._diagrams.get(chemsys)
        if diagram is not None:
            return diagram
        self._require_terminals(chemsys)
        pd_entries = []
        for index in self._within(chemsys):
            comp = self._compositions[index]
            energy = self._entry_energy(index) * comp.num_atoms
            pd_entries.append(PDEntry(comp, energy, name=self.entries[index].material_id))
        self._diagrams[chemsys] = diagram = PhaseDiagram(pd_entries)
        return diagram

    def _require_terminals(self, chemsys: frozenset[str]) -> None:
        missing = sorted(chemsys - self.elements)
        if missing:
            raise ValueError(f"no elemental reference for {', '.join(missing)} in hull {self.version!r}")

    def _within(self, chemsys: frozenset[str]) -> list[int]:
        """Indices of the entries (finite energy) whose elements all lie in ``chemsys``."""
        symbols = sorted(chemsys)
        subsets = (frozenset(s) for n in range(1, len(symbols) + 1) for s in itertools.combinations(symbols, n))
        found = (i for subset in subsets for i in self._by_chemsys.get(subset, ()))
        return [i for i in found if math.isfinite(self._entry_energy(i))]

    def hull_energy_per_atom(self, composition: CompositionLike) -> float:
        """Energy per atom (treated, eV/atom) of the hull at ``composition`` (LP from ``LP_FROM_ELEMENTS`` elements)."""
        comp = _as_composition(composition)
        chemsys = frozenset(el.symbol for el in comp.elements)
        if len(chemsys) >= LP_FROM_ELEMENTS:
            return self.lp_hull_energy_per_atom(comp)
        return float(self.phase_diagram(chemsys).get_hull_energy_per_atom(comp))

    def lp_hull_energy_per_atom(self, composition: CompositionLike) -> float:
        """The phase diagram's hull energy at ``composition`` from a linear program (``hull_lp``), at any size."""
        comp = _as_composition(composition)
        symbols = sorted(el.symbol for el in comp.elements)
        self._require_terminals(frozenset(symbols))
        rows = self._within(frozenset(symbols))
        fractions = np.array([[self._compositions[i].get_atomic_fraction(e) for e in symbols] for i in rows])
        energies = np.array([self._entry_energy(i) for i in rows])
        return lower_hull_energy(fractions, energies, np.array([comp.get_atomic_fraction(e) for e in symbols]))

    def e_above_hull(self, composition: CompositionLike, energy_per_atom: float) -> float:
        """Energy above the hull (eV/atom, negative below it) of a raw MLIP ``energy_per_atom``.

        NaN when it cannot be computed (see ``e_above_hull_with_reason`` for why).
        """
        return self.e_above_hull_with_reason(composition, energy_per_atom)[0]

    def e_above_hull_with_reason(self, composition: CompositionLike, energy_per_atom: float) -> tuple[float, str]:
        """``(E_hull, "ok")``, or ``(NaN, reason)`` when it cannot be computed."""
        if not math.isfinite(energy_per_atom):
            return math.nan, "non-finite energy"
        try:
            comp = _as_composition(composition)
        except Exception as exc:  # noqa: BLE001
            return math.nan, f"unreadable composition: {exc}"
        if comp.num_atoms <= 0:
            return math.nan, "empty composition"
        missing = self.missing_elements(comp)
        if missing:
            return math.nan, f"no elemental reference for {', '.join(missing)} in hull {self.version!r}"
        try:
            treated = self.treated_energy_per_atom(comp, energy_per_atom)
        except Exception as exc:  # noqa: BLE001
            return math.nan, f"{self.energy_treatment} treatment rejected the sample: {exc}"
        try:
            hull = self.hull_energy_per_atom(comp)
        except Exception as exc:  # noqa: BLE001
            return math.nan, f"phase diagram failed: {type(exc).__name__}: {exc}"
        return treated - hull, "ok"


def write_hull_table(entries: Iterable[HullEntry], handle: io.TextIOBase) -> None:
    """Write entries as the hull CSV (``HULL_COLUMNS``, energies rounded to 1e-5, sorted rows)."""
    from pymatgen.core.composition import Composition

    rows = []
    for e in entries:
        comp = Composition(e.formula)
        rows.append((e.material_id, comp.formula, f"{e.energy_per_atom:.5f}", str(round(comp.num_atoms)), e.source))
    rows.sort()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(HULL_COLUMNS)
    writer.writerows(rows)
