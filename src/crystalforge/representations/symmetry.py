"""Space-group symmetry of a crystal (spglib) and the Wyckoff representation built on it.

``analyze_symmetry`` reports the space group, Hall setting and per-atom Wyckoff letters of one
``Crystal``. ``WyckoffRepresentation`` encodes a crystal as its space group (Hall number), the
spglib-standardised conventional lattice and one representative site per crystallographic orbit
(asymmetric unit); ``decode`` regenerates every site by applying the Hall setting's operations.

The representation is lossless up to the choice of cell and to ``symprec``: decoding gives the
*conventional standardised* cell (e.g. 8 atoms for NaCl given as a 2-atom primitive cell), with
positions idealised by spglib (moved by at most about ``symprec``). Compare round trips with
pymatgen's ``StructureMatcher``, never atom by atom.

How the standardised cell's sites are labelled: spglib maps both the input atoms
(``mapping_to_primitive``) and the standardised atoms (``std_mapping_to_primitive``) onto the same
primitive-cell indices, so each standardised atom inherits the Wyckoff letter and orbit of the input
atoms it corresponds to. No second symmetry search is run on the standardised cell.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import spglib

from crystalforge.core.crystal import MIN_RELATIVE_VOLUME, Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.lattice import plane_spacings
from crystalforge.core.periodic import pbc_diff, wrap_frac

NUM_HALL_NUMBERS = 530
"""spglib's Hall numbers run 1..530 (every setting of the 230 space groups)."""


@contextmanager
def _quiet_spglib() -> Iterator[None]:
    # spglib >= 2.5 warns on every call while its OLD_ERROR_HANDLING switch is on (the default);
    # we handle both the old (None) and the new (SpglibError) failure styles, so the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*OLD_ERROR_HANDLING.*", category=DeprecationWarning)
        yield


def _check_tolerances(symprec: float, angle_tolerance: float, source: str | None) -> None:
    if not symprec > 0:
        raise CrystalError(f"symprec must be positive, got {symprec}", source=source)
    if not (angle_tolerance > 0 or angle_tolerance == -1.0):
        raise CrystalError(
            f"angle_tolerance must be positive (or -1 for spglib's default), got {angle_tolerance}", source=source
        )


def _symmetry_dataset(crystal: Crystal, symprec: float, angle_tolerance: float) -> Any:
    """Run spglib on ``crystal``; raises ``CrystalError`` naming the crystal when spglib fails."""
    _check_tolerances(symprec, angle_tolerance, crystal.material_id)
    # spglib's alias names nested sequences, but it reads its input with np.asarray: arrays are fine
    cell = cast(
        spglib.SpgCell,
        (
            np.ascontiguousarray(crystal.lattice),
            np.ascontiguousarray(crystal.frac_coords),
            np.ascontiguousarray(crystal.atomic_numbers, dtype=np.intc),
        ),
    )
    problem = f"spglib found no space group (symprec={symprec} Å, angle_tolerance={angle_tolerance}°)"
    try:
        with _quiet_spglib():
            dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
    except spglib.SpglibError as exc:
        raise CrystalError(f"{problem}: {exc}", source=crystal.material_id) from None
    if dataset is None:
        with _quiet_spglib():
            detail = spglib.get_error_message()
        hint = "; overlapping atoms or a too large symprec are the usual causes"
        detail = f": {detail}" if detail and detail != "no error" else ""
        raise CrystalError(f"{problem}{detail}{hint}", source=crystal.material_id)
    return dataset


# ---- analysis -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SymmetryInfo:
    """Space-group facts about one crystal, per atom in the order of the input crystal."""

    spacegroup_number: int  # 1..230
    international: str  # Hermann–Mauguin short symbol, e.g. "Fm-3m"
    hall_number: int  # 1..530, spglib's setting
    wyckoff_letters: tuple[str, ...]  # [n]
    equivalent_atoms: np.ndarray  # [n] int64, index of the first atom of each atom's orbit
    site_symmetry_symbols: tuple[str, ...]  # [n], oriented site-symmetry symbols
    symprec: float  # Å
    angle_tolerance: float  # degrees

    @property
    def num_orbits(self) -> int:
        """Number of symmetry-distinct atoms (crystallographic orbits) in the input cell."""
        return int(np.unique(self.equivalent_atoms).shape[0])


