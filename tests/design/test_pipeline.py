"""The design pipeline on a shipped model with a fake relaxer: funnel, resume after a crash, extension, export."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from crystalforge import api
from crystalforge.core.candidate import Candidate
from crystalforge.core.extras import MissingDependencyError
from crystalforge.design.generation import batch_seed, plan_batches
from crystalforge.design.pipeline import run_design
from crystalforge.design.spec import STAGES, DesignSpec
from crystalforge.design.stages import DesignContext, dedupe, relax_selection
from crystalforge.design.store import CandidateStore
from crystalforge.io.files import read_structures, write_structures
from crystalforge.relax.interfaces import RelaxResult
from crystalforge.testing import tiny_crystals

SPEC = {
    "model": "perov_5-dng", "steps": 8, "budget": 16, "batch_size": 8, "relax_budget": 5, "top": 3,
    "targets": ("band_gap=0..4",), "route": "importance", "oversample": 2, "train": "none", "report": False,
}  # fmt: skip


class FakeRelaxer:
    """Returns each input 2 % larger with -5 eV/atom; raises on call number ``crash_at`` (a simulated kill)."""

    name = "fake"

    def __init__(self, crash_at: int | None = None) -> None:
        self.settings: dict[str, object] = {}
        self.crash_at = crash_at
        self.calls = 0
        self.relaxed = 0

    def relax(self, crystals):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash in the relax stage")
        self.relaxed += len(crystals)
        return [
            RelaxResult(c.replace(lattice=c.lattice * 1.02), -5.0 * c.num_atoms, -5.0, steps=7, converged=True)
            for c in crystals
        ]


class CountingGenerate:
    """``api.generate``, counting the batches it is asked for."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, model, **kwargs):
        self.batches.append(kwargs["seed"])
        return api.generate(model, **kwargs)


def _design(out, generate=None, relaxer=None, **changes):
    return run_design(DesignSpec(**{**SPEC, **changes, "out": str(out)}), generate=generate or CountingGenerate(),
                      relax_with=relaxer or FakeRelaxer())  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (module-wide: tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("design") / "run"
    relaxer = FakeRelaxer()
    result = _design(out, relaxer=relaxer)
    return out, result, relaxer


def _copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def test_the_funnel_adds_up(finished):
    out, result, relaxer = finished
    store = CandidateStore(out / "candidates.db")
    table = store.table()
    assert len(table) == SPEC["budget"] and result.funnel["generate"] == SPEC["budget"]
    counts = [result.funnel[s] for s in ("generate", *STAGES)]
    assert counts == sorted(counts, reverse=True)  # each stage passes at most what the one before passed
    assert result.funnel == {"generate": len(table), **store.funnel(STAGES)}
    filtered = [r for r in table if r.get("filter") is not None]
    assert len(filtered) == len(table)  # every candidate has a filter verdict (a missing structure included)
    assert all(r["filter_reason"] for r in filtered if r["filter"] == "rejected")
    assert all(isinstance(r["filter_struct_valid"], bool) for r in filtered if r["natoms"])
    # dedupe saw exactly the filter's survivors; screen exactly dedupe's
    assert sum(r.get("dedupe") is not None for r in table) == result.funnel["filter"]
    assert sum(r.get("screen") is not None for r in table) == result.funnel["dedupe"]
    relaxed = [r for r in table if r.get("relax") is not None]
    assert len(relaxed) == min(SPEC["relax_budget"], result.funnel["screen"]) == relaxer.relaxed
    assert {str(r["cid"]) for r in relaxed} == set(relax_selection(table, SPEC["relax_budget"]))
    best_unrelaxed = min((r["screen_score"] for r in table if r.get("screen") and not r.get("relax")), default=None)
    assert best_unrelaxed is None or all(r["screen_score"] <= best_unrelaxed for r in relaxed)
    for r in relaxed:
        assert r["relax_energy_per_atom"] == -5.0 and r["relax_steps"] == 7 and r["relax_converged"] is True
        assert isinstance(r["relax_space_group"], str) and r["relax_space_group"]
    ranked = sorted((r for r in table if r.get("rank") == "done"), key=lambda r: r["rank_position"])
    assert [r["rank_position"] for r in ranked] == list(range(1, len(ranked) + 1))
    for r in ranked:
        assert np.isfinite(r["hull_e_above_hull"]) and r["predict_band_gap_std"] > 0
        assert r["predict_in_window"] == (0 <= r["predict_band_gap_mean"] <= 4)
    meta = json.loads((out / "design.json").read_text())
    assert meta["format_version"] == 1 and meta["funnel"] == result.funnel and meta["rounds"] == [16]
    assert meta["top"] == [r["cid"] for r in ranked[: SPEC["top"]]] == [r["cid"] for r in result.top]
    assert set(meta["stages"]) == {"generate", *STAGES} and meta["finished"] is not None
    assert meta["targets"] == [{"property": "band_gap", "low": 0.0, "high": 4.0}]
    assert "design" in result.summary() and f"{SPEC['budget']} generated" in result.summary()


def test_the_top_cifs_exist_and_parse(finished):
    out, result, _ = finished
    assert result.top, "the fake relaxer's candidates should reach the ranking"
    with (out / "top.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cid"] for row in rows] == [r["cid"] for r in result.top]
    store = CandidateStore(out / "candidates.db")
    for position, row in enumerate(rows, start=1):
        assert row["rank_position"] == str(position)
        p1, symmetrized = out / row["cif"], out / row["cif_symmetrized"]
        assert p1.name.startswith(f"{position:02d}_{row['cid']}_") and p1.parent == out / "top"
        [crystal] = read_structures(p1)
        [stored] = [c.crystal for c in store.candidates([row["cid"]])]
        assert stored is not None and sorted(crystal.atomic_numbers) == sorted(stored.atomic_numbers)
        assert np.isclose(crystal.volume, stored.volume)  # the relaxed structure (2 % larger per axis)
        assert symmetrized.parent == out / "top" / "symmetrized" and read_structures(symmetrized)
        e_hull = float(row["hull_e_above_hull"])  # flagged exactly when below the spec's suspect_e_hull
        assert row["hull_suspect"] == str(e_hull < DesignSpec().suspect_e_hull)


