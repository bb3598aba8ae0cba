"""A per-structure time limit stops a step a library hangs on; the structure is flagged and the run goes on.

The hanging input is real: simple-cubic Po (a = 3.359 Å) written in the unimodular basis
``[[1, 0, 0], [297, 1, 0], [0, 297, 1]]`` (the same lattice, two vectors of 998 Å). It passes
``Crystal`` validation and ``core.limits``, and pymatgen's Niggli reduction of it spends about
15 s (this machine) in a C neighbour search (``find_points_in_spheres``) that SIGALRM cannot
interrupt; CrystalNN spends about 45 s on it. Uniqueness, novelty and CSP matching all reduce it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.limits import check_limits
from crystalforge.evaluation.context import DEFAULT_TIME_LIMIT_S, TIME_LIMIT_ENV, time_limit_from_env
from crystalforge.evaluation.features import cached_features
from crystalforge.evaluation.metrics import symmetry
from crystalforge.evaluation.run import evaluate_candidates
from crystalforge.execution.time_limit import StepAbortedError, StepTimeoutError, map_with_time_limit
from crystalforge.testing import tiny_crystals

pytest.importorskip("smact")

TINY = {c.material_id: c for c in tiny_crystals()}
SKEW = np.array([[1.0, 0.0, 0.0], [297.0, 1.0, 0.0], [0.0, 297.0, 1.0]])


def skewed_po(material_id: str = "po_skewed") -> Crystal:
    """Simple-cubic Po in an extremely skewed (but exact, unimodular) basis."""
    po = TINY["po_sc_1"]
    return Crystal(po.atomic_numbers, po.frac_coords, SKEW @ po.lattice, material_id=material_id)


# ---- the helper ---------------------------------------------------------------------------------------
def _sleepy(x: float) -> float:
    time.sleep(x)
    return x


def _raises(x: int) -> int:
    if x == 2:
        raise KeyError("two")
    return x


def _dies(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    return x


def test_calls_over_the_limit_are_killed_and_the_rest_run_in_order() -> None:
    start = time.perf_counter()
    out = map_with_time_limit(_sleepy, [0.0, 30.0, 0.01, 30.0, 0.0], seconds=0.5, step="napping")
    assert time.perf_counter() - start < 10  # two 30 s sleeps, each stopped at 0.5 s
    assert [out[0], out[2], out[4]] == [0.0, 0.01, 0.0]
    for stopped in (out[1], out[3]):
        assert isinstance(stopped, StepTimeoutError) and str(stopped) == "timed out after 0.5 s in napping"


def test_a_crash_costs_one_item_and_an_exception_is_raised_as_in_a_loop() -> None:
    out = map_with_time_limit(_dies, [1, 2, 3], seconds=5, step="dying")
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], StepAbortedError) and str(out[1]) == "the worker process died (exit code -9) in dying"
    with pytest.raises(KeyError, match="two"):
        map_with_time_limit(_raises, [1, 2, 3], seconds=5, step="raising")
    assert map_with_time_limit(_raises, [1, 3], seconds=None, step="unlimited") == [1, 3]


# ---- the metrics --------------------------------------------------------------------------------------
def test_niggli_hang_is_flagged_in_uniqueness_and_novelty_and_the_run_continues() -> None:
    skewed = skewed_po()
    assert check_limits(skewed) is skewed  # a valid crystal within every resource limit
    samples = [TINY["po_sc_1"], skewed, TINY["si_fcc_2"], TINY["nacl_conv_8"]]
    start = time.perf_counter()
    report = evaluate_candidates(
        [Candidate.of(c) for c in samples],
        reference=None,
        reference_name=None,
        train=[TINY["po_sc_1"], TINY["si_fcc_2"]],
        train_name="tiny",
        time_limit_s=1.0,
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 20, elapsed  # unlimited, the reduction alone takes ~15 s
    rows = {r["material_id"]: r for r in report.per_structure}
    flagged = rows["po_skewed"]
    assert flagged["failure"] == "timed out after 1 s in Niggli reduction"
    assert report.details["aborted"] == [
        {"index": 1, "source": "po_skewed", "material_id": "po_skewed", "reason": flagged["failure"]}
    ]
    # the other structures are scored as usual: Po and Si are in the training set, NaCl is not
    assert rows["po_sc_1"]["novel"] is False and rows["si_fcc_2"]["novel"] is False and rows["nacl_conv_8"]["novel"]
    assert rows["po_sc_1"]["unique"] and rows["po_sc_1"]["failure"] is None
    assert report.protocol["time_limit_s"] == 1.0 and "errors" not in report.protocol


def test_csp_matching_hang_is_flagged_and_other_pairs_match() -> None:
    po, si = TINY["po_sc_1"], TINY["si_fcc_2"]
    predictions = [skewed_po("po_sc_1_0"), po.replace(material_id="po_sc_1_1"), si.replace(material_id="si_fcc_2")]
    report = evaluate_candidates(
        [Candidate.of(c) for c in predictions], task="csp", reference=[po, si], reference_name="tiny", time_limit_s=1.0
    )
    rows = {r["material_id"]: r for r in report.per_structure}
    assert rows["po_sc_1_0"]["csp_reason"] == "matcher error: timed out after 1 s in structure matching"
    assert rows["po_sc_1_0"]["failure"] == rows["po_sc_1_0"]["csp_reason"]
    assert rows["po_sc_1_1"]["csp_matched"] and rows["si_fcc_2"]["csp_matched"]
    assert report["match_rate_k"] == 100.0  # best of k: the hung prediction did not cost Po its match


def test_spglib_hang_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    real = symmetry._analyse

    def stuck_on_po(cell: tuple[np.ndarray, ...], symprec: float, angle_tolerance: float) -> symmetry.SpaceGroupResult:
        if 84 in cell[2]:
            time.sleep(60)  # stands in for a spglib call that never returns
        return real(cell, symprec, angle_tolerance)

    monkeypatch.setattr(symmetry, "_analyse", stuck_on_po)
    report = symmetry.symmetry_report([TINY["si_fcc_2"], TINY["po_sc_1"]], time_limit_s=0.5)
    si, po = report.crystals
    assert si.number == 227 and not si.aborted
    assert po.aborted and po.number is None and po.reason == "timed out after 0.5 s in spglib symmetry analysis"
    assert report.n_failed == 1 and report.symmetric_rate == 100.0


class _SlowOnPo:
    """A fingerprint (atom count, volume) that never returns for polonium."""

    name = "slow_on_po"

    def featurize(self, crystals: list[Crystal]) -> np.ndarray:
        for c in crystals:
            if 84 in c.atomic_numbers:
                time.sleep(60)
        return np.array([[c.num_atoms, c.volume] for c in crystals], dtype=np.float64).reshape(-1, 2)


def test_a_hanging_fingerprint_gets_a_nan_row_and_is_not_cached(tmp_path: Path) -> None:
    crystals = [TINY["si_fcc_2"], TINY["po_sc_1"], TINY["nacl_conv_8"]]
    aborted: dict[int, str] = {}
    features = cached_features(_SlowOnPo(), crystals, cache_dir=tmp_path, time_limit_s=0.5, aborted=aborted)
    assert aborted == {1: "timed out after 0.5 s in slow_on_po fingerprint"}
    assert np.isnan(features[1]).all()
    np.testing.assert_allclose(features[[0, 2]], [[2, TINY["si_fcc_2"].volume], [8, TINY["nacl_conv_8"].volume]])
    assert not list(tmp_path.glob("*.npy"))  # a later run (a higher limit) tries Po again


def test_a_chunk_where_every_crystal_hangs_gets_nan_rows_of_the_featurizers_width(tmp_path: Path) -> None:
    aborted: dict[int, str] = {}
    features = cached_features(_SlowOnPo(), [TINY["po_sc_1"]], cache_dir=tmp_path, time_limit_s=0.5, aborted=aborted)
    assert aborted == {0: "timed out after 0.5 s in slow_on_po fingerprint"}
    assert features.shape == (1, 2) and np.isnan(features).all()


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIME_LIMIT_ENV, raising=False)
    assert time_limit_from_env() == DEFAULT_TIME_LIMIT_S == 60.0
    monkeypatch.setenv(TIME_LIMIT_ENV, "2.5")
    assert time_limit_from_env() == 2.5
    monkeypatch.setenv(TIME_LIMIT_ENV, "none")
    assert time_limit_from_env() is None
    monkeypatch.setenv(TIME_LIMIT_ENV, "-1")
    with pytest.raises(ValueError, match=TIME_LIMIT_ENV):
        time_limit_from_env()


def test_cli_time_limit_flag_reaches_the_metrics(tmp_path: Path) -> None:
    from crystalforge.cli.main import main
    from crystalforge.io.files import write_structures

    samples = write_structures([TINY["po_sc_1"], skewed_po(), TINY["nacl_conv_8"]], tmp_path / "s.extxyz")
    out = tmp_path / "eval"
    argv = ["evaluate", str(samples), "--reference", "none", "--train", "none", "--time-limit", "1", "--out", str(out)]
    start = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - start < 30
    table = (out / "per_structure.csv").read_text()
    assert "timed out after 1 s in Niggli reduction" in table
    assert table.count("timed out") == 1


def test_design_dedupe_keeps_to_the_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crystalforge.design.spec import DesignSpec
    from crystalforge.design.stages import DesignContext, dedupe, filter_candidates
    from crystalforge.design.store import CandidateStore

    monkeypatch.setenv(TIME_LIMIT_ENV, "1")
    po, si = TINY["po_sc_1"], TINY["si_fcc_2"]
    store = CandidateStore(tmp_path / "candidates.db")
    batch = [po, skewed_po(), si, po.replace(material_id="po_again")]
    keys = store.add([Candidate.of(c, f"gen/{i}") for i, c in enumerate(batch)], round=0)
    ctx = DesignContext(DesignSpec(out=str(tmp_path), train="none", comp_valid=False), store, tmp_path)
    filter_candidates(ctx)
    start = time.perf_counter()
    assert dedupe(ctx) == 4
    assert time.perf_counter() - start < 8, "the limit did not stop the reduction"  # unlimited: 10-15 s
    rows = {r["cid"]: r for r in store.table()}
    assert rows[keys[1]]["dedupe"] == "done" and rows[keys[1]]["dedupe_duplicate_of"] == ""  # over the limit: kept
    assert rows[keys[3]]["dedupe"] == "rejected" and rows[keys[3]]["dedupe_duplicate_of"] == keys[0]
