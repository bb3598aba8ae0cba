"""Seeded generators of malformed inputs: structure files, ``.npz`` archives, ASE databases, argv lists.

``structure_sample(rng)`` draws one of the file generators below; ``argv_tokens(rng)`` a command
line for the parser. Everything is a function of the ``random.Random`` it gets (see ``malformed``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from tests.reliability.malformed import (
    BAD_NUMBERS,
    EMITTERS,
    EXTENSIONS,
    SEPARATORS,
    STRUCTURE_MUTATIONS,
    TEXT_MUTATIONS,
    RawRecord,
    Sample,
    base_records,
    corpus_files,
    random_bytes,
    splice_bytes,
)

MULTI_FORMATS = ("cif", "extxyz", "text")
LOCAL_TEXT_MUTATIONS = ("bad_numbers", "drop_line", "repeat_line", "garbage_line", "truncate")
"""Mutations that may break one record of a multi-record file without touching its neighbours."""


def _emit(fmt: str, rec: RawRecord) -> str:
    return EMITTERS[fmt](rec)


def _mutate_record(fmt: str, rec: RawRecord, rng: random.Random) -> tuple[str, str]:
    """One broken record's text and the mutation's name (first line kept, so record boundaries hold)."""
    if rng.random() < 0.6:
        name = rng.choice(sorted(STRUCTURE_MUTATIONS))
        return _emit(fmt, STRUCTURE_MUTATIONS[name](rec, rng)), name
    name = rng.choice(LOCAL_TEXT_MUTATIONS)
    first, _, rest = _emit(fmt, rec).partition("\n")
    body = TEXT_MUTATIONS[name](rest, rng).replace("\n\n", "\n")  # no new blank line: text blocks stay apart
    return first + "\n" + body.rstrip("\n") + "\n", name


def single_record(rng: random.Random) -> Sample:
    """One record in one format, broken in its structure, its text, or both."""
    fmt = rng.choice(sorted(EMITTERS))
    rec = rng.choice(base_records())
    names = []
    if rng.random() < 0.7:
        names.append(rng.choice(sorted(STRUCTURE_MUTATIONS)))
        rec = STRUCTURE_MUTATIONS[names[-1]](rec, rng)
    text = _emit(fmt, rec)
    if not names or rng.random() < 0.4:
        names.append(rng.choice(sorted(TEXT_MUTATIONS)))
        text = TEXT_MUTATIONS[names[-1]](text, rng)
    return Sample(f"{rec.name}{EXTENSIONS[fmt]}", text.encode(), f"{fmt}:" + "+".join(names))


def _records(rng: random.Random, k: int) -> list[RawRecord]:
    return [dataclasses.replace(rng.choice(base_records()), name=f"r{i}_{rng.randrange(10**6)}") for i in range(k)]


def _label(fmt: str, index: int, rec: RawRecord) -> str:
    """How a reader names record ``index`` in the source (CIF block name, extxyz material_id, text index)."""
    return rec.name if fmt in ("cif", "extxyz") else str(index)


def multi_record(rng: random.Random, fmt: str | None = None) -> Sample:
    """Three to five records, one of them broken: the others must still be read."""
    fmt = fmt or rng.choice(MULTI_FORMATS)
    recs = _records(rng, rng.randint(3, 5))
    bad = rng.randrange(len(recs))
    texts = [_emit(fmt, r) for r in recs]
    texts[bad], how = _mutate_record(fmt, recs[bad], rng)
    intact = tuple(_label(fmt, i, r) for i, r in enumerate(recs) if i != bad)
    return Sample(f"multi{EXTENSIONS[fmt]}", SEPARATORS[fmt].join(texts).encode(), f"{fmt}:multi:{how}", intact)


def truncated_multi(rng: random.Random) -> Sample:
    """A multi-record file cut at a random character: the records wholly before the cut must be read."""
    fmt = rng.choice(MULTI_FORMATS)
    recs = _records(rng, rng.randint(2, 4))
    text, ends = "", []
    for i, rec in enumerate(recs):
        text += (SEPARATORS[fmt] if i else "") + _emit(fmt, rec)
        ends.append(len(text))
    cut = rng.randrange(len(text) + 1)
    margin = len(SEPARATORS[fmt]) + len("data_X")  # the next record's first token must be whole
    intact = tuple(_label(fmt, i, r) for i, (r, end) in enumerate(zip(recs, ends, strict=True)) if end + margin <= cut)
    return Sample(f"cut{EXTENSIONS[fmt]}", text[:cut].encode(), f"{fmt}:truncated_multi", intact)


ODD_NAMES = ("a" * 300, "x\x00y", "..", "../up", "a/b", "mp-1:2", "é名", "-", ".hidden", "dup", "dup")
"""Record names that are awkward as file names (too long, NUL, dots, slashes) or repeated."""


def odd_names(rng: random.Random) -> Sample:
    """Good records with awkward or repeated names: every one must be read (and converted, one file each)."""
    fmt = rng.choice(("cif", "extxyz"))
    names = rng.sample(ODD_NAMES, rng.randint(2, 5))
    recs = [dataclasses.replace(rng.choice(base_records()), name=name) for name in names]
    labels = tuple(f"{n}#{i}" if fmt == "cif" and names.count(n) > 1 else n for i, n in enumerate(names))
    text = SEPARATORS[fmt].join(_emit(fmt, r) for r in recs)
    return Sample(f"names{EXTENSIONS[fmt]}", text.encode(), f"{fmt}:odd_names", labels)


def wrong_extension(rng: random.Random) -> Sample:
    """A good record of one format under another format's name."""
    fmt, other = rng.sample([*sorted(EMITTERS), "npz"], 2)
    data = good_npz() if fmt == "npz" else _emit(fmt, rng.choice(base_records())).encode()
    name = "POSCAR" if other == "poscar" and rng.random() < 0.5 else f"x{EXTENSIONS[other]}"
    return Sample(name, data, f"{fmt}-as-{other}")


