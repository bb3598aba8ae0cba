"""Read and write structure files: CIF, POSCAR, extxyz, the crystal text format and our ``.npz`` archive.

Reading yields ``Candidate``s (a crystal, or the reason a record gave none) so batch jobs can skip
a bad structure, say which file (and which block or frame) it was and why, and go on.
``read_structures`` is the simple list-returning API. Every writer writes atomically.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.core.limits import StructureLimits
from crystalforge.io.archive import CrystalArrays, archive_records
from crystalforge.io.atomic import atomic_write
from crystalforge.io.extxyz import split_frames

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms

log = logging.getLogger(__name__)

FORMATS = ("cif", "poscar", "extxyz", "npz", "text")
_SUFFIXES = {
    ".txt": "text",
    ".cftxt": "text",
    ".cif": "cif",
    ".vasp": "poscar",
    ".poscar": "poscar",
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
    ".npz": "npz",
}
_POSCAR_NAMES = ("POSCAR", "CONTCAR")
DEFAULT_SYMPREC = 0.1
"""spglib distance tolerance (Å) for symmetrised CIF output, as pymatgen's default."""


def detect_format(path: str | Path) -> str:
    """Format name from a file name; raises ``ValueError`` for an unknown one."""
    p = Path(path)
    if p.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[p.suffix.lower()]
    if any(p.name.upper().startswith(n) for n in _POSCAR_NAMES):
        return "poscar"
    raise ValueError(f"{path}: cannot tell the format from the name (known: {', '.join(FORMATS)}; or pass fmt=)")


FOLDER_SKIPPED_SUFFIXES = (".txt",)
"""Read as crystal text only when named as a file (a folder's ``.txt`` files are usually notes)."""


def structure_files(folder: Path) -> list[Path]:
    """Files in ``folder`` (recursively, sorted) whose names have a known structure format.

    ``.txt`` files are skipped (name the file, use ``.cftxt``, or pass ``fmt="text"`` to read one).
    """
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in FOLDER_SKIPPED_SUFFIXES:
            try:
                detect_format(p)
            except ValueError:
                continue
            out.append(p)
    return out


def iter_records(path: str | Path, *, fmt: str | None = None) -> Iterator[Candidate]:
    """Every structure in a file or folder, as ``Candidate``s (errors are records, not exceptions).

    A record over the resource limits (``core.limits``: atom count, cell size, volume per atom) is
    an error record too; an atom count stated in a header is checked before the atoms are parsed.
    A missing path, an empty folder or a folder with no structure files raises
    ``FileNotFoundError``/``CrystalError`` at once: there is nothing to skip to.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    limits = StructureLimits.from_env()
    if p.is_dir():
        files = structure_files(p)
        if not files:
            raise CrystalError(
                f"folder holds no structure files ({', '.join(sorted(set(_SUFFIXES)))}, POSCAR)", source=str(p)
            )
        for f in files:
            yield from _file_records(f, detect_format(f), limits)
        return
    yield from _file_records(p, fmt or detect_format(p), limits)


def _file_records(path: Path, fmt: str, limits: StructureLimits) -> Iterator[Candidate]:
    try:
        if path.stat().st_size == 0:
            yield Candidate(str(path), error="file is empty")
            return
        if fmt == "npz":
            yield from archive_records(path, limits)
            return
        text = path.read_text(errors="replace")
        if not text.strip():
            yield Candidate(str(path), error="file is empty")
            return
        reader = {"cif": _cif_records, "poscar": _poscar_records, "extxyz": _extxyz_records, "text": _text_records}
        if fmt not in reader:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        yield from reader[fmt](path, text, limits)
    except (OSError, ValueError) as exc:
        yield Candidate(str(path), error=str(exc).removeprefix(f"{path}: "))


def _checked(source: str, crystal: Crystal, limits: StructureLimits, material_id: str | None = None) -> Candidate:
    """The record of a parsed crystal: the crystal, or an error when it is over ``limits``."""
    problem = limits.problem(crystal)
    if problem is not None:
        return Candidate(source, error=problem, material_id=material_id or crystal.material_id)
    return Candidate(source, crystal=crystal, material_id=material_id)


def _text_records(path: Path, text: str, limits: StructureLimits) -> Iterator[Candidate]:
    """One record per block of the crystal text format (``io.text``), its errors naming the file's lines."""
    from crystalforge.io.text import CrystalText, split_blocks

    codec = CrystalText()
    for i, (first, block) in enumerate(split_blocks(text)):
        try:
            yield _checked(f"{path}:{i}", codec.decode(block, first_line=first), limits)
        except CrystalError as exc:
            yield Candidate(f"{path}:{i}", error=exc.problem)


_CIF_BLOCK_START = re.compile(r"^\s*data_", re.MULTILINE)  # pymatgen's rule (CifFile.from_str)


