from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.features import (
    FeaturizerLike,
    cached_features,
    crystals_digest,
    featurizer_token,
)
from crystalforge.testing import tiny_crystals


class CountingFeaturizer:
    """Two features per crystal (number of atoms, volume); NaN row for crystals with > 6 atoms."""

    def __init__(self, *, scale: float = 1.0, workers: int = 1) -> None:
        self.name = "counting"
        self.scale = scale
        self.workers = workers
        self._calls = 0  # run-time state is private, so it is not part of the cache key

    @property
    def calls(self) -> int:
        return self._calls

    def featurize(self, crystals):
        self._calls += 1
        out = np.array([[c.num_atoms, c.volume] for c in crystals], dtype=np.float64).reshape(-1, 2) * self.scale
        out[[c.num_atoms > 6 for c in crystals]] = np.nan
        return out


def test_fake_satisfies_protocol():
    assert isinstance(CountingFeaturizer(), FeaturizerLike)


def test_cache_hit_returns_same_array_without_recomputing(tmp_path: Path):
    crystals = tiny_crystals()
    fz = CountingFeaturizer()
    first = cached_features(fz, crystals, cache_dir=tmp_path)
    assert fz.calls == 1 and first.shape == (5, 2) and first.dtype == np.float64
    assert np.isnan(first[2]).all()  # the 8-atom NaCl cell failed
    again = cached_features(fz, crystals, cache_dir=tmp_path)
    assert fz.calls == 1
    np.testing.assert_array_equal(first, again)  # NaN rows compare equal here
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary file left behind


def test_cache_misses_when_content_or_settings_change(tmp_path: Path):
    crystals = tiny_crystals()
    fz = CountingFeaturizer()
    cached_features(fz, crystals, cache_dir=tmp_path)
    # the same structures under another benchmark name (mp_20 / mp_20_reduced test) are a hit: the
    # cache is addressed by content, not by name
    again = cached_features(fz, [c.replace(material_id="other") for c in crystals], cache_dir=tmp_path)
    np.testing.assert_array_equal(again, cached_features(fz, crystals, cache_dir=tmp_path))
    assert fz.calls == 1
    cached_features(fz, crystals[:4], cache_dir=tmp_path)  # other crystals
    assert fz.calls == 2
    moved = [crystals[0].replace(frac_coords=[[0.1, 0.0, 0.0]]), *crystals[1:]]
    cached_features(fz, moved, cache_dir=tmp_path)  # moved atom
    assert fz.calls == 3
    other = CountingFeaturizer(scale=2.0)  # other settings
    out = cached_features(other, crystals, cache_dir=tmp_path)
    assert other.calls == 1 and out[0, 0] == 2.0
    more_workers = CountingFeaturizer(workers=4)  # workers do not change the numbers
    cached_features(more_workers, crystals, cache_dir=tmp_path)
    assert more_workers.calls == 0


def test_no_cache_dir_always_computes():
    fz = CountingFeaturizer()
    cached_features(fz, tiny_crystals(), cache_dir=None)
    cached_features(fz, tiny_crystals(), cache_dir=None)
    assert fz.calls == 2


def test_unreadable_or_misshapen_cache_is_rewritten(tmp_path: Path):
    crystals = tiny_crystals()
    fz = CountingFeaturizer()
    cached_features(fz, crystals, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not an npy file")
    out = cached_features(fz, crystals, cache_dir=tmp_path)
    assert fz.calls == 2 and out.shape == (5, 2)
    np.save(path, np.zeros((3, 2)))
    out = cached_features(fz, crystals, cache_dir=tmp_path)
    assert fz.calls == 3 and out.shape == (5, 2)
    assert cached_features(fz, crystals, cache_dir=tmp_path).shape == (5, 2) and fz.calls == 3


def test_cache_dir_is_created(tmp_path: Path):
    target = tmp_path / "deep" / "er"
    cached_features(CountingFeaturizer(), tiny_crystals(), cache_dir=target)
    assert len(list(target.glob("*.npy"))) == 1


def test_bad_featurizer_output_raises():
    class Broken:
        name = "broken"

        def featurize(self, crystals):
            return np.zeros(len(crystals))

    with pytest.raises(ValueError, match="expected"):
        cached_features(Broken(), tiny_crystals(), cache_dir=None)


def test_digest_rounds_to_1e6_and_sees_order_and_species():
    crystals = tiny_crystals()
    base = crystals_digest(crystals)
    assert base == crystals_digest(tiny_crystals())
    po = crystals[0]
    nudged = Crystal(po.atomic_numbers, po.frac_coords + 1e-10 + 0.25, po.lattice + 1e-10)
    shifted = Crystal(po.atomic_numbers, po.frac_coords + 0.25, po.lattice)
    assert crystals_digest([nudged]) == crystals_digest([shifted])
    assert crystals_digest(crystals[::-1]) != base
    assert crystals_digest([po.replace(atomic_numbers=[83])]) != crystals_digest([po])
    assert crystals_digest([]) != crystals_digest([po])


def test_featurizer_token_sees_settings_not_runtime_state():
    a, b = CountingFeaturizer(), CountingFeaturizer(workers=8)
    b.featurize(tiny_crystals())
    b.failures = ["something"]
    assert featurizer_token(a) == featurizer_token(b)
    assert featurizer_token(a) != featurizer_token(CountingFeaturizer(scale=3.0))
    a.scaler = (np.zeros(2), np.ones(2))
    b.scaler = (np.zeros(2), np.full(2, 2.0))
    assert featurizer_token(a) != featurizer_token(b)
    a.cache_token = b.cache_token = "v1"
    assert featurizer_token(a) == featurizer_token(b)


def test_chunked_cache_resumes_after_an_interruption(tmp_path: Path, monkeypatch):
    crystals = tiny_crystals()  # 5 crystals: chunks of 2, 2, 1
    whole = cached_features(CountingFeaturizer(), crystals, cache_dir=None)
    real = CountingFeaturizer.featurize

    def dies_on_third_call(self, chunk):  # a job killed while on its third chunk
        if self.calls == 2:
            raise RuntimeError("killed")
        return real(self, chunk)

    with monkeypatch.context() as m:
        m.setattr(CountingFeaturizer, "featurize", dies_on_third_call)  # same class: same cache key
        with pytest.raises(RuntimeError, match="killed"):
            cached_features(CountingFeaturizer(), crystals, cache_dir=tmp_path, chunk_size=2)
    (parts,) = tmp_path.glob("*.parts")
    assert len(list(parts.glob("*.npy"))) == 2  # the two finished chunks were kept
    assert not list(tmp_path.glob("*.npy"))  # no whole-array file for an unfinished run
    rerun = CountingFeaturizer()
    out = cached_features(rerun, crystals, cache_dir=tmp_path, chunk_size=2)
    assert rerun.calls == 1  # only the last chunk was computed
    np.testing.assert_array_equal(out, whole)
    assert not parts.exists() and len(list(tmp_path.glob("*.npy"))) == 1  # parts removed once whole
    # the whole file is the same cache entry an unchunked call reads
    again = CountingFeaturizer()
    np.testing.assert_array_equal(cached_features(again, crystals, cache_dir=tmp_path), whole)
    assert again.calls == 0


def test_chunk_size_is_validated(tmp_path: Path):
    with pytest.raises(ValueError, match="chunk_size"):
        cached_features(CountingFeaturizer(), tiny_crystals(), cache_dir=tmp_path, chunk_size=0)