def corpus_sample(rng: random.Random) -> Sample:
    """A real file shipped with an installed package, as it is or mutated (text or bytes)."""
    files = corpus_files()
    if not files:
        return single_record(rng)
    path = rng.choice(files)
    data = path.read_bytes()
    choice = rng.choice(["as_is", "bytes", *sorted(TEXT_MUTATIONS)])
    if choice == "bytes":
        data = splice_bytes(data, rng)
    elif choice != "as_is":
        data = TEXT_MUTATIONS[choice](data.decode(errors="replace"), rng).encode()
    return Sample(path.name, data, f"corpus:{path.parent.name}/{path.name}:{choice}")


def garbage_file(rng: random.Random) -> Sample:
    """Random bytes under a structure file's name."""
    suffix = rng.choice([*EXTENSIONS.values(), ".xyz", ".txt"])
    return Sample(f"garbage{suffix}", random_bytes(rng), "garbage")


def csv_sample(rng: random.Random) -> Sample:
    """A CDVAE-format CSV (a ``cif`` column): one row's CIF broken, or the CSV text itself."""
    recs = _records(rng, rng.randint(2, 4))
    bad = rng.randrange(len(recs))
    cifs = [_emit("cif", r) for r in recs]
    cifs[bad], how = _mutate_record("cif", recs[bad], rng)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["", "material_id", "cif", "band_gap"])
    for i, (rec, cif) in enumerate(zip(recs, cifs, strict=True)):
        writer.writerow([i, rec.name, cif, rng.choice(("1.5", "nan", "", "x", "1e308"))])
    text, intact = buffer.getvalue(), tuple(f"row {i}" for i in range(len(recs)) if i != bad)
    if rng.random() < 0.3:
        how, intact = rng.choice(sorted(TEXT_MUTATIONS)), ()
        text = TEXT_MUTATIONS[how](text, rng)
    return Sample("table.csv", text.encode(), f"csv:{how}", intact)


def _failures_csv(rng: random.Random) -> bytes:
    return rng.choice((b"name,reason\nx_0,no lattice\n", b"name,reason\nonly_a_name\n", b"name,reason\n\x00,\xff\xfe\n",
                       b'name,reason\n"unterminated,x\n', b"", random_bytes(rng)))  # fmt: skip


def folder_sample(rng: random.Random) -> Sample:
    """A folder: a generation run (``run.json``, ``samples.extxyz``, ``failures.csv``) or files of mixed health."""
    if rng.random() < 0.5:
        frames = multi_record(rng, fmt="extxyz")
        run = rng.choice((b'{"model": "x"}', b"{", b"[]"))
        run_files = (("run.json", run), ("failures.csv", _failures_csv(rng)), ("samples.extxyz", frames.data))
        return Sample("run", b"", f"folder:run:{frames.mutation}", frames.intact, run_files)
    samples = [structure_sample(rng) for _ in range(rng.randint(1, 4))]
    files = tuple((f"{i}_{s.name}", s.data) for i, s in enumerate(samples) if not s.files)
    return Sample("structures", b"", "folder:mixed", (), files or (("empty.cif", b""),))