def _cif_blocks(text: str) -> list[tuple[str, str]]:
    """``(name, text)`` of each ``data_`` block, cut here so that one malformed block spoils only itself."""
    starts = [m.start() for m in _CIF_BLOCK_START.finditer(text)]
    blocks = []
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        block = text[start:end].lstrip()
        header = block.split(None, 1)[0]
        if "powder_pattern" not in block.split("\n", 1)[0]:  # pymatgen skips these: no structure in them
            blocks.append((header[len("data_") :], block))
    return blocks


def _cif_records(path: Path, text: str, limits: StructureLimits) -> Iterator[Candidate]:
    """One record per data block; a block's source is ``path:name`` (``path`` for a one-block file)."""
    blocks = _cif_blocks(text)
    if not blocks:
        yield Candidate(str(path), error="malformed CIF: no data_ block found")
        return
    names = Counter(name for name, _ in blocks)
    for i, (name, block) in enumerate(blocks):
        label = name if name and names[name] == 1 else f"{name or 'block'}#{i}"
        source = str(path) if len(blocks) == 1 else f"{path}:{label}"
        ident = path.stem if len(blocks) == 1 else f"{path.stem}:{label}"
        yield _parse_cif_block(block, source, ident, limits)


def cif_to_crystal(text: str, *, material_id: str | None = None, source: str | None = None) -> Crystal:
    """Parse one CIF data block; raises ``CrystalError`` naming ``source`` (or ``material_id``)."""
    record = _parse_cif_block(text, source or material_id or "<cif>", material_id, StructureLimits.from_env())
    if record.crystal is None:
        raise CrystalError(record.error or "unreadable CIF", source=record.source)
    return record.crystal


_CIF_SITE_KEYS = ("_atom_site_label", "_atom_site_fract_x", "_atom_site_Cartn_x")
_CIF_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
MAX_SITE_SYMMETRY = 48
"""Order of the largest crystallographic point group: a site has at least ``operations / 48`` images."""