def analyze_symmetry(crystal: Crystal, *, symprec: float = 0.1, angle_tolerance: float = 5.0) -> SymmetryInfo:
    """Space group, Hall setting and Wyckoff letters of ``crystal`` found by spglib.

    Args:
        crystal: The crystal to analyse.
        symprec: Distance tolerance in Å.
        angle_tolerance: Angle tolerance in degrees (-1 lets spglib choose).

    Returns:
        The ``SymmetryInfo``; raises ``CrystalError`` naming ``crystal.material_id`` when spglib fails.

    """
    ds = _symmetry_dataset(crystal, symprec, angle_tolerance)
    equivalent = np.array(ds.equivalent_atoms, dtype=np.int64)
    equivalent.setflags(write=False)
    return SymmetryInfo(
        spacegroup_number=int(ds.number),
        international=str(ds.international),
        hall_number=int(ds.hall_number),
        wyckoff_letters=tuple(str(w) for w in ds.wyckoffs),
        equivalent_atoms=equivalent,
        site_symmetry_symbols=tuple(str(s) for s in ds.site_symmetry_symbols),
        symprec=float(symprec),
        angle_tolerance=float(angle_tolerance),
    )


# ---- Wyckoff representation -----------------------------------------------------------------
def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class WyckoffEncoding:
    """A crystal as space group + conventional lattice + one representative site per orbit.

    Coordinates are fractional in the conventional standardised cell of the Hall setting
    ``hall_number``; ``multiplicities`` count a site's images in that cell.
    """

    spacegroup_number: int  # 1..230
    hall_number: int  # 1..530
    lattice: np.ndarray  # [3, 3] float64, conventional standardised cell, rows are vectors, Å
    atomic_numbers: np.ndarray  # [S] int64, one per representative site
    wyckoff_letters: tuple[str, ...]  # [S]
    frac_coords: np.ndarray  # [S, 3] float64 in [0, 1)
    multiplicities: np.ndarray  # [S] int64, images in the conventional cell
    material_id: str | None = None
    properties: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def fail(problem: str) -> CrystalError:
            return CrystalError(f"bad WyckoffEncoding: {problem}", source=self.material_id)

        try:
            lat = np.array(self.lattice, dtype=np.float64)
            z = np.array(self.atomic_numbers, dtype=np.int64).reshape(-1)
            frac = np.array(self.frac_coords, dtype=np.float64)
            mult = np.array(self.multiplicities, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise fail(f"cannot convert to arrays: {exc}") from None
        letters = tuple(str(w) for w in self.wyckoff_letters)
        if lat.shape != (3, 3):
            raise fail(f"lattice must have shape (3, 3), got {lat.shape}")
        if frac.ndim != 2 or frac.shape[1] != 3:
            raise fail(f"frac_coords must have shape (S, 3), got {frac.shape}")
        sizes = {len(z), len(frac), len(mult), len(letters)}
        if len(sizes) != 1:
            raise fail(
                f"{len(z)} atomic numbers, {len(frac)} coordinate rows, {len(mult)} multiplicities "
                f"and {len(letters)} Wyckoff letters must agree"
            )
        if len(z) == 0:
            raise fail("no sites")
        if not (np.isfinite(lat).all() and np.isfinite(frac).all()):
            raise fail("lattice or frac_coords contain NaN or infinite values")
        if abs(np.linalg.det(lat)) <= MIN_RELATIVE_VOLUME * float(np.prod(np.linalg.norm(lat, axis=1))):
            raise fail("lattice is degenerate (zero volume)")
        if (mult < 1).any():
            raise fail(f"multiplicities must be positive, got {mult.tolist()}")
        if not 1 <= int(self.hall_number) <= NUM_HALL_NUMBERS:
            raise fail(f"hall_number {self.hall_number} is outside 1..{NUM_HALL_NUMBERS}")
        object.__setattr__(self, "spacegroup_number", int(self.spacegroup_number))
        object.__setattr__(self, "hall_number", int(self.hall_number))
        object.__setattr__(self, "lattice", _frozen(lat))
        object.__setattr__(self, "atomic_numbers", _frozen(z))
        object.__setattr__(self, "wyckoff_letters", letters)
        object.__setattr__(self, "frac_coords", _frozen(wrap_frac(frac)))
        object.__setattr__(self, "multiplicities", _frozen(mult))
        object.__setattr__(self, "properties", {str(k): float(v) for k, v in dict(self.properties).items()})

    @property
    def num_sites(self) -> int:
        """Number of representative sites S (size of the asymmetric unit)."""
        return int(self.atomic_numbers.shape[0])

    @property
    def num_atoms(self) -> int:
        """Number of atoms in the conventional cell (sum of multiplicities)."""
        return int(self.multiplicities.sum())

    @property
    def wyckoff_labels(self) -> tuple[str, ...]:
        """Multiplicity and letter of each site, e.g. ``("4a", "4b")``."""
        return tuple(f"{m}{w}" for m, w in zip(self.multiplicities.tolist(), self.wyckoff_letters, strict=True))


def _orbit_images(
    frac: np.ndarray,  # [3]
    rotations: np.ndarray,  # [K, 3, 3] int, act on column vectors of fractional coordinates
    translations: np.ndarray,  # [K, 3]
    lattice: np.ndarray,  # [3, 3]
    tolerance: float,
) -> np.ndarray:  # [m, 3]
    """Distinct images of one site under the operations, wrapped to [0, 1) (first image kept).

    Fractional minimum image (``pbc_diff``) finds every pair closer than ``tolerance`` exactly as
    long as ``tolerance`` is below half the smallest lattice-plane spacing (checked by the caller).
    """
    images = wrap_frac(np.einsum("kij,j->ki", rotations, frac) + translations)  # [K, 3]
    diff = pbc_diff(images[:, None, :], images[None, :, :]) @ lattice  # [K, K, 3] Å
    close = np.linalg.norm(diff, axis=-1) <= tolerance  # [K, K]
    kept = np.zeros(len(images), dtype=bool)
    for k in range(len(images)):
        if not (close[k] & kept).any():
            kept[k] = True
    return images[kept]


@dataclass(frozen=True)
class WyckoffRepresentation:
    """Crystal ⇄ ``WyckoffEncoding`` through spglib's standardised conventional cell.

    Lossless up to cell choice and ``symprec``: ``decode(encode(c))`` is the conventional
    standardised cell of ``c`` (same structure, possibly more atoms, positions idealised within
    about ``symprec``). Compare round trips with ``StructureMatcher``.

    Attributes:
        symprec: spglib distance tolerance (Å) used by ``encode``.
        angle_tolerance: spglib angle tolerance (degrees) used by ``encode``.
        merge_tolerance: Cartesian distance (Å, minimum image) within which two images of a site
            are the same atom in ``decode``.
        strict: When True, ``decode`` raises ``CrystalError`` if a site does not regenerate exactly
            its stated multiplicity (coordinates that disagree with the Wyckoff position).

    """

    symprec: float = 0.1
    angle_tolerance: float = 5.0
    merge_tolerance: float = 1e-2
    strict: bool = True

    name: ClassVar[str] = "wyckoff"
    lossless: ClassVar[bool] = True

    def encode(self, crystal: Crystal) -> WyckoffEncoding:
        """Encode ``crystal`` as its space group, conventional lattice and asymmetric unit."""
        ds = _symmetry_dataset(crystal, self.symprec, self.angle_tolerance)
        std_positions = wrap_frac(np.asarray(ds.std_positions, dtype=np.float64))  # [M, 3]
        std_types = np.asarray(ds.std_types, dtype=np.int64)  # [M]
        # input atom standing for each primitive-cell atom, then for each standardised atom
        input_of_primitive: dict[int, int] = {}
        for atom, prim in enumerate(np.asarray(ds.mapping_to_primitive).tolist()):
            input_of_primitive.setdefault(int(prim), atom)
        try:
            input_of_std = np.array(
                [input_of_primitive[int(p)] for p in np.asarray(ds.std_mapping_to_primitive).tolist()], dtype=np.int64
            )  # [M]
        except KeyError as exc:
            raise CrystalError(
                f"spglib's standardised cell refers to unknown primitive atom {exc}", source=crystal.material_id
            ) from None
        orbit_of_std = np.asarray(ds.equivalent_atoms, dtype=np.int64)[input_of_std]  # [M]
        orbits, first_std, counts = np.unique(orbit_of_std, return_index=True, return_counts=True)
        # orbits come sorted by their first input atom, so sites follow the input's atom order
        reps = first_std  # [S] one standardised atom per orbit
        if not np.array_equal(std_types[reps], crystal.atomic_numbers[orbits]):
            raise CrystalError(
                "spglib's standardised cell disagrees with the input's elements", source=crystal.material_id
            )
        return WyckoffEncoding(
            spacegroup_number=int(ds.number),
            hall_number=int(ds.hall_number),
            lattice=np.asarray(ds.std_lattice, dtype=np.float64),
            atomic_numbers=std_types[reps],
            wyckoff_letters=tuple(str(ds.wyckoffs[int(i)]) for i in orbits),
            frac_coords=std_positions[reps],
            multiplicities=counts.astype(np.int64),
            material_id=crystal.material_id,
            properties=crystal.properties,
        )

    def decode(self, encoded: WyckoffEncoding) -> Crystal:
        """Rebuild the conventional standardised cell: every representative site under every operation."""
        source = encoded.material_id
        with _quiet_spglib():
            try:
                sg_type = spglib.get_spacegroup_type(encoded.hall_number)
                ops = spglib.get_symmetry_from_database(encoded.hall_number)
            except spglib.SpglibError as exc:
                raise CrystalError(
                    f"spglib has no operations for Hall number {encoded.hall_number}: {exc}", source=source
                ) from None
        if ops is None or sg_type is None:
            raise CrystalError(f"spglib has no operations for Hall number {encoded.hall_number}", source=source)
        number = int(sg_type.number if hasattr(sg_type, "number") else sg_type["number"])
        if number != encoded.spacegroup_number:
            raise CrystalError(
                f"Hall number {encoded.hall_number} belongs to space group {number}, not {encoded.spacegroup_number}",
                source=source,
            )
        if not 0 <= self.merge_tolerance < 0.5 * float(plane_spacings(encoded.lattice).min()):
            raise CrystalError(
                f"merge_tolerance {self.merge_tolerance} Å must be non-negative and below half the "
                "smallest lattice-plane spacing",
                source=source,
            )
        rotations = np.asarray(ops["rotations"], dtype=np.float64)  # [K, 3, 3]
        translations = np.asarray(ops["translations"], dtype=np.float64)  # [K, 3]
        numbers, coords = [], []
        for site in range(encoded.num_sites):
            images = _orbit_images(
                encoded.frac_coords[site], rotations, translations, encoded.lattice, self.merge_tolerance
            )
            expected = int(encoded.multiplicities[site])
            if self.strict and len(images) != expected:
                raise CrystalError(
                    f"site {site} ({encoded.wyckoff_labels[site]}, Z={int(encoded.atomic_numbers[site])}) generates "
                    f"{len(images)} images, not its multiplicity {expected} (merge_tolerance={self.merge_tolerance} Å)",
                    source=source,
                )
            numbers.append(np.full(len(images), encoded.atomic_numbers[site], dtype=np.int64))
            coords.append(images)
        return Crystal(
            atomic_numbers=np.concatenate(numbers),
            frac_coords=np.concatenate(coords),
            lattice=encoded.lattice,
            properties=encoded.properties,
            material_id=source,
        )