# ---- .npz archives --------------------------------------------------------------------------
def _archive_arrays() -> dict[str, np.ndarray]:
    from crystalforge.io.archive import ARCHIVE_FORMAT
    from crystalforge.testing import tiny_crystals

    cs = tiny_crystals()
    return {
        "atomic_numbers": np.concatenate([c.atomic_numbers for c in cs]).astype(np.int16),
        "frac_coords": np.concatenate([c.frac_coords for c in cs]),
        "lattice": np.stack([c.lattice for c in cs]),
        "num_atoms": np.array([c.num_atoms for c in cs], dtype=np.int32),
        "material_ids": np.array([c.material_id for c in cs]),
        "metadata": np.asarray(json.dumps({"format": ARCHIVE_FORMAT})),
    }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # no key is named allow_pickle
    return buffer.getvalue()


@cache
def good_npz() -> bytes:
    """The five tiny crystals as a crystalforge archive."""
    return _npz_bytes(_archive_arrays())


def _one_crystal(arrays: dict[str, np.ndarray], rng: random.Random) -> tuple[int, str]:
    """Break crystal ``j``'s own values only; returns ``j`` and what was done."""
    j = rng.randrange(len(arrays["num_atoms"]))
    start = int(arrays["num_atoms"][:j].sum())
    how = rng.choice(("nan_lattice", "zero_lattice", "bad_z", "inf_coord"))
    if how == "nan_lattice":
        arrays["lattice"][j, 0, 0] = np.nan
    elif how == "zero_lattice":
        arrays["lattice"][j] = 0.0
    elif how == "bad_z":
        arrays["atomic_numbers"][start] = rng.choice((0, -3, 200))
    else:
        arrays["frac_coords"][start, 1] = np.inf
    return j, how


_ARCHIVE_BREAKS: dict[str, Callable[[dict[str, np.ndarray], random.Random], object]] = {
    "missing_key": lambda a, g: a.pop(g.choice(sorted(a))),
    "negative_count": lambda a, g: a["num_atoms"].__setitem__(slice(0, 2), (-1, a["num_atoms"][:2].sum() + 1)),
    "huge_count": lambda a, g: a["num_atoms"].__setitem__(0, 10**6),
    "bad_metadata": lambda a, g: a.__setitem__("metadata", np.asarray(g.choice(("[1]", "{", '"x"', "null", "{}")))),
    "text_numbers": lambda a, g: a.__setitem__("atomic_numbers", a["atomic_numbers"].astype(str)),
    "flat_lattice": lambda a, g: a.__setitem__("lattice", a["lattice"].reshape(-1)),
    "short_coords": lambda a, g: a.__setitem__("frac_coords", a["frac_coords"][:-1]),
}


def npz_sample(rng: random.Random) -> Sample:
    """A crystalforge ``.npz`` archive: one crystal broken, the whole archive broken, or its bytes."""
    arrays = _archive_arrays()
    roll = rng.random()
    if roll < 0.4:
        j, how = _one_crystal(arrays, rng)
        intact = tuple(str(i) for i in range(len(arrays["num_atoms"])) if i != j)
        return Sample("archive.npz", _npz_bytes(arrays), f"npz:{how}", intact)
    if roll < 0.75:
        how = rng.choice(sorted(_ARCHIVE_BREAKS))
        _ARCHIVE_BREAKS[how](arrays, rng)
        return Sample("archive.npz", _npz_bytes(arrays), f"npz:{how}")
    data = good_npz()
    if rng.random() < 0.5:
        return Sample("archive.npz", data[: rng.randrange(len(data))], "npz:truncate")
    return Sample("archive.npz", splice_bytes(data, rng), "npz:splice")


GENERATORS: dict[str, Callable[[random.Random], Sample]] = {
    "single_record": single_record,
    "multi_record": multi_record,
    "truncated_multi": truncated_multi,
    "wrong_extension": wrong_extension,
    "odd_names": odd_names,
    "csv": csv_sample,
    "folder": folder_sample,
    "corpus": corpus_sample,
    "garbage": garbage_file,
    "npz": npz_sample,
}
WEIGHTS = {"single_record": 27, "multi_record": 18, "truncated_multi": 9, "wrong_extension": 6, "odd_names": 5,
           "csv": 6, "folder": 5, "corpus": 12, "garbage": 4, "npz": 8}  # fmt: skip


def structure_sample(rng: random.Random) -> Sample:
    """One malformed structure file from a generator drawn by ``WEIGHTS``."""
    name = rng.choices(sorted(GENERATORS), weights=[WEIGHTS[k] for k in sorted(GENERATORS)])[0]
    return GENERATORS[name](rng)


