import gzip

import numpy as np
import pandas as pd
import pytest
import torch

from crystalforge import CrystalError
from crystalforge.core.batch import CrystalBatch
from crystalforge.core.candidate import Candidate
from crystalforge.data.loader import make_loader
from crystalforge.data.preprocess import PreprocessOptions
from crystalforge.data.resolve import dataset_stats, load_dataset
from crystalforge.data.sources import REDUCED
from crystalforge.io.files import crystal_to_cif
from crystalforge.testing import tiny_crystals


def _write_benchmark(root, name="perov_5", split="val", rows=None, gz=True):
    rows = (
        rows
        if rows is not None
        else [
            {
                "material_id": f"id-{i}",
                "cif": crystal_to_cif(c),
                "heat_all": float(i),
                "formula": c.formula,
                "flag": i % 2 == 0,
            }
            for i, c in enumerate(tiny_crystals())
        ]
    )
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    path = folder / (f"{split}.csv.gz" if gz else f"{split}.csv")
    if gz:
        with gzip.open(path, "wt") as handle:
            frame.to_csv(handle)
    else:
        frame.to_csv(path)
    return path


def test_benchmark_split_loads_with_numeric_properties_and_niggli_cells(tmp_path):
    _write_benchmark(tmp_path)
    ds = load_dataset("perov_5", "val", root=tmp_path, workers=1)
    assert len(ds) == 5 and ds.material_ids == [f"id-{i}" for i in range(5)]
    assert ds.property_names == ["flag", "heat_all"]  # text columns dropped, bools kept as 0/1
    assert ds[2].properties == {"heat_all": 2.0, "flag": 1.0}
    assert ds.metadata["preprocess"] == PreprocessOptions().to_dict()
    for original, loaded in zip(tiny_crystals(), ds, strict=True):
        assert loaded.formula == original.formula
        assert loaded.volume == pytest.approx(original.volume)
        niggli = loaded.to_pymatgen().lattice.get_niggli_reduced_lattice()
        assert np.allclose(sorted(niggli.abc), sorted(loaded.lengths), atol=1e-6)
        assert np.allclose(loaded.lattice[2, :2], 0, atol=1e-12)  # CDVAE orientation: c along z


def test_raw_options_keep_cells_as_given(tmp_path):
    _write_benchmark(tmp_path)
    ds = load_dataset("perov_5", "val", root=tmp_path, preprocess=PreprocessOptions.raw())
    for original, loaded in zip(tiny_crystals(), ds, strict=True):
        # CIF stores lattice parameters, so compare cells through them and keep the atom order
        assert np.allclose(loaded.lengths, original.lengths, atol=1e-5)
        assert np.allclose(loaded.angles, original.angles, atol=1e-5)
        assert loaded.num_atoms == original.num_atoms


def test_cache_reloads_and_invalidates_on_source_or_option_change(tmp_path):
    path = _write_benchmark(tmp_path)
    first = load_dataset("perov_5", "val", root=tmp_path)
    cache_file = first.metadata.get("cache_file")
    assert cache_file is None  # freshly built
    second = load_dataset("perov_5", "val", root=tmp_path)
    assert second.metadata["cache_file"].endswith(".npz")
    assert second.metadata["cache_key"] == first.metadata["cache_key"]
    prim = load_dataset("perov_5", "val", root=tmp_path, preprocess=PreprocessOptions(primitive=True))
    assert prim.metadata["cache_key"] != first.metadata["cache_key"]
    assert prim[2].num_atoms == 2  # conventional NaCl reduced to its primitive cell
    rows = pd.read_csv(path, index_col=0).iloc[:3].to_dict("records")
    _write_benchmark(tmp_path, rows=rows)
    edited = load_dataset("perov_5", "val", root=tmp_path)
    assert len(edited) == 3 and edited.metadata["cache_key"] != first.metadata["cache_key"]


def test_bad_rows_are_skipped_and_reported(tmp_path):
    rows = [
        {"material_id": "ok", "cif": crystal_to_cif(tiny_crystals()[1]), "e": 1.0},
        {"material_id": "broken", "cif": "data_x\nnot a cif", "e": 2.0},
        {"material_id": "alien", "cif": crystal_to_cif(tiny_crystals()[1]).replace("Si", "Zz"), "e": 3.0},
    ]
    _write_benchmark(tmp_path, rows=rows)
    ds = load_dataset("perov_5", "val", root=tmp_path)
    assert ds.material_ids == ["ok"]
    sources = " ".join(str(f) for f in ds.failures)
    assert "row 1 (broken)" in sources and "row 2 (alien)" in sources and "val.csv.gz" in sources
    assert all(isinstance(f, Candidate) and f.crystal is None for f in ds.failures)
    assert [f.material_id for f in ds.failures] == ["broken", "alien"]
    assert str(ds.failures[0]) == f"{ds.failures[0].source}: {ds.failures[0].error}"
    again = load_dataset("perov_5", "val", root=tmp_path)  # failures survive the cache
    assert again.metadata.get("cache_file") and again.failures == ds.failures


def test_all_rows_bad_is_an_error(tmp_path):
    _write_benchmark(tmp_path, rows=[{"material_id": "x", "cif": "garbage"}])
    with pytest.raises(CrystalError, match="no usable structures"):
        load_dataset("perov_5", "val", root=tmp_path)


