r"""A plain-text crystal format (``CrystalText``): one item per line, lossless at a stated precision.

The text format (our own, in the spirit of CrystaLLM's reduced CIF) is one item per line::

    data_Sr1Ti1O3
    sg 221
    a 3.905
    b 3.905
    c 3.905
    alpha 90.00
    beta 90.00
    gamma 90.00
    Sr 0.0000 0.0000 0.0000
    Ti 0.5000 0.5000 0.5000
    O 0.5000 0.5000 0.0000
    O 0.5000 0.0000 0.5000
    O 0.0000 0.5000 0.5000

* ``data_`` followed by the cell composition: element symbol and count, in order of first
  appearance in the site list (always with the count, also when it is 1).
* ``sg N``: the international space-group number found by spglib at ``symprec``; written only
  when ``include_spacegroup=True``. On decoding it is checked to be a number in 1..230 and
  otherwise ignored (the sites always list the full cell).
* ``a``, ``b``, ``c`` (Å, ``length_decimals`` decimals) and ``alpha``, ``beta``, ``gamma``
  (degrees, ``angle_decimals`` decimals), in this order.
* one line per site, in the crystal's atom order: symbol and fractional coordinates with
  ``coord_decimals`` decimals, printed in [0, 1) (a value that rounds up to 1 is printed as 0).

Fields are separated by one space and every line, the last included, ends with ``\n``.
Decoding splits on any whitespace and skips blank lines; line numbers in errors count from 1.
The decoded lattice is built by ``lattice_from_params`` (standard orientation: a along x, b in
the xy plane), so a round trip keeps the metric tensor ``L Lᵀ`` and the lattice parameters, not
the Cartesian frame.

Precision: at the default settings a round trip reproduces lengths within 5e-4 Å, angles within
5e-3° and fractional coordinates within 5e-5 (periodically), the rounding of the printed
values. Encoding a decoded crystal again gives the same text (the format is idempotent); only the
``sg`` line is recomputed from the rounded structure and can differ for a structure whose
symmetry is borderline at ``symprec``.

Files of this format (``.txt``, ``.cftxt``) hold one block per crystal separated by blank lines
(``split_blocks``; a line of spaces is blank too);
``crystalforge.io.files`` reads and writes them like any other structure format. The tokenizer
over this text lives in ``crystalforge.representations.tokens``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import numpy as np

from crystalforge.core.crystal import MIN_RELATIVE_VOLUME, Crystal
from crystalforge.core.elements import element_table, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.core.lattice import lattice_from_params, lattice_to_params

HEADER_PREFIX = "data_"
SPACEGROUP_KEY = "sg"
LENGTH_KEYS = ("a", "b", "c")
ANGLE_KEYS = ("alpha", "beta", "gamma")
LATTICE_KEYS = LENGTH_KEYS + ANGLE_KEYS

_HEADER_ITEM = re.compile(r"([A-Z][a-z]?)([0-9]{1,9})")  # a count of 10 digits is no crystal
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def header_line(composition: Mapping[str, int]) -> str:
    """The header line (no newline) of a cell composition ``{symbol: count}``, in its order."""
    return HEADER_PREFIX + "".join(f"{s}{n}" for s, n in composition.items())


def _element_z(symbol: str) -> int | None:
    """Atomic number of an exactly spelled element symbol (``"Fe"``, not ``"fe"`` or ``"Fe2+"``), or None."""
    try:
        return element_table().z_of(symbol)
    except KeyError:
        return None


@dataclass(frozen=True)
class CrystalText:
    """Crystal ⇄ text in the line format described in the module docstring.

    Args:
        length_decimals: Decimals of the lattice lengths (Å).
        angle_decimals: Decimals of the lattice angles (degrees).
        coord_decimals: Decimals of the fractional coordinates.
        include_spacegroup: Write an ``sg`` line (needs spglib).
        symprec: spglib symmetry tolerance in Å for the ``sg`` line.

    """

    name: ClassVar[str] = "text"
    lossless: ClassVar[bool] = True

    length_decimals: int = 3
    angle_decimals: int = 2
    coord_decimals: int = 4
    include_spacegroup: bool = False
    symprec: float = 0.1

    def __post_init__(self) -> None:
        for field_name in ("length_decimals", "angle_decimals", "coord_decimals"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 12:
                raise ValueError(f"{field_name} must be an integer in 0..12, got {value!r}")
        if not self.symprec > 0:
            raise ValueError(f"symprec must be positive, got {self.symprec!r}")

    @property
    def tolerance(self) -> dict[str, float]:
        """Largest rounding error of a round trip: ``length`` (Å), ``angle`` (°), ``frac``."""
        return {
            "length": 0.5 * 10.0**-self.length_decimals,
            "angle": 0.5 * 10.0**-self.angle_decimals,
            "frac": 0.5 * 10.0**-self.coord_decimals,
        }

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, crystal: Crystal) -> str:
        """Write one crystal as text (ends with a newline)."""
        lengths, angles = lattice_to_params(crystal.lattice)
        lines = [header_line(crystal.composition)]
        if self.include_spacegroup:
            lines.append(f"{SPACEGROUP_KEY} {self.spacegroup_number(crystal)}")
        lines += [f"{k} {v:.{self.length_decimals}f}" for k, v in zip(LENGTH_KEYS, lengths.tolist(), strict=True)]
        lines += [f"{k} {v:.{self.angle_decimals}f}" for k, v in zip(ANGLE_KEYS, angles.tolist(), strict=True)]
        for z, frac in zip(crystal.atomic_numbers.tolist(), crystal.frac_coords.tolist(), strict=True):
            lines.append(" ".join([z_to_symbol(z), *(self._format_coord(x) for x in frac)]))
        return "\n".join(lines) + "\n"

    def _format_coord(self, value: float) -> str:
        text = f"{value:.{self.coord_decimals}f}"
        if float(text) >= 1.0 or float(text) <= 0.0:  # 0.99996 → "1.0000" → "0.0000"; no "-0.0000"
            text = f"{0.0:.{self.coord_decimals}f}"
        return text

    def spacegroup_number(self, crystal: Crystal) -> int:
        """International space-group number (1..230) found by spglib at ``symprec`` (spglib's angle tolerance)."""
        import spglib

        # spglib's alias names nested sequences, but it reads its input with np.asarray: arrays are fine
        cell = cast(spglib.SpgCell, (crystal.lattice, crystal.frac_coords, crystal.atomic_numbers))
        dataset = spglib.get_symmetry_dataset(cell, symprec=self.symprec, angle_tolerance=-1.0)
        if dataset is None:
            raise CrystalError(f"spglib found no space group at symprec={self.symprec}", source=crystal.material_id)
        return int(dataset.number)

    # ---- decoding -------------------------------------------------------------------------
    def decode(self, encoded: str, *, source: str | None = None, first_line: int = 1) -> Crystal:
        """Read a crystal from its text; malformed text raises ``CrystalError`` naming the line and the problem.

        Args:
            encoded: Text in the line format.
            source: Where the text came from, used in error messages and as ``material_id``.
            first_line: The number of the text's first line in error messages (a block of a file
                names the file's line).

        """
        lines = [(i, line.split()) for i, line in enumerate(encoded.splitlines(), start=first_line) if line.strip()]
        if not lines:
            raise _error(None, "empty text: no header, lattice or sites", source)
        last_line = lines[-1][0]
        header_no, header = lines[0]
        if len(header) != 1 or not header[0].startswith(HEADER_PREFIX):
            raise _error(header_no, f"expected the header 'data_<composition>', got {' '.join(header)!r}", source)
        composition = _parse_header(header[0], header_no, source)
        pos = 1

        if pos < len(lines) and lines[pos][1][0] == SPACEGROUP_KEY:
            line_no, fields = lines[pos]
            number = _parse_keyed_number(fields, SPACEGROUP_KEY, line_no, source)
            if number != int(number) or not 1 <= number <= 230:
                raise _error(line_no, f"space group number must be an integer in 1..230, got {fields[1]!r}", source)
            pos += 1

        values: list[float] = []
        lattice_lines: list[int] = []
        for key in LATTICE_KEYS:
            if pos >= len(lines):
                raise _error(None, f"missing lattice line {key!r} (text ends after line {last_line})", source)
            line_no, fields = lines[pos]
            if fields[0] != key:
                raise _error(line_no, f"missing lattice line {key!r}: found {' '.join(fields)!r}", source)
            values.append(_parse_keyed_number(fields, key, line_no, source))
            lattice_lines.append(line_no)
            pos += 1
        lattice = _build_lattice(np.array(values[:3]), np.array(values[3:]), lattice_lines, source)

        atomic_numbers: list[int] = []
        frac_coords: list[list[float]] = []
        for line_no, fields in lines[pos:]:
            z = _element_z(fields[0])
            if z is None:
                raise _error(line_no, f"unknown element symbol {fields[0]!r}", source)
            if len(fields) != 4:
                problem = f"a site line is 'Symbol x y z', got {len(fields)} fields: {' '.join(fields)!r}"
                raise _error(line_no, problem, source)
            frac_coords.append([_parse_float(text, line_no, source) for text in fields[1:]])
            atomic_numbers.append(z)
        if not atomic_numbers:
            raise _error(None, f"no sites after the lattice lines (text ends after line {last_line})", source)

        counts: dict[str, int] = {}
        for z in atomic_numbers:
            counts[z_to_symbol(z)] = counts.get(z_to_symbol(z), 0) + 1
        if counts != composition:
            raise _error(header_no, f"header composition {composition} does not match the sites {counts}", source)
        return Crystal(np.array(atomic_numbers), np.array(frac_coords), lattice, material_id=source)


def split_blocks(text: str) -> list[tuple[int, str]]:
    """The blocks of a file of this format (runs of non-blank lines): ``(first line number, block text)``."""
    blocks: list[tuple[int, list[str]]] = []
    after_blank = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            after_blank = True
        elif after_blank:
            blocks.append((number, [line]))
            after_blank = False
        else:
            blocks[-1][1].append(line)
    return [(first, "\n".join(lines)) for first, lines in blocks]


def _error(line_no: int | None, problem: str, source: str | None) -> CrystalError:
    """Make a ``CrystalError`` whose problem starts with the line number (when there is one)."""
    return CrystalError(f"line {line_no}: {problem}" if line_no is not None else problem, source=source)


def _parse_header(text: str, line_no: int, source: str | None) -> dict[str, int]:
    body = text[len(HEADER_PREFIX) :]
    composition: dict[str, int] = {}
    end = 0
    for match in _HEADER_ITEM.finditer(body):
        if match.start() != end:
            break
        symbol, count = match.group(1), int(match.group(2))
        if _element_z(symbol) is None:
            raise _error(line_no, f"unknown element symbol {symbol!r} in the header", source)
        if count < 1 or symbol in composition:
            raise _error(line_no, f"bad header item {match.group(0)!r} (zero count or repeated element)", source)
        composition[symbol] = count
        end = match.end()
    if end != len(body) or not composition:
        raise _error(line_no, f"cannot read the composition in header {text!r} (expected e.g. 'data_Sr1Ti1O3')", source)
    return composition


def _parse_keyed_number(fields: list[str], key: str, line_no: int, source: str | None) -> float:
    if len(fields) != 2:
        raise _error(line_no, f"expected '{key} <number>', got {' '.join(fields)!r}", source)
    return _parse_float(fields[1], line_no, source)


def _parse_float(text: str, line_no: int, source: str | None) -> float:
    value = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise _error(line_no, f"bad number {text!r}", source)
    return value


def _build_lattice(lengths: np.ndarray, angles: np.ndarray, lattice_lines: list[int], source: str | None) -> np.ndarray:
    """Lattice ``[3, 3]`` from lengths ``[3]`` and angles ``[3]`` read on ``lattice_lines``."""
    for key, value, line_no in zip(LENGTH_KEYS, lengths.tolist(), lattice_lines[:3], strict=True):
        if value <= 0:
            raise _error(line_no, f"lattice length {key} must be positive, got {value}", source)
    for key, value, line_no in zip(ANGLE_KEYS, angles.tolist(), lattice_lines[3:], strict=True):
        if not 0 < value < 180:
            raise _error(line_no, f"lattice angle {key} must be in (0, 180) degrees, got {value}", source)
    problem = (
        f"lattice angles alpha={angles[0]}, beta={angles[1]}, gamma={angles[2]} (lines {lattice_lines[3]}-"
        f"{lattice_lines[5]}) do not form a cell"
    )
    try:
        lattice = lattice_from_params(lengths, angles)
    except ValueError:
        raise _error(lattice_lines[5], problem, source) from None
    if abs(float(np.linalg.det(lattice))) <= MIN_RELATIVE_VOLUME * float(np.prod(lengths)):
        raise _error(lattice_lines[5], problem, source)
    return lattice
