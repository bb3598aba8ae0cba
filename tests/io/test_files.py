import re

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystalforge import Crystal, CrystalError, read_structures, write_structures
from crystalforge.io.archive import CrystalArrays
from crystalforge.io.files import crystal_to_cif, iter_records
from crystalforge.testing import tiny_crystals

MATCHER = StructureMatcher()


def _same(a: Crystal, b: Crystal) -> bool:
    return MATCHER.fit(a.to_pymatgen(), b.to_pymatgen())


@pytest.mark.parametrize("suffix", [".cif", ".extxyz", ".npz", ".txt"])
def test_multi_structure_round_trip(tmp_path, suffix):
    cs = tiny_crystals()
    path = write_structures(cs, tmp_path / f"all{suffix}")
    back = read_structures(path)
    assert len(back) == len(cs)
    for a, b in zip(cs, back, strict=True):
        assert a.formula == b.formula and _same(a, b)
    if suffix in (".extxyz", ".npz"):  # exact formats keep atom order and coordinates
        for a, b in zip(cs, back, strict=True):
            assert np.allclose(a.cart_coords, b.cart_coords, atol=1e-6)
            assert b.material_id == a.material_id


def test_poscar_round_trip_and_single_structure_rule(tmp_path):
    c = tiny_crystals()[3]
    path = write_structures([c], tmp_path / "POSCAR")
    (back,) = read_structures(path)
    assert back.allclose(c, atol=1e-6)
    with pytest.raises(ValueError, match="one structure"):
        write_structures(tiny_crystals(), tmp_path / "x.vasp")


def test_symmetrised_cif_keeps_the_structure_and_its_symmetry(tmp_path):
    rutile = Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
    )
    c = Crystal.from_pymatgen(rutile, material_id="rutile")
    text = crystal_to_cif(c, symmetrize=True, symprec=0.01)
    assert re.search(r"_symmetry_Int_Tables_number\s+136\n", text)
    assert text.count("Ti") < 6  # only the asymmetric unit is listed
    p1 = crystal_to_cif(c)
    assert re.search(r"_symmetry_Int_Tables_number\s+1\n", p1)
    write_structures([c], tmp_path / "sym.cif", symmetrize=True, symprec=0.01)
    (back,) = read_structures(tmp_path / "sym.cif")
    assert back.num_atoms == 6 and _same(back, c)


def test_symmetrize_only_for_cif(tmp_path):
    with pytest.raises(ValueError, match="CIF"):
        write_structures(tiny_crystals()[:1], tmp_path / "a.extxyz", symmetrize=True)


def test_folder_reading_with_bad_records(tmp_path):
    good = tiny_crystals()[1]
    write_structures([good], tmp_path / "good.cif")
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "garbage.cif").write_text("data_x\n_cell_length_a 3\nthis is not a cif\n")
    (tmp_path / "unknown_element.cif").write_text(crystal_to_cif(good).replace("Si", "Qq"))
    (tmp_path / "zero_volume.vasp").write_text("zero\n1.0\n1 0 0\n2 0 0\n0 0 1\nNa\n1\ndirect\n0 0 0\n")
    (tmp_path / "nan.extxyz").write_text(
        '1\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 pbc="T T T"\nNa nan 0.0 0.0\n'
    )
    (tmp_path / "notes.md").write_text("not a structure")
    records = list(iter_records(tmp_path))
    by_name = {r.source.split("/")[-1].split(":")[0]: r for r in records}
    assert by_name["good.cif"].ok
    assert "empty" in by_name["empty.cif"].error
    assert "malformed CIF" in by_name["garbage.cif"].error
    assert not by_name["unknown_element.cif"].ok
    assert "degenerate" in by_name["zero_volume.vasp"].error
    assert "NaN" in by_name["nan.extxyz"].error
    assert "notes.md" not in by_name
    with pytest.raises(CrystalError) as info:
        read_structures(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert [c.material_id for c in read_structures(tmp_path, skip_bad=True)] == ["good"]


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(CrystalError, match="no structure files"):
        read_structures(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "nope.cif")


def test_disordered_cif_is_rejected_by_name(tmp_path):
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    from pymatgen.io.cif import CifWriter

    (tmp_path / "alloy.cif").write_text(str(CifWriter(s)))
    (record,) = iter_records(tmp_path / "alloy.cif")
    assert "disordered" in record.error


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.extxyz"
    write_structures(tiny_crystals()[:1], target)
    before = target.read_text()

    import crystalforge.io.files as files

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(files, "crystal_to_cif", boom)
    with pytest.raises(RuntimeError):
        write_structures(tiny_crystals(), tmp_path / "out.cif")
    assert not (tmp_path / "out.cif").exists()
    assert target.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_archive_keeps_properties_and_rejects_foreign_npz(tmp_path):
    cs = [c.replace(properties={"e": float(i)}) for i, c in enumerate(tiny_crystals())]
    arrays = CrystalArrays.from_crystals(cs, metadata={"note": "x"})
    arrays.save(tmp_path / "a.npz")
    loaded = CrystalArrays.load(tmp_path / "a.npz")
    assert loaded.metadata == {"note": "x"}
    assert [c.properties["e"] for c in loaded] == [0.0, 1.0, 2.0, 3.0, 4.0]
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"foreign\.npz"):
        CrystalArrays.load(tmp_path / "foreign.npz")


def test_a_truncated_extxyz_frame_loses_only_itself(tmp_path):
    crystals = tiny_crystals()
    write_structures(crystals, tmp_path / "a.extxyz")
    lines = (tmp_path / "a.extxyz").read_text().splitlines()
    (tmp_path / "b.extxyz").write_text("\n".join(lines[:-2]) + "\n")
    records = list(iter_records(tmp_path / "b.extxyz"))
    assert [r.ok for r in records] == [True] * (len(crystals) - 1) + [False]
    assert "truncated" in records[-1].error
    assert records[-1].ident == crystals[-1].material_id


@pytest.mark.parametrize("suffix", [".extxyz", ".npz"])
@pytest.mark.parametrize("ident", ["3961_0", "12", "1e5", "mp-1234_7", "T", "a b"])
def test_ids_that_look_like_numbers_survive(tmp_path, suffix, ident):
    # ASE parses extxyz values such as 3961_0 as the integer 39610: ids are read as written
    c = tiny_crystals()[0]
    c = Crystal(c.atomic_numbers, c.frac_coords, c.lattice, properties={"e": 1.5}, material_id=ident)
    (back,) = read_structures(write_structures([c], tmp_path / f"x{suffix}"))
    assert back.material_id == ident
    assert back.properties == {"e": 1.5}