def test_suspect_e_hull_is_flagged_and_not_ranked_first_for_its_depth():
    from crystalforge.design.export import suspect
    from crystalforge.design.rank import rank

    assert suspect(-0.5, -0.2) and not suspect(-0.1, -0.2) and not suspect(float("nan"), -0.2)
    assert not suspect(-5.0, None) and not suspect(None, -0.2)
    spec = DesignSpec(targets=("band_gap=1..2",))
    rows = [  # a deep "stable" artefact in the window, a metastable hit, a stable hit
        {"hull_e_above_hull": -0.9, "predict_band_gap_mean": 1.5, "predict_band_gap_std": 0.1},
        {"hull_e_above_hull": 0.05, "predict_band_gap_mean": 1.5, "predict_band_gap_std": 0.1},
        {"hull_e_above_hull": -0.1, "predict_band_gap_mean": 1.5, "predict_band_gap_std": 0.1},
    ]
    assert rank(rows, spec.ranking_objectives(), by="score").order.tolist() == [2, 1, 0]
    off = spec.replace(suspect_e_hull=None)  # off: every E_hull <= 0 counts as on the hull, the artefact too
    assert set(rank(rows, off.ranking_objectives(), by="score").order.tolist()[:2]) == {0, 2}


def test_a_crash_in_relax_resumes_without_redoing_finished_work(finished, tmp_path):
    fresh = tmp_path / "fresh"
    generate = CountingGenerate()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _design(fresh, generate=generate, relaxer=FakeRelaxer(crash_at=3))
    assert len(generate.batches) == 2
    store = CandidateStore(fresh / "candidates.db")
    assert sum(store.status("relax", k) is not None for k in store.keys) == 2  # two finished before the crash
    again, relaxer = CountingGenerate(), FakeRelaxer()
    result = _design(fresh, generate=again, relaxer=relaxer)
    assert again.batches == []  # stored batches are never generated again
    assert relaxer.relaxed == SPEC["relax_budget"] - 2  # only the relaxations still missing
    assert result.funnel == finished[1].funnel  # the same run as the uninterrupted one
    assert [r["cid"] for r in result.top] == [r["cid"] for r in finished[1].top]
    rerun = FakeRelaxer()
    _design(fresh, generate=again, relaxer=rerun)  # a finished run: nothing to do
    assert rerun.calls == 0 and again.batches == []


