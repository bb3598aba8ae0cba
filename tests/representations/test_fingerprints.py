from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.extras import MissingDependencyError
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    translate,
)
from crystalforge.execution import ExecutorConfig
from crystalforge.representations import fingerprints
from crystalforge.representations.fingerprints import (
    FEATURIZERS,
    CrystalNNFingerprint,
    Featurizer,
    MagpieComposition,
    SineCoulombMatrix,
    XRDPattern,
    get_featurizer,
)
from crystalforge.testing import tiny_crystals

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CRYSTALFORGE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
SCALER_PATH = DATA_DIR / "cdvae_comp_scaler.json"

TINY = tiny_crystals()
EXPECTED_DIMS = {"magpie": 132, "crystalnn": 61, "sine_coulomb": 52, "xrd": 512}
# Og has no CrystalNN radius, no X-ray scattering factors and no Magpie data
OGANESSON = Crystal([118], [[0.0, 0.0, 0.0]], np.eye(3) * 4.0, material_id="og-cubic")


@pytest.fixture(scope="module")
def tiny_features() -> dict[str, np.ndarray]:
    return {name: get_featurizer(name).featurize(TINY) for name in FEATURIZERS}


def _transformed(kind: str, seed: int = 0) -> list[Crystal]:
    batch = CrystalBatch.collate(TINY, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    b = batch.num_crystals
    if kind == "rotation":
        moved = rotate(batch, random_rotations(b, generator=gen))
    elif kind == "translation":
        moved = translate(batch, torch.rand(b, 3, generator=gen, dtype=torch.float64))
    elif kind == "permutation":
        moved = permute(batch, random_permutation(batch, generator=gen))
    elif kind == "change_basis":
        moved = change_basis(batch, random_unimodular(b, generator=gen))
    else:
        raise ValueError(kind)
    return moved.split()


@pytest.mark.parametrize("name", list(FEATURIZERS))
def test_shapes_dims_and_labels(name: str, tiny_features: dict[str, np.ndarray]):
    featurizer = get_featurizer(name)
    assert isinstance(featurizer, Featurizer)
    assert featurizer.name == name
    assert featurizer.dim == EXPECTED_DIMS[name]
    assert len(featurizer.labels()) == featurizer.dim
    features = tiny_features[name]
    assert features.shape == (len(TINY), EXPECTED_DIMS[name])
    assert features.dtype == np.float64
    assert np.isfinite(features).all()
    assert featurizer.featurize([]).shape == (0, featurizer.dim)


def test_fixed_dims_follow_arguments():
    assert SineCoulombMatrix(max_atoms=10).featurize(TINY).shape == (len(TINY), 10)
    xrd = XRDPattern(num_bins=64).featurize(TINY)
    assert xrd.shape == (len(TINY), 64)
    np.testing.assert_allclose(xrd.max(axis=1), 1.0)
    binned = XRDPattern(num_bins=64, sigma=0.0).featurize(TINY)
    np.testing.assert_allclose(binned.max(axis=1), 1.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_crystalnn_is_mean_of_site_fingerprints():
    from matminer.featurizers.site import CrystalNNFingerprint as MatminerCrystalNN

    nacl = TINY[2]
    structure = nacl.to_pymatgen()
    reference = MatminerCrystalNN.from_preset("ops")
    expected = np.mean([reference.featurize(structure, i) for i in range(len(structure))], axis=0)
    np.testing.assert_allclose(CrystalNNFingerprint().featurize([nacl])[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["rotation", "translation", "permutation", "change_basis"])
@pytest.mark.parametrize("name", ["magpie", "crystalnn", "xrd"])
def test_invariances(name: str, kind: str, tiny_features: dict[str, np.ndarray]):
    # CrystalNN's order parameters use arccos/sqrt near ±1 for high-symmetry sites, so a rotation
    # moves them by ~1e-8 (edge_3); everything else agrees to machine precision.
    moved = get_featurizer(name).featurize(_transformed(kind))
    np.testing.assert_allclose(moved, tiny_features[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["rotation", "translation", "permutation"])
def test_sine_coulomb_invariances(kind: str, tiny_features: dict[str, np.ndarray]):
    moved = SineCoulombMatrix().featurize(_transformed(kind))
    np.testing.assert_allclose(moved, tiny_features["sine_coulomb"], rtol=0, atol=1e-8)


@pytest.mark.skipif(not SCALER_PATH.exists(), reason=f"{SCALER_PATH} is absent")
def test_magpie_scaler_from_shared_json(tiny_features: dict[str, np.ndarray]):
    raw_scaler = json.loads(SCALER_PATH.read_text())
    means, stds = np.asarray(raw_scaler["means"]), np.asarray(raw_scaler["stds"])
    crystals = [*TINY, OGANESSON]
    scaled = MagpieComposition(scaler=SCALER_PATH).featurize(crystals)
    raw = MagpieComposition().featurize(crystals)
    assert np.isnan(raw[-1]).all()  # no Magpie data for Og: NaN values, not a failure
    expected = np.nan_to_num((raw - means) / stds, nan=0.0)  # NaN -> 0 after normalisation (CDVAE)
    np.testing.assert_allclose(scaled, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(scaled[-1], 0.0)
    as_pair = MagpieComposition(scaler=(means.tolist(), stds.tolist())).featurize(TINY)
    np.testing.assert_allclose(as_pair, scaled[:-1], rtol=0, atol=0)
    np.testing.assert_allclose(raw[:-1], tiny_features["magpie"], rtol=0, atol=0)


def test_magpie_scaler_keeps_failed_rows_nan():
    class Flaky(MagpieComposition):
        def _featurize_one(self, crystal, impl):
            if crystal.material_id == "nacl_conv_8":
                raise RuntimeError("simulated library failure")
            return super()._featurize_one(crystal, impl)

    out = Flaky(scaler=(np.zeros(132), np.ones(132))).featurize(TINY)
    assert np.isnan(out[2]).all()
    assert np.isfinite(np.delete(out, 2, axis=0)).all()


def test_bad_scaler_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="132"):
        MagpieComposition(scaler=([0.0] * 3, [1.0] * 3))
    bad = tmp_path / "scaler.json"
    bad.write_text(json.dumps({"means": [0.0]}))
    with pytest.raises(ValueError, match="stds"):
        MagpieComposition(scaler=bad)


@pytest.mark.parametrize(
    ("featurizer", "bad", "reason"),
    [
        (CrystalNNFingerprint(), OGANESSON, "Error"),  # matminer fails inside CrystalNN (no radius for Og)
        # generated 0.04 and 0.22 A^3 cells kept CrystalNN busy for minutes: refused before the library runs
        (
            CrystalNNFingerprint(),
            Crystal([6, 8], [[0, 0, 0], [0.5, 0.5, 0.5]], np.diag([1.0, 1.0, 0.05]), material_id="flat"),
            "0.025 A^3 per atom is below 1.0",
        ),
        (  # above CDVAE's 0.1 A^3 for the cell, but 0.75 A^3 per atom
            CrystalNNFingerprint(),
            Crystal([6, 8], [[0, 0, 0], [0.5, 0.5, 0.5]], np.diag([1.0, 1.0, 1.5]), material_id="dense"),
            "0.75 A^3 per atom is below 1.0",
        ),
        (XRDPattern(), OGANESSON, "scattering"),
        (SineCoulombMatrix(max_atoms=4), TINY[2], "max_atoms"),
    ],
    ids=["crystalnn", "crystalnn_flat_cell", "crystalnn_dense_cell", "xrd", "sine_coulomb"],
)
def test_unfeaturizable_crystal_gives_nan_row_and_report(featurizer, bad: Crystal, reason: str, caplog):
    crystals = [TINY[0], bad, TINY[1]]
    with caplog.at_level(logging.WARNING, logger=fingerprints.__name__):
        out = featurizer.featurize(crystals)
    assert out.shape == (3, featurizer.dim)
    assert np.isnan(out[1]).all()
    assert np.isfinite(out[[0, 2]]).all()
    assert featurizer.failed_indices == [1]
    failure = featurizer.failures[0]
    assert isinstance(failure, Candidate) and failure.crystal is None
    assert failure.material_id == bad.material_id and failure.source == f"crystal 1 ({bad.material_id})"
    assert reason in failure.error and str(failure) == f"crystal 1 ({bad.material_id}): {failure.error}"
    assert bad.material_id in caplog.text
    featurizer.featurize(TINY[:1])
    assert featurizer.failures == [] and featurizer.failed_indices == []  # the report is per call


def test_workers_give_the_same_rows_and_failures():
    crystals = [*TINY, OGANESSON, *TINY]
    serial = XRDPattern(num_bins=128)
    expected = serial.featurize(crystals)
    parallel = XRDPattern(num_bins=128, workers=2)
    out = parallel.featurize(crystals)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, rtol=0, atol=0)
    assert parallel.failed_indices == [len(TINY)] and [f.material_id for f in parallel.failures] == ["og-cubic"]
    assert parallel.failures == serial.failures
    magpie = MagpieComposition(workers=ExecutorConfig(workers=2)).featurize(TINY)
    np.testing.assert_allclose(magpie, MagpieComposition().featurize(TINY), rtol=0, atol=0)


def test_unknown_name_and_bad_arguments():
    with pytest.raises(KeyError, match="crystalnn"):
        get_featurizer("soap")
    with pytest.raises(ValueError, match="workers"):
        get_featurizer("magpie", workers=0)
    with pytest.raises(TypeError, match="Crystal"):
        XRDPattern().featurize([TINY[0].to_pymatgen()])


def test_missing_matminer_raises_at_construction_naming_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matminer", None)  # as if matminer were not installed
    for name in ("magpie", "crystalnn", "sine_coulomb"):
        with pytest.raises(MissingDependencyError, match=r'pip install "crystalforge\[descriptors\]"') as info:
            get_featurizer(name)  # before any work, not inside featurize or a worker
        assert info.value.extra == "descriptors"
    assert XRDPattern().featurize(TINY[:1]).shape == (1, 512)  # pymatgen only


def test_failure_bookkeeping_is_not_part_of_the_cache_identity():
    from crystalforge.evaluation.features import featurizer_token

    featurizer = XRDPattern(num_bins=16)
    before = featurizer_token(featurizer)
    featurizer.featurize([TINY[0], OGANESSON])
    assert featurizer.failed_indices == [1] and featurizer_token(featurizer) == before
    assert featurizer_token(XRDPattern(num_bins=16, workers=ExecutorConfig(workers=2))) == before
