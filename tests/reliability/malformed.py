"""Malformed structure files for fuzzing the readers and the CLI (tests and ``benchmarks/fuzz_inputs.py``).

Every generator is a function of a ``random.Random``, so an input is reproduced from its seed.
A ``Sample`` is one file (name and bytes) plus what a correct reader must still give from it:
``intact`` lists the labels of records that are unharmed (a reader must return a crystal whose
source is ``f"{path}:{label}"``): the other blocks of a multi-block file in which one block was
broken, or the records wholly before the cut of a truncated file.

Records are written by small emitters of our own that do not validate (``Crystal`` would refuse
a zero cell), then broken at two levels: the structure (zero or negative cell, angles of 0 or
180°, overlapping atoms, unknown elements, partial occupancy, an announced atom count of 10⁶, NaN
coordinates) and the text (truncation, numbers replaced by nan/inf/1e308/-1, lines dropped or
repeated, line endings, random bytes, a wrong extension).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from crystalforge.core.elements import z_to_symbol
from crystalforge.testing import tiny_crystals

BAD_NUMBERS = ("nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-308", "-1", "0", "0.0", "1e999", "1.2.3", "", "x")
UNKNOWN_SYMBOLS = ("Xx", "Zz", "X", "D0", "?", "Uuo", "fe", "Fe2+")
HUGE_COUNT = 10**6
EXTENSIONS = {"cif": ".cif", "poscar": ".vasp", "extxyz": ".extxyz", "text": ".cftxt", "npz": ".npz"}
_NUMBER_TOKEN = re.compile(r"(?<![\w.])[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?(?![\w.])")


@dataclass(frozen=True)
class Sample:
    """One input: the file ``name`` (its suffix picks the format) holding ``data``, or with ``files``
    (relative path, bytes) the folder ``name`` holding them; how it was made; the intact records."""

    name: str
    data: bytes
    mutation: str
    intact: tuple[str, ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()

    def write(self, folder: Path) -> Path:
        """Write the input into ``folder``; return its path (the file, or the folder of ``files``)."""
        path = folder / self.name
        if not self.files:
            path.write_bytes(self.data)
        for relative, data in self.files:
            (path / relative).parent.mkdir(parents=True, exist_ok=True)
            (path / relative).write_bytes(data)
        return path


@dataclass(frozen=True)
class RawRecord:
    """One structure as plain values, written without any validation."""

    name: str
    lengths: tuple[float, float, float]
    angles: tuple[float, float, float]
    symbols: tuple[str, ...]
    frac: tuple[tuple[float, float, float], ...]
    occupancy: tuple[float, ...] = ()
    announced: int | None = None  # the atom count a header states, when it lies
    spacegroup: str = "P 1"


# ---- emitters ---------------------------------------------------------------------------------
def _matrix(rec: RawRecord) -> list[list[float]]:
    """Lattice rows from lengths and angles (a along x, b in xy); impossible values give NaN, not errors."""
    a, b, c = rec.lengths
    al, be, ga = (math.radians(x) for x in rec.angles)
    sin_g = math.sin(ga)
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / sin_g if sin_g else math.nan
    cz2 = c * c - cx * cx - cy * cy
    cz = math.sqrt(cz2) if cz2 >= 0 else math.nan
    return [[a, 0.0, 0.0], [b * math.cos(ga), b * sin_g, 0.0], [cx, cy, cz]]


def _composition(symbols: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    return counts


def to_cif(rec: RawRecord) -> str:
    """A CIF data block (P1 site list, or ``spacegroup`` for pymatgen to expand)."""
    lines = [f"data_{rec.name}", f"_symmetry_space_group_name_H-M '{rec.spacegroup}'"]
    lines += [f"_cell_length_{k} {v!r}" for k, v in zip("abc", rec.lengths, strict=True)]
    lines += [f"_cell_angle_{k} {v!r}" for k, v in zip(("alpha", "beta", "gamma"), rec.angles, strict=True)]
    if rec.spacegroup == "P 1":
        lines += ["loop_", "_symmetry_equiv_pos_as_xyz", "  'x, y, z'"]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol"]
    lines += [f"_atom_site_fract_{k}" for k in "xyz"] + ["_atom_site_occupancy"]
    occ = rec.occupancy or (1.0,) * len(rec.symbols)
    for i, (s, f, o) in enumerate(zip(rec.symbols, rec.frac, occ, strict=True)):
        lines.append(f"  {s}{i} {s} {f[0]!r} {f[1]!r} {f[2]!r} {o!r}")
    return "\n".join(lines) + "\n"


def to_poscar(rec: RawRecord) -> str:
    """A VASP 5 POSCAR (species grouped in runs of equal symbols, as the format needs)."""
    runs: list[list[str | int]] = []
    for s in rec.symbols:
        if runs and runs[-1][0] == s:
            runs[-1][1] = int(runs[-1][1]) + 1
        else:
            runs.append([s, 1])
    if rec.announced is not None and runs:
        runs[0][1] = rec.announced
    lines = [rec.name, "1.0", *(" ".join(repr(x) for x in row) for row in _matrix(rec))]
    lines += [" ".join(str(r[0]) for r in runs), " ".join(str(r[1]) for r in runs), "Direct"]
    lines += [" ".join(repr(x) for x in f) for f in rec.frac]
    return "\n".join(lines) + "\n"


def to_extxyz(rec: RawRecord) -> str:
    """One extxyz frame with Cartesian positions and the name as ``material_id``."""
    m = _matrix(rec)
    lattice = " ".join(repr(x) for row in m for x in row)
    count = len(rec.symbols) if rec.announced is None else rec.announced
    lines = [str(count), f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 material_id={rec.name} pbc="T T T"']
    for s, f in zip(rec.symbols, rec.frac, strict=True):
        cart = [sum(f[i] * m[i][k] for i in range(3)) for k in range(3)]
        lines.append(f"{s} " + " ".join(repr(x) for x in cart))
    return "\n".join(lines) + "\n"


def to_text(rec: RawRecord) -> str:
    """One block of the crystal text format (``io.text``)."""
    counts = _composition(rec.symbols)
    if rec.announced is not None and counts:
        counts[next(iter(counts))] = rec.announced
    lines = ["data_" + "".join(f"{s}{n}" for s, n in counts.items())]
    keys = ("a", "b", "c", "alpha", "beta", "gamma")
    lines += [f"{k} {v!r}" for k, v in zip(keys, rec.lengths + rec.angles, strict=True)]
    lines += [f"{s} " + " ".join(repr(x) for x in f) for s, f in zip(rec.symbols, rec.frac, strict=True)]
    return "\n".join(lines) + "\n"


EMITTERS: dict[str, Callable[[RawRecord], str]] = {
    "cif": to_cif,
    "poscar": to_poscar,
    "extxyz": to_extxyz,
    "text": to_text,
}
SEPARATORS = {"cif": "\n", "extxyz": "", "text": "\n"}
"""Text between two records of a multi-record file (POSCAR holds one structure)."""


@cache
def base_records() -> tuple[RawRecord, ...]:
    """The five ``tiny_crystals`` as raw records."""
    out = []
    for c in tiny_crystals():
        lengths, angles = c.lengths.tolist(), c.angles.tolist()
        out.append(
            RawRecord(
                name=c.material_id or "x",
                lengths=(lengths[0], lengths[1], lengths[2]),
                angles=(angles[0], angles[1], angles[2]),
                symbols=tuple(z_to_symbol(z) for z in c.atomic_numbers.tolist()),
                frac=tuple((f[0], f[1], f[2]) for f in c.frac_coords.tolist()),
            )
        )
    return tuple(out)


# ---- structure-level mutations ----------------------------------------------------------------
def _set_length(rec: RawRecord, rng: random.Random, value: float) -> RawRecord:
    lengths = list(rec.lengths)
    lengths[rng.randrange(3)] = value
    return dataclasses.replace(rec, lengths=(lengths[0], lengths[1], lengths[2]))


def _set_angle(rec: RawRecord, rng: random.Random, value: float) -> RawRecord:
    angles = list(rec.angles)
    angles[rng.randrange(3)] = value
    return dataclasses.replace(rec, angles=(angles[0], angles[1], angles[2]))


def _atoms(rec: RawRecord, symbols: list[str], frac: list[tuple[float, float, float]]) -> RawRecord:
    return dataclasses.replace(rec, symbols=tuple(symbols), frac=tuple(frac), occupancy=())


def _too_many_atoms(rec: RawRecord, rng: random.Random) -> RawRecord:
    """Over 1000 real atoms (the default limit) at a sane density: the count alone is the problem."""
    n = rng.randint(1001, 1400)
    frac = [(rng.random(), rng.random(), rng.random()) for _ in range(n)]
    side = (12.0 * n) ** (1 / 3)
    return dataclasses.replace(_atoms(rec, ["Si"] * n, frac), lengths=(side, side, side), angles=(90.0, 90.0, 90.0))


def _symmetry_blowup(rec: RawRecord, rng: random.Random) -> RawRecord:
    """Twenty general positions in F m -3 m: 3840 atoms after pymatgen expands the 192 operations."""
    frac = [(rng.random(), rng.random(), rng.random()) for _ in range(20)]
    out = dataclasses.replace(_atoms(rec, ["Na"] * 20, frac), lengths=(40.0,) * 3, angles=(90.0,) * 3)
    return dataclasses.replace(out, spacegroup="F m -3 m")


STRUCTURE_MUTATIONS: dict[str, Callable[[RawRecord, random.Random], RawRecord]] = {
    "zero_cell": lambda r, g: dataclasses.replace(r, lengths=(0.0, 0.0, 0.0)),
    "zero_length": lambda r, g: _set_length(r, g, 0.0),
    "negative_length": lambda r, g: _set_length(r, g, -g.uniform(1, 5)),
    "tiny_cell": lambda r, g: dataclasses.replace(r, lengths=(1e-4, 1e-4, 1e-4)),
    "huge_cell": lambda r, g: _set_length(r, g, g.choice((1e308, 1e200, 1e6))),
    "angle_0": lambda r, g: _set_angle(r, g, 0.0),
    "angle_180": lambda r, g: _set_angle(r, g, 180.0),
    "impossible_angles": lambda r, g: dataclasses.replace(r, angles=(10.0, 10.0, 170.0)),
    "flat_cell": lambda r, g: dataclasses.replace(
        r, lengths=(100.0, 100.0, 5e-4 * len(r.symbols)), angles=(90.0,) * 3
    ),  # 5 Å³ per atom, yet each atom is 5e-4 Å from its own image
    "overlapping_atoms": lambda r, g: _atoms(r, [*r.symbols, r.symbols[0]], [*r.frac, r.frac[0]]),
    "unknown_element": lambda r, g: _atoms(r, [g.choice(UNKNOWN_SYMBOLS), *r.symbols[1:]], list(r.frac)),
    "partial_occupancy": lambda r, g: dataclasses.replace(
        r, occupancy=(g.choice((0.5, 0.0, 1.5, -1.0)),) + (1.0,) * (len(r.symbols) - 1)
    ),
    "nan_coordinate": lambda r, g: _atoms(r, list(r.symbols), [(math.nan, 0.1, math.inf), *r.frac[1:]]),
    "no_atoms": lambda r, g: _atoms(r, [], []),
    "announced_huge_count": lambda r, g: dataclasses.replace(r, announced=HUGE_COUNT),
    "announced_wrong_count": lambda r, g: dataclasses.replace(r, announced=g.choice((-1, 0, len(r.symbols) + 1))),
    "too_many_atoms": _too_many_atoms,
    "symmetry_blowup": _symmetry_blowup,
}


# ---- text-level mutations ---------------------------------------------------------------------
def truncate(text: str, rng: random.Random) -> str:
    """The text cut at a random character."""
    return text[: rng.randrange(len(text) + 1)]


def bad_numbers(text: str, rng: random.Random) -> str:
    """One to three number tokens replaced by nan, inf, 1e308, -1, garbage or nothing."""
    spans = [m.span() for m in _NUMBER_TOKEN.finditer(text)]
    for start, end in sorted(rng.sample(spans, min(len(spans), rng.randint(1, 3))), reverse=True):
        text = text[:start] + rng.choice(BAD_NUMBERS) + text[end:]
    return text


def _lines(text: str, rng: random.Random, edit: Callable[[list[str], int], object]) -> str:
    lines = text.split("\n")
    edit(lines, rng.randrange(len(lines)))
    return "\n".join(lines)


TEXT_MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "truncate": truncate,
    "bad_numbers": bad_numbers,
    "drop_line": lambda t, g: _lines(t, g, lambda ls, i: ls.pop(i)),
    "repeat_line": lambda t, g: _lines(t, g, lambda ls, i: ls.insert(i, ls[i])),
    "garbage_line": lambda t, g: _lines(t, g, lambda ls, i: ls.insert(i, g.choice(("loop_", "_", "'", ";", "data_")))),
    "crlf": lambda t, g: t.replace("\n", "\r\n"),
    "cr_only": lambda t, g: t.replace("\n", "\r"),
    "bom_and_tabs": lambda t, g: "\ufeff" + t.replace(" ", "\t"),
    "whitespace_only": lambda t, g: " \n\t\n" * g.randint(1, 5),
}


def random_bytes(rng: random.Random) -> bytes:
    """Binary garbage (sometimes starting like a zip or an npy file)."""
    head = rng.choice((b"", b"PK\x03\x04", b"\x93NUMPY", b"SQLite format 3\x00", b"data_", b"3\n"))
    return head + rng.randbytes(rng.randint(0, 2000))


def splice_bytes(data: bytes, rng: random.Random) -> bytes:
    """Random bytes (NULs and invalid UTF-8 included) inserted at a random place."""
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


# ---- the corpus of real files -----------------------------------------------------------------
STRUCTURE_FILE = re.compile(r"(?i).*\.(cif|vasp|xyz|extxyz)$|^(POSCAR|CONTCAR).*")


@cache
def corpus_files() -> tuple[Path, ...]:
    """Structure files shipped inside installed packages (pymatgen's, ASE's test data and others), sorted."""
    root = sysconfig.get_paths()["purelib"]
    found = []
    for folder, _dirs, files in os.walk(root):
        found += [Path(folder) / f for f in files if STRUCTURE_FILE.match(f)]
    return tuple(sorted(found))