def test_a_raised_budget_adds_a_round_and_keeps_old_results(finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = {r["cid"]: r for r in CandidateStore(out / "candidates.db").table()}
    generate, relaxer = CountingGenerate(), FakeRelaxer()
    result = _design(out, generate=generate, relaxer=relaxer, budget=24, relax_budget=7)
    assert len(generate.batches) == 1 and generate.batches[0] == batch_seed(0, 1, 0)
    table = {r["cid"]: r for r in CandidateStore(out / "candidates.db").table()}
    assert len(table) == 24 and sorted(k for k in table if k.startswith("r001-")) == [f"r001-{i:06d}" for i in range(8)]
    for key, row in before.items():  # earlier results stay as they were
        for name in ("filter", "dedupe", "screen_score", "relax_energy_per_atom", "hull_e_above_hull"):
            assert table[key].get(name) == row.get(name)
    relaxed_before = {k for k, r in before.items() if r.get("relax") is not None}
    relaxed_now = {k for k, r in table.items() if r.get("relax") is not None}
    selection = set(relax_selection(list(table.values()), 7))  # the best 7 by screen score, both rounds
    assert relaxed_now == relaxed_before | selection
    assert relaxer.relaxed == len(selection - relaxed_before)  # nothing relaxed twice
    assert result.funnel["generate"] == 24 and len(result.top) == min(3, result.funnel["rank"])
    assert json.loads((out / "design.json").read_text())["rounds"] == [16, 8]
    with pytest.raises(ValueError, match=r"steps: 8 before, 9 now"):  # other settings: refused, nothing done
        _design(out, steps=9, budget=24)


def test_batches_are_planned_and_seeded_by_round_and_batch():
    batches = plan_batches([20, 5], 8)
    assert [(b.round, b.index, b.start, b.n) for b in batches] == [(0, 0, 0, 8), (0, 1, 8, 8), (0, 2, 16, 4),
                                                                   (1, 0, 0, 5)]  # fmt: skip
    seeds = {batch_seed(0, b.round, b.index) for b in batches}
    assert len(seeds) == 4 and batch_seed(0, 1, 0) == batch_seed(0, 1, 0) != batch_seed(1, 1, 0)


def test_dedupe_finds_duplicates_across_runs_and_training_matches(tmp_path):
    po, si, nacl, tri, _ = tiny_crystals()
    train = tmp_path / "train.extxyz"
    write_structures([nacl], train)
    store = CandidateStore(tmp_path / "run" / "candidates.db")
    spec = DesignSpec(train=str(train), out=str(tmp_path / "run"))
    ctx = DesignContext(spec, store, tmp_path / "run")
    first = store.add([Candidate.of(c) for c in (si, tri)], round=0)
    for key in first:
        store.record("filter", key)
    dedupe(ctx)
    shifted = si.replace(frac_coords=(si.frac_coords + 0.13) % 1.0)  # the same crystal, translated
    later = store.add([Candidate.of(c) for c in (shifted, nacl, po)], round=1)
    for key in later:
        store.record("filter", key)
    assert dedupe(ctx) == 3
    rows = {r["cid"]: r for r in store.table()}
    assert rows[first[0]]["dedupe"] == "done" and rows[first[0]]["dedupe_novel"] is True
    assert rows[later[0]]["dedupe"] == "rejected" and rows[later[0]]["dedupe_duplicate_of"] == first[0]
    assert rows[later[1]]["dedupe"] == "rejected" and rows[later[1]]["dedupe_novel"] is False
    assert rows[later[1]]["dedupe_match"] == "nacl_conv_8" and "training" in rows[later[1]]["dedupe_reason"]
    assert rows[later[2]]["dedupe"] == "done" and rows[later[2]]["dedupe_match"] == ""


def test_a_missing_mlip_stops_the_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "chgnet", None)  # as if the relax extra were not installed
    generate = CountingGenerate()
    with pytest.raises(MissingDependencyError, match=r"crystalforge\[relax\]"):
        run_design(DesignSpec(**{**SPEC, "out": str(tmp_path / "run")}), generate=generate)
    assert generate.batches == [] and not (tmp_path / "run" / "design.json").exists()


def test_the_filter_records_distance_validity_and_why(tmp_path):
    from crystalforge.design.stages import filter_candidates, min_distance

    po, si, nacl, _, _ = tiny_crystals()
    close = si.replace(frac_coords=[[0.0, 0.0, 0.0], [0.03, 0.03, 0.03]], material_id="si_close")
    store = CandidateStore(tmp_path / "run" / "candidates.db")
    keys = store.add([Candidate.of(c) for c in (si, nacl, close, po)], round=0)
    spec = DesignSpec(elements="Si,Na,Cl", out=str(tmp_path / "run"))
    assert filter_candidates(DesignContext(spec, store, tmp_path / "run")) == 4
    rows = {r["cid"]: r for r in store.table()}
    si_row, nacl_row, close_row, po_row = (rows[k] for k in keys)
    assert si_row["filter"] == "done" and si_row["filter_min_distance"] == pytest.approx(5.431 * 3**0.5 / 4)
    assert nacl_row["filter"] == "done" and nacl_row["filter_min_distance"] == pytest.approx(2.82)
    assert close_row["filter"] == "rejected" and close_row["filter_struct_valid"] is False
    assert close_row["filter_min_distance"] < 0.5 and "apart" in close_row["filter_reason"]
    assert po_row["filter"] == "rejected" and "elements Po not allowed" in po_row["filter_reason"]
    assert np.isnan(min_distance(po))  # one atom: no pair
    assert filter_candidates(DesignContext(spec, store, tmp_path / "run")) == 0  # done once