def test_missing_split_and_unknown_name_explain_what_to_do(tmp_path):
    (tmp_path / "mp_20").mkdir()
    (tmp_path / "mp_20" / "train_partial.csv.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="mp_20_reduced"):
        load_dataset("mp_20", "train", root=tmp_path)
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("mp_21")
    with pytest.raises(ValueError, match="no split"):
        load_dataset("perov_5", "training", root=tmp_path)


def test_reduced_protocol_is_disjoint_seeded_and_order_independent():
    proto = REDUCED["mp_20_reduced"]
    ids = np.array([f"mp-{i}" for i in range(1000)])
    train, val = proto.select("train", ids), proto.select("val", ids)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    shuffled = np.random.default_rng(5).permutation(ids)
    val_ids = set(ids[val])
    assert set(shuffled[proto.select("val", shuffled)]) == val_ids
    assert proto.source_split("test") == "test" and proto.source_split("train") == "val"


def test_user_folder_with_property_table(tmp_path):
    from crystalforge.io.files import write_structures

    folder = tmp_path / "mine"
    for c in tiny_crystals():
        write_structures([c], folder / f"{c.material_id}.cif")
    (folder / "broken.cif").write_text("data_broken\n")
    pd.DataFrame({"filename": ["si_fcc_2.cif", "nacl_conv_8"], "gap": [1.1, 5.0], "label": ["a", "b"]}).to_csv(
        tmp_path / "props.csv", index=False
    )
    ds = load_dataset(folder, properties=tmp_path / "props.csv")
    assert len(ds) == 5
    by_id = {c.material_id: c for c in ds}
    assert by_id["si_fcc_2"].properties == {"gap": 1.1}
    assert by_id["nacl_conv_8"].properties == {"gap": 5.0}
    problems = [str(f) for f in ds.failures]
    assert any("broken.cif" in p for p in problems)
    assert any("po_sc_1" in p and "property table" in p for p in problems)
    assert by_id["nacl_conv_8"].num_atoms == 8  # user data kept as given


def test_user_ase_database(tmp_path):
    from ase.db import connect

    db = connect(str(tmp_path / "x.db"))
    for c in tiny_crystals()[:3]:
        db.write(c.to_ase(), material_id=c.material_id, energy_per_atom=-1.0)
    ds = load_dataset(tmp_path / "x.db")
    assert ds.material_ids == ["po_sc_1", "si_fcc_2", "nacl_conv_8"]
    assert ds[1].properties["energy_per_atom"] == -1.0


def test_loader_batches_and_stats(tmp_path):
    _write_benchmark(tmp_path)
    ds = load_dataset("perov_5", "val", root=tmp_path)
    batches = list(make_loader(ds, batch_size=2, shuffle=True, seed=1))
    assert [b.num_crystals for b in batches] == [2, 2, 1]
    assert sorted(i for b in batches for i in b.material_ids) == sorted(ds.material_ids)
    stats = dataset_stats(ds)
    assert stats.num_structures == 5 and sum(stats.num_atoms_hist) == 5


@pytest.mark.data
def test_real_benchmarks_sizes_and_cached_reload(data_root):
    ds = load_dataset("perov_5", "val", root=data_root)
    assert len(ds) == 3787 and not ds.failures
    assert all(c.num_atoms == 5 for c in ds)
    again = load_dataset("perov_5", "val", root=data_root)  # reload speed is measured in BENCHMARKS.md
    assert again.metadata.get("cache_file") and again.material_ids == ds.material_ids
    val = load_dataset("mp_20_reduced", "val", root=data_root)
    test_ids = set(pd.read_csv(data_root / "mp_20" / "test.csv.gz", usecols=["material_id"])["material_id"])
    assert len(val) == 905 and not set(val.material_ids) & test_ids


def test_augmented_batches_hold_the_same_crystals():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from crystalforge.data.augment import BatchAugment

    crystals = tiny_crystals()
    aug = BatchAugment(rotate=True, translate=True, permute=True, change_basis=True)
    (batch,) = list(make_loader(crystals, batch_size=5, dtype=torch.float64, augment=aug))
    batch.validate()
    matcher = StructureMatcher(primitive_cell=False, scale=False)
    for original, moved in zip(crystals, batch.split(), strict=True):
        assert not moved.allclose(original)
        assert matcher.fit(original.to_pymatgen(), moved.to_pymatgen())


def test_loader_batches_come_straight_from_the_flat_arrays():
    from crystalforge.data.loader import arrays_to_batch
    from crystalforge.io.archive import CrystalArrays

    crystals = tiny_crystals()
    crystals = [c.replace(properties={"gap": float(i)}) if i % 2 else c for i, c in enumerate(crystals)]
    arrays = CrystalArrays.from_crystals(crystals)
    order = [3, 0, 4, 1]
    batch = arrays_to_batch(arrays, order, dtype=torch.float64)
    batch.validate()
    ref = CrystalBatch.collate([crystals[i] for i in order], dtype=torch.float64)
    for name in ("atomic_numbers", "frac_coords", "lattice", "num_atoms"):
        assert torch.equal(getattr(batch, name), getattr(ref, name)), name
    assert batch.material_ids == ref.material_ids
    assert batch.condition_mask["gap"].tolist() == [True, False, False, True]
    assert torch.equal(torch.nan_to_num(batch.properties["gap"]), torch.nan_to_num(ref.properties["gap"]))
    # the selection itself is vectorised and agrees with indexing one crystal at a time
    sub = arrays.select(order)
    assert all(sub[j].allclose(crystals[i]) for j, i in enumerate(order))