# ---- ASE databases --------------------------------------------------------------------------
@cache
def good_store() -> bytes:
    """A crystalforge candidate store (``design.store``) holding two candidates and one failure."""
    from crystalforge.core.candidate import Candidate
    from crystalforge.design.store import CandidateStore
    from crystalforge.testing import tiny_crystals

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidates.db"
        store = CandidateStore(path)
        rows = [Candidate.of(c) for c in tiny_crystals()[:2]] + [Candidate.failure("gen", "not a crystal")]
        store.add(rows, round=0)
        return path.read_bytes()


def db_sample(rng: random.Random) -> Sample:
    """A ``candidates.db``: the good store truncated or with bytes flipped, random bytes, or empty."""
    data = good_store()
    how = rng.choice(("truncate", "flip", "garbage", "empty", "as_is"))
    if how == "truncate":
        data = data[: rng.randrange(len(data))]
    elif how == "flip":
        raw = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        data = bytes(raw)
    elif how == "garbage":
        data = random_bytes(rng)
    elif how == "empty":
        data = b""
    return Sample("candidates.db", data, f"db:{how}")


# ---- command lines --------------------------------------------------------------------------
COMMANDS = ("data", "convert", "evaluate", "models", "train", "train-predictor", "generate", "csp", "refine",
            "predict", "design", "serve")  # fmt: skip
OPTIONS = ("--from", "--to", "--symmetrize", "--symprec", "--strict", "--reference", "--task", "--split", "--train",
           "--k", "--target", "--cov-cutoffs", "--format", "--workers", "--ray", "--out", "--predictor",
           "--property", "--steps", "--seed", "--anti-annealing", "--batch-size", "--model", "-n", "--formula",
           "--elements", "--set", "--help", "--version", "-v", "--", "-")  # fmt: skip
VALUES = (*BAD_NUMBERS, "cif", "extxyz", "npz", "text", "csv", "dng", "csp", "none", "mp_20", "band_gap",
          "band_gap:1:2", "band_gap=1..2", "x:y:z", ":", "a,b", "1,2,3", "frac_coords=5", "=", "lattice=-1",
          "1e308,1e308", "nan,nan", "\x00", "é", " ", "/", "-1e9", "2**64", "9" * 40)  # fmt: skip


PATHS = ("{good}", "{bad}", "{dir}", "{missing}", "{garbage}")
"""Placeholders the caller fills: a good structure file, the malformed one, a folder, a missing
file, a file of random bytes."""
FORMAT_NAMES = ("cif", "extxyz", "npz", "poscar", "text")
NUMBERS = ("0.1", "0", "-1", "nan", "inf", "1e308", "x", "")
COMMAND_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "convert": {"--from": FORMAT_NAMES, "--to": FORMAT_NAMES, "--symmetrize": (), "--symprec": NUMBERS,
                "--strict": ()},
    "evaluate": {"--task": ("dng", "csp"), "--k": NUMBERS, "--target": ("band_gap:1:2", "band_gap=1..2", "x:y:z", ":",
                 "band_gap<nan", "e:1e308:-1e308"), "--cov-cutoffs": ("0.4,10", "nan,nan", "1", "a,b", "-1,-1"),
                 "--format": (*FORMAT_NAMES, "csv"), "--split": ("test", "x", ""),
                 "--judge": PATHS, "--workers": ("1", "0", "-1")},
    "predict": {"--predictor": (*PATHS, "mp_20-properties", "nope"), "--property": ("band_gap", "x", ""),
                "--out": ("{dir}/o.json", "{dir}/o.csv", "{dir}/o.txt", "{dir}", "{missing}/o.json")},
}  # fmt: skip
"""Each command's own options and values to draw from (valid, out of range, or not numbers)."""


def option_argv(rng: random.Random) -> list[str]:
    """A command (convert, evaluate or predict) with one to four of its options, values drawn per option."""
    command = rng.choice(sorted(COMMAND_OPTIONS))
    options = COMMAND_OPTIONS[command]
    argv = [command]
    for name in rng.sample(sorted(options), rng.randint(1, min(4, len(options)))):
        argv += [name, rng.choice(options[name])] if options[name] else [name]
    return argv


def argv_tokens(rng: random.Random, paths: tuple[str, ...] = PATHS) -> list[str]:
    """A random command line: a command (sometimes none or a wrong one), options and values mixed."""
    tokens: list[str] = []
    if rng.random() < 0.9:
        tokens.append(rng.choice(COMMANDS) if rng.random() < 0.9 else rng.choice(VALUES))
    pool = (OPTIONS, VALUES, paths)
    for _ in range(rng.randint(0, 8)):
        tokens.append(rng.choice(rng.choice(pool)))
    return tokens