def _cif_count_problem(text: str, limits: StructureLimits) -> str | None:
    """Over the limit before expansion: the listed sites, or their fewest images under listed operations."""
    from pymatgen.io.cif import CifBlock

    data = CifBlock.from_str(text).data

    def rows(keys: tuple[str, ...]) -> int:
        return max((len(v) if isinstance(v, list) else 1 for k in keys if (v := data.get(k)) is not None), default=1)

    sites, operations = rows(_CIF_SITE_KEYS), rows(_CIF_SYMOP_KEYS)
    return limits.count_problem(max(sites, -(-sites * operations // MAX_SITE_SYMMETRY)))


def _parse_cif_block(text: str, source: str, ident: str | None, limits: StructureLimits) -> Candidate:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            problem = _cif_count_problem(text, limits)
            if problem is not None:
                return Candidate(source, error=problem, material_id=ident)
            structures = CifParser.from_str(text, occupancy_tolerance=1.0).parse_structures(
                primitive=False, on_error="raise"
            )
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on malformed text
            detail = "; ".join(str(w.message) for w in caught[:2])
            return Candidate(source, error=f"malformed CIF: {exc}" + (f" ({detail})" if detail else ""))
    if not structures:
        detail = "; ".join(str(w.message) for w in caught[:2])
        return Candidate(source, error=f"malformed CIF: no structure could be built{': ' + detail if detail else ''}")
    try:
        return _checked(source, Crystal.from_pymatgen(structures[0], material_id=ident), limits)
    except CrystalError as exc:
        return Candidate(source, error=exc.problem)


def _poscar_count(text: str) -> int | None:
    """The atom count on a POSCAR's counts line (line 6, or 7 after a symbols line), if it reads as one."""
    lines = text.splitlines()
    for line in lines[5:7]:
        fields = line.split()
        if fields and all(f.isascii() and f.isdigit() for f in fields):
            return sum(int(f) for f in fields)
    return None


def _poscar_records(path: Path, text: str, limits: StructureLimits) -> Iterator[Candidate]:
    from pymatgen.io.vasp import Poscar

    ident = path.stem if path.suffix else path.name
    problem = limits.count_problem(_poscar_count(text) or 0)
    if problem is not None:
        yield Candidate(str(path), error=problem, material_id=ident)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about each odd line; the record says why
            structure = Poscar.from_str(text).structure
        yield _checked(str(path), Crystal.from_pymatgen(structure, material_id=ident), limits)
    except CrystalError as exc:
        yield Candidate(str(path), error=exc.problem)
    except Exception as exc:  # noqa: BLE001
        yield Candidate(str(path), error=f"malformed POSCAR: {exc}")


def _extxyz_records(path: Path, text: str, limits: StructureLimits) -> Iterator[Candidate]:
    """One record per frame (``io.extxyz``): a bad frame is an error record, the other frames still parse."""
    from ase.io import read

    frames = split_frames(text, count_problem=limits.count_problem)
    if not frames:
        yield Candidate(str(path), error="malformed extxyz: no frame found (first line must be the atom count)")
        return
    for i, frame in enumerate(frames):
        source = f"{path}:{i}"
        ident = frame.material_id or (path.stem if len(frames) == 1 else f"{path.stem}:{i}")
        where = f"malformed extxyz frame {i} (line {frame.line})"
        if frame.problem is not None:
            yield Candidate(source, error=f"{where}: {frame.problem}", material_id=ident)
            continue
        try:
            # an integer index reads one frame: an Atoms, never the list ASE's annotation allows
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = cast("Atoms", read(io.StringIO(frame.text), index=0, format="extxyz"))
            yield _checked(source, Crystal.from_ase(atoms, material_id=ident), limits, ident)
        except CrystalError as exc:
            yield Candidate(source, error=exc.problem, material_id=ident)
        except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed text
            yield Candidate(source, error=f"{where}: {exc}", material_id=ident)


def read_structures(path: str | Path, *, fmt: str | None = None, skip_bad: bool = False) -> list[Crystal]:
    """All crystals in a file or folder (CIF, POSCAR, extxyz, npz, crystal text).

    With ``skip_bad=False`` the first bad record raises ``CrystalError`` naming it; with
    ``skip_bad=True`` bad records are logged as warnings and left out (use ``iter_records`` to
    collect them).
    """
    return collect_crystals(iter_records(path, fmt=fmt), skip_bad=skip_bad)


def collect_crystals(records: Iterable[Candidate], *, skip_bad: bool = False) -> list[Crystal]:
    """The crystals of ``records``; a bad record raises ``CrystalError`` unless ``skip_bad`` (then it is logged)."""
    out = []
    for record in records:
        if record.crystal is not None:
            out.append(record.crystal)
        elif skip_bad:
            log.warning("skipped %s: %s", record.source, record.error)
        else:
            raise CrystalError(record.error or "unreadable", source=record.source)
    return out


def write_structures(
    crystals: Iterable[Crystal],
    path: str | Path,
    *,
    fmt: str | None = None,
    symmetrize: bool = False,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = 5.0,
) -> Path:
    """Write crystals to one file (atomically): CIF (P1, or symmetrised via spglib), POSCAR, extxyz, text or npz.

    POSCAR holds one structure; CIF holds one data block per crystal. ``symmetrize`` (CIF only)
    writes the conventional standard cell with symmetry operations found at ``symprec`` (Å) and
    ``angle_tolerance`` (degrees).
    """
    items: Sequence[Crystal] = list(crystals)
    target = Path(path)
    kind = fmt or detect_format(target)
    if not items:
        raise ValueError(f"{target}: nothing to write (no crystals)")
    if symmetrize and kind != "cif":
        raise ValueError("symmetrize=True is only meaningful for CIF output")
    if symmetrize and not (0 < symprec < math.inf and 0 <= angle_tolerance < math.inf):  # spglib loops on symprec<0
        raise ValueError(
            f"symprec must be a finite number above 0, got {symprec}; angle_tolerance >= 0, got {angle_tolerance}"
        )
    if kind == "npz":
        CrystalArrays.from_crystals(items).save(target)
        return target
    if kind == "cif":
        text = "".join(
            crystal_to_cif(c, symmetrize=symmetrize, symprec=symprec, angle_tolerance=angle_tolerance, index=i)
            for i, c in enumerate(items)
        )
    elif kind == "poscar":
        if len(items) != 1:
            raise ValueError(
                f"{target}: POSCAR holds one structure, got {len(items)} (write a folder of files instead)"
            )
        from pymatgen.io.vasp import Poscar

        text = Poscar(items[0].to_pymatgen(), comment=items[0].material_id or items[0].formula).get_str()
    elif kind == "text":
        from crystalforge.io.text import CrystalText

        codec = CrystalText()
        text = "\n\n".join(codec.encode(c).rstrip("\n") for c in items) + "\n"
    elif kind == "extxyz":
        from ase.io import write

        buffer = io.StringIO()
        write(buffer, [c.to_ase() for c in items], format="extxyz")
        text = buffer.getvalue()
    else:
        raise ValueError(f"unknown format {kind!r} (known: {', '.join(FORMATS)})")
    with atomic_write(target, "w") as handle:
        handle.write(text)
    return target


def crystal_to_cif(
    crystal: Crystal,
    *,
    symmetrize: bool = False,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = 5.0,
    index: int = 0,
) -> str:
    """One CIF data block; P1 by default, or symmetrised (spglib via pymatgen's ``CifWriter``)."""
    from pymatgen.io.cif import CifWriter

    structure = crystal.to_pymatgen()
    name = crystal.material_id or f"{crystal.formula}_{index}"
    try:
        writer = (
            CifWriter(structure, symprec=symprec, angle_tolerance=angle_tolerance)
            if symmetrize
            else CifWriter(structure)
        )
    except Exception as exc:  # noqa: BLE001 - spglib and pymatgen fail in many ways on odd cells
        raise CrystalError(f"cannot symmetrize at symprec={symprec} Å: {exc}", source=name) from None
    text = str(writer)
    safe = "".join(ch if ch.isalnum() or ch in "-_.:" else "_" for ch in name)
    lines = text.splitlines()
    if lines and lines[0].startswith("data_"):
        lines[0] = f"data_{safe}"
    return "\n".join(lines) + "\n"
