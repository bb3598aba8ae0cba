"""Read and write structure files: CIF, POSCAR, extxyz, the crystal text format and our ``.npz`` archive.

Reading yields ``Candidate``s (a crystal, or the reason a record gave none) so batch jobs can skip
a bad structure, say which file (and which block or frame) it was and why, and go on.
``read_structures`` is the simple list-returning API. Every writer writes atomically.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.io.archive import CrystalArrays
from crystalforge.io.atomic import atomic_write

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
    """Every structure in a file or folder, as ``Record``s (errors are records, not exceptions).

    A missing path, an empty folder or a folder with no structure files raises
    ``FileNotFoundError``/``CrystalError`` at once: there is nothing to skip to.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        files = structure_files(p)
        if not files:
            raise CrystalError(
                f"folder holds no structure files ({', '.join(sorted(set(_SUFFIXES)))}, POSCAR)", source=str(p)
            )
        for f in files:
            yield from _file_records(f, detect_format(f))
        return
    yield from _file_records(p, fmt or detect_format(p))


def _file_records(path: Path, fmt: str) -> Iterator[Candidate]:
    try:
        if path.stat().st_size == 0:
            yield Candidate(str(path), error="file is empty")
            return
        if fmt == "npz":
            arrays = CrystalArrays.load(path)
            yield from (Candidate(f"{path}:{i}", crystal=c) for i, c in enumerate(arrays))
            return
        text = path.read_text(errors="replace")
        if not text.strip():
            yield Candidate(str(path), error="file is empty")
            return
        reader = {
            "cif": _cif_records,
            "poscar": _poscar_records,
            "extxyz": _extxyz_records,
            "text": _text_records,
        }.get(fmt)
        if reader is None:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        yield from reader(path, text)
    except (OSError, ValueError) as exc:
        yield Candidate(str(path), error=str(exc).removeprefix(f"{path}: "))


def _text_records(path: Path, text: str) -> Iterator[Candidate]:
    """One candidate per blank-line-separated block of the crystal text format (``io.text``)."""
    from crystalforge.io.text import CrystalText

    codec = CrystalText()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    for i, block in enumerate(blocks):
        try:
            yield Candidate(f"{path}:{i}", crystal=codec.decode(block))
        except CrystalError as exc:
            yield Candidate(f"{path}:{i}", error=exc.problem)


def _cif_records(path: Path, text: str) -> Iterator[Candidate]:
    from pymatgen.io.cif import CifFile

    try:
        blocks = list(CifFile.from_str(text).data.items())
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on malformed text
        yield Candidate(str(path), error=f"malformed CIF: {exc}")
        return
    if not blocks:
        yield Candidate(str(path), error="malformed CIF: no data_ block found")
        return
    for name, block in blocks:
        source = str(path) if len(blocks) == 1 else f"{path}:{name}"
        ident = path.stem if len(blocks) == 1 else f"{path.stem}:{name}"
        yield _parse_cif_block(str(block), source, ident)


def cif_to_crystal(text: str, *, material_id: str | None = None, source: str | None = None) -> Crystal:
    """Parse one CIF data block; raises ``CrystalError`` naming ``source`` (or ``material_id``)."""
    record = _parse_cif_block(text, source or material_id or "<cif>", material_id)
    if record.crystal is None:
        raise CrystalError(record.error or "unreadable CIF", source=record.source)
    return record.crystal


def _parse_cif_block(text: str, source: str, ident: str | None) -> Candidate:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text, occupancy_tolerance=1.0).parse_structures(
                primitive=False, on_error="raise"
            )
        except Exception as exc:  # noqa: BLE001
            detail = "; ".join(str(w.message) for w in caught[:2])
            return Candidate(source, error=f"malformed CIF: {exc}" + (f" ({detail})" if detail else ""))
    if not structures:
        detail = "; ".join(str(w.message) for w in caught[:2])
        return Candidate(source, error=f"malformed CIF: no structure could be built{': ' + detail if detail else ''}")
    try:
        return Candidate(source, crystal=Crystal.from_pymatgen(structures[0], material_id=ident))
    except CrystalError as exc:
        return Candidate(source, error=exc.problem)


def _poscar_records(path: Path, text: str) -> Iterator[Candidate]:
    from pymatgen.io.vasp import Poscar

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text).structure
        yield Candidate(
            str(path), crystal=Crystal.from_pymatgen(structure, material_id=path.stem if path.suffix else path.name)
        )
    except CrystalError as exc:
        yield Candidate(str(path), error=exc.problem)
    except Exception as exc:  # noqa: BLE001
        yield Candidate(str(path), error=f"malformed POSCAR: {exc}")


def _extxyz_records(path: Path, text: str) -> Iterator[Candidate]:
    """One record per frame: a bad frame is an error record, the other frames still parse."""
    from ase.io import read

    frames = _extxyz_frames(text)
    if not frames:
        yield Candidate(str(path), error="malformed extxyz: no frame found (first line must be the atom count)")
        return
    for i, (frame, problem) in enumerate(frames):
        source = f"{path}:{i}"
        # the id as written in the comment line: ASE reads values such as "3961_0" as numbers
        # (int("3961_0") == 39610), so atoms.info is not used for it
        ident = _extxyz_material_id(frame) or (path.stem if len(frames) == 1 else f"{path.stem}:{i}")
        if problem is not None:
            yield Candidate(source, error=f"malformed extxyz frame {i}: {problem}", material_id=ident)
            continue
        try:
            # an integer index reads one frame: an Atoms, never the list ASE's annotation allows
            atoms = cast("Atoms", read(io.StringIO(frame), index=0, format="extxyz"))
        except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed text
            yield Candidate(source, error=f"malformed extxyz frame {i}: {exc}", material_id=ident)
            continue
        try:
            yield Candidate(source, crystal=Crystal.from_ase(atoms, material_id=ident), material_id=ident)
        except CrystalError as exc:
            yield Candidate(source, error=exc.problem, material_id=ident)


def _extxyz_frames(text: str) -> list[tuple[str, str | None]]:
    """Cut extxyz text into frames by their atom-count lines: ``(frame text, problem or None)``."""
    lines = text.splitlines()
    frames: list[tuple[str, str | None]] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            count = int(lines[i].split()[0])
        except (ValueError, IndexError):
            frames.append(("\n".join(lines[i:]), f"line {i + 1}: expected an atom count, got {lines[i][:40]!r}"))
            break
        end = i + 2 + count
        if count < 0 or end > len(lines):
            frames.append(("\n".join(lines[i:]), f"frame at line {i + 1} is truncated ({count} atoms announced)"))
            break
        frames.append(("\n".join(lines[i:end]) + "\n", None))
        i = end
    return frames


def _extxyz_material_id(frame: str) -> str | None:
    """The ``material_id=...`` value of a frame's comment line, if any."""
    lines = frame.splitlines()
    if len(lines) < 2:
        return None
    m = re.search(r'material_id=(?:"([^"]*)"|(\S+))', lines[1])
    return None if m is None else (m.group(1) or m.group(2))


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
    writer = (
        CifWriter(structure, symprec=symprec, angle_tolerance=angle_tolerance) if symmetrize else CifWriter(structure)
    )
    text = str(writer)
    name = crystal.material_id or f"{crystal.formula}_{index}"
    safe = "".join(ch if ch.isalnum() or ch in "-_.:" else "_" for ch in name)
    lines = text.splitlines()
    if lines and lines[0].startswith("data_"):
        lines[0] = f"data_{safe}"
    return "\n".join(lines) + "\n"
