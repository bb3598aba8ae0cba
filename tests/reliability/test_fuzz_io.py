"""Fuzzing the input paths: malformed files through the readers and the CLI, random command lines.

The hypothesis tests draw inputs from ``tests/reliability/generators.py`` (``st.randoms`` drives
each generator, so hypothesis shrinks a failure to a small choice sequence); the example tests pin
the behaviours the fuzzing found missing: one bad block or frame spoils only itself, counts over
the atom limit are refused before parsing, awkward names still give one file per structure.
``benchmarks/fuzz_inputs.py`` runs the same checks over thousands of inputs with a time limit each.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crystalforge import Crystal, write_structures
from crystalforge.cli.main import build_parser
from crystalforge.core.limits import MAX_ATOMS_ENV
from crystalforge.io.files import iter_records
from crystalforge.testing import tiny_crystals
from tests.reliability.checks import (
    EVALUATE_FAST,
    check_command,
    check_options,
    check_parse,
    check_reader,
    check_store,
    run_main,
)
from tests.reliability.generators import (
    COMMANDS,
    GENERATORS,
    OPTIONS,
    VALUES,
    db_sample,
    option_argv,
    structure_sample,
)
from tests.reliability.malformed import HUGE_COUNT, Sample, base_records, to_cif, to_extxyz

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
OK = ("accepted", "clean")
UNFIXED: set[str] = set()
"""Generators whose inputs still crash code outside the readers (none left; the benchmark runs all)."""


def _write(sample: Sample) -> Path:
    return sample.write(Path(tempfile.mkdtemp(prefix="fuzz-")))


# ---- hypothesis: every generator, every entry point ------------------------------------------------
@settings(FUZZ, max_examples=120)
@given(name=st.sampled_from(sorted(set(GENERATORS) - UNFIXED)), rng=st.randoms(use_true_random=False))
def test_readers_never_raise_name_every_record_and_keep_good_neighbours(name: str, rng: random.Random) -> None:
    sample = GENERATORS[name](rng)
    outcome = check_reader(_write(sample), sample)
    assert outcome.status in OK, f"{sample.mutation}: {outcome.detail}"


@settings(FUZZ, max_examples=25)
@given(rng=st.randoms(use_true_random=False), target=st.sampled_from(["x.extxyz", "x.cif", "x.cftxt", "d/"]))
def test_convert_exits_cleanly_and_converts_every_intact_record(rng: random.Random, target: str) -> None:
    sample = structure_sample(rng)
    path = _write(sample)
    output = path.parent / target
    argv = ["convert", str(path), f"{path.parent}/{target}", *(["--to", "cif"] if target == "d/" else [])]
    outcome = check_command(argv, path, sample, output)
    assert outcome.status in OK, f"{sample.mutation}: {outcome.detail}"


@settings(FUZZ, max_examples=8)
@given(rng=st.randoms(use_true_random=False))
def test_evaluate_and_predict_exit_cleanly(rng: random.Random) -> None:
    sample = structure_sample(rng)
    path = _write(sample)
    evaluated = check_command(["evaluate", str(path), *EVALUATE_FAST], path, sample)
    out = path.parent / "p.json"
    predicted = check_command(["predict", str(path), "--out", str(out)], path, sample, out)
    assert evaluated.status in OK, f"{sample.mutation}: {evaluated.detail}"
    assert predicted.status in OK, f"{sample.mutation}: {predicted.detail}"


@settings(FUZZ, max_examples=150)
@given(st.lists(st.sampled_from(COMMANDS + OPTIONS + VALUES) | st.text(max_size=8), max_size=8))
def test_the_parser_only_exits_through_argparse(tokens: list[str]) -> None:
    assert check_parse(tokens, build_parser).status in OK


@settings(FUZZ, max_examples=20)
@given(rng=st.randoms(use_true_random=False))
def test_fuzzed_option_values_give_an_error_line_not_a_traceback(rng: random.Random, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("options")
    good = folder / "good.cif"
    good.write_text(to_cif(base_records()[1]))
    (folder / "garbage").write_bytes(rng.randbytes(64))
    fill = {"{good}": good, "{bad}": folder / "missing.cif", "{dir}": folder, "{missing}": folder / "no",
            "{garbage}": folder / "garbage"}  # fmt: skip
    command, *options = option_argv(rng)
    for key, value in fill.items():
        options = [t.replace(key, str(value)) for t in options]
    argv = [command, str(good), *options, *([str(folder / "o.extxyz")] if command == "convert" else [])]
    outcome = check_options(argv + (list(EVALUATE_FAST) if command == "evaluate" else []))
    assert outcome.status in OK, outcome.detail


@pytest.mark.parametrize("seed", range(40))
def test_damaged_candidate_stores_give_named_errors(seed: int) -> None:
    sample = db_sample(random.Random(seed))
    outcome = check_store(_write(sample))
    assert outcome.status in OK, f"{sample.mutation}: {outcome.detail}"


# ---- examples: what the fuzzing found --------------------------------------------------------------
def test_one_broken_cif_block_spoils_only_itself_and_repeated_names_are_kept(tmp_path: Path) -> None:
    recs = base_records()
    text = to_cif(recs[1]) + to_cif(recs[2]).replace("_cell_length_b", "_cell_length_b 1.2.3\n#") + to_cif(recs[3])
    text += to_cif(recs[1])  # the same block name again: pymatgen's CifFile would keep only the last
    path = tmp_path / "blocks.cif"
    path.write_text(text)
    records = list(iter_records(path))
    assert [r.ok for r in records] == [True, False, True, True]
    assert records[1].source == f"{path}:{recs[2].name}" and "malformed CIF" in (records[1].error or "")
    assert records[0].source == f"{path}:{recs[1].name}#0" and records[3].source == f"{path}:{recs[1].name}#3"


@pytest.mark.parametrize("bad_count", ["1", "7", str(HUGE_COUNT), "-2", "three"])
def test_an_extxyz_frame_with_a_wrong_count_spoils_only_itself(tmp_path: Path, bad_count: str) -> None:
    frames = [to_extxyz(r) for r in base_records()[:3]]
    frames[1] = bad_count + frames[1][frames[1].index("\n") :]
    path = tmp_path / "frames.extxyz"
    path.write_text("".join(frames))
    records = list(iter_records(path))
    assert [r.ok for r in records] == [True, False, True]
    assert [r.ident for r in records] == [r.name for r in base_records()[:3]]
    assert records[1].error is not None and f"frame 1 (line {frames[0].count(chr(10)) + 1})" in records[1].error


@pytest.mark.parametrize("suffix", [".cif", ".vasp", ".extxyz", ".cftxt", ".npz"])
def test_structures_over_the_atom_limit_are_error_records(tmp_path: Path, monkeypatch, suffix: str) -> None:
    monkeypatch.setenv(MAX_ATOMS_ENV, "4")
    small, big = tiny_crystals()[1], tiny_crystals()[3]  # 2 and 5 atoms
    crystals = [big] if suffix == ".vasp" else [small, big]
    path = write_structures(crystals, tmp_path / f"x{suffix}")
    records = list(iter_records(path))
    assert [r.ok for r in records] == [True] * (len(crystals) - 1) + [False]
    assert "5 atoms exceed the limit of 4" in (records[-1].error or "") and MAX_ATOMS_ENV in (records[-1].error or "")


def test_a_million_atoms_announced_is_refused_before_parsing(tmp_path: Path) -> None:
    rec = base_records()[1]
    poscar = tmp_path / "POSCAR"
    poscar.write_text(f"big\n1.0\n5 0 0\n0 5 0\n0 0 5\nSi\n{HUGE_COUNT}\nDirect\n0 0 0\n")
    extxyz = tmp_path / "big.extxyz"
    extxyz.write_text(f"{HUGE_COUNT}\n" + to_extxyz(rec).split("\n", 1)[1])
    for path in (poscar, extxyz):
        (record,) = iter_records(path)
        assert f"{HUGE_COUNT} atoms" in (record.error or ""), record


def test_a_broken_archive_crystal_spoils_only_itself_and_garbage_is_one_error(tmp_path: Path) -> None:
    crystals = tiny_crystals()
    path = write_structures(crystals, tmp_path / "a.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["lattice"][2] = 0.0
    np.savez(tmp_path / "b.npz", **arrays)
    records = list(iter_records(tmp_path / "b.npz"))
    assert [r.ok for r in records] == [True, True, False, True, True]
    assert records[2].source == f"{tmp_path / 'b.npz'}:2" and "degenerate" in (records[2].error or "")
    (tmp_path / "c.npz").write_bytes(path.read_bytes()[:100])
    (record,) = iter_records(tmp_path / "c.npz")
    assert "cannot read crystal archive" in (record.error or "")


def test_text_blocks_split_on_blank_looking_lines_and_errors_name_file_lines(tmp_path: Path) -> None:
    from crystalforge.io.text import CrystalText

    codec = CrystalText()
    blocks = [codec.encode(c) for c in tiny_crystals()[:3]]
    blocks[1] = blocks[1].replace("alpha", "alpha 1e999\n#", 1)
    path = tmp_path / "x.cftxt"
    path.write_text(" \n".join(blocks))  # a line of spaces separates blocks too
    records = list(iter_records(path))
    assert [r.ok for r in records] == [True, False, True]
    line = blocks[0].count("\n") + 2 + blocks[1].split("\n").index("alpha 1e999")
    assert f"line {line}: " in (records[1].error or "")


def test_convert_writes_one_safe_file_per_structure_whatever_the_names(tmp_path: Path) -> None:
    names = ["a" * 300, "x\x00y", "..", "a/b", "dup", "dup"]
    crystals = [c.replace(material_id=n) for c, n in zip(tiny_crystals() * 2, names, strict=False)]
    source = write_structures(crystals, tmp_path / "in.extxyz")
    code, text = run_main(["convert", str(source), f"{tmp_path}/out/", "--to", "cif"])
    assert code == 0, text
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == len(names) and not any(n.startswith(".") or len(n) > 110 for n in written)


def test_convert_refuses_a_bad_symprec_and_names_what_it_cannot_symmetrize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymatgen.io.cif

    real_writer = pymatgen.io.cif.CifWriter

    def failing_on_odd_cells(structure: object, **kwargs: object) -> object:  # spglib's failure, on cue
        if kwargs and abs(structure.lattice.c - 7.77) < 1e-9:  # type: ignore[attr-defined]
            raise ValueError("Unable to determine symmetry")
        return real_writer(structure, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pymatgen.io.cif, "CifWriter", failing_on_odd_cells)
    odd = Crystal(np.array([14]), np.zeros((1, 3)), np.diag([5.0, 5.0, 7.77]), material_id="odd")
    source = write_structures([tiny_crystals()[1], odd], tmp_path / "in.extxyz")
    code, text = run_main(["convert", str(source), str(tmp_path / "o.cif"), "--symmetrize", "--symprec", "-1"])
    assert code == 2 and "--symprec" in text
    code, text = run_main(["convert", str(source), f"{tmp_path}/d/", "--to", "cif", "--symmetrize"])
    assert code == 0 and f"skipped {source}:1: not written: cannot symmetrize" in text
    assert len(list((tmp_path / "d").iterdir())) == 1
    code, text = run_main(["convert", str(source), str(tmp_path / "o.cif"), "--symmetrize"])
    assert code == 2 and str(tmp_path / "o.cif") in text and "Traceback" not in text


def test_an_unwritable_output_is_a_clean_error(tmp_path: Path) -> None:
    source = write_structures(tiny_crystals()[:1], tmp_path / "in.cif")
    code, text = run_main(["convert", str(source), str(source / "out.extxyz")])  # a file used as a folder
    assert code == 2 and text.startswith("error:") and str(source) in text
