"""Rounds and active learning of the design pipeline, with a fake relaxer: surrogates per round, the next
screen uses them, the fine-tune learns, a crash between rounds resumes without refitting, options parse."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import crystalforge.design.active as active
from crystalforge.cli.design import spec_options
from crystalforge.cli.main import build_parser, main
from crystalforge.design.active import relax_shares, round_selection, split_evenly
from crystalforge.design.pipeline import run_design
from crystalforge.design.spec import DesignSpec, SpecError, load_spec
from crystalforge.design.store import CandidateStore
from crystalforge.predictors.ensemble import PredictorEnsemble
from crystalforge.predictors.shipped import load_predictor
from crystalforge.predictors.training import predict_crystals
from tests.design.test_pipeline import SPEC, CountingGenerate, FakeRelaxer

LEARN = {**SPEC, "budget": 24, "rounds": 3, "relax_budget": 9, "active_learning": True}
"""Three rounds of 8 candidates, 3 relaxations each (the fake relaxer: one structure per call)."""


def _design(out, relaxer=None, **changes):
    spec = DesignSpec(**{**LEARN, **changes, "out": str(out)})
    return run_design(spec, generate=CountingGenerate(), relax_with=relaxer or FakeRelaxer())


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """One finished three-round active-learning run (module-wide: tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("active") / "run"
    return out, _design(out)


def _rows(out) -> list[dict[str, object]]:
    return CandidateStore(out / "candidates.db").table()


def _e_hull_column(model: PredictorEnsemble, crystals) -> np.ndarray:
    return predict_crystals(model, crystals)[0][:, model.properties.index("e_above_hull")]


def test_each_round_saves_a_surrogate_and_the_next_round_screens_with_it(learned):
    out, result = learned
    meta = json.loads((out / "design.json").read_text())
    assert meta["rounds"] == [8, 8, 8] and meta["spec"]["active_learning"] is True
    records = meta["round_results"]
    assert records == json.loads(json.dumps(list(result.rounds)))  # the result carries the same records
    assert [r["round"] for r in records] == [0, 1, 2]
    assert sorted(p.name for p in (out / "surrogate").iterdir()) == ["round_000.pt", "round_001.pt", "round_002.pt"]
    assert [r["surrogate"] for r in records] == ["mp_20-properties", "surrogate/round_000.pt", "surrogate/round_001.pt"]
    rows = _rows(out)
    for row in rows:  # every screened candidate names the model that screened it: its round's surrogate
        if row.get("screen") == "done":
            assert row["screen_surrogate"] == records[int(row["round"])]["surrogate"]
    base = load_predictor("mp_20-properties")
    first = PredictorEnsemble.load(out / "surrogate" / "round_000.pt")
    later = [r for r in rows if r["round"] == 1 and r.get("screen") == "done"]
    crystals = CandidateStore(out / "candidates.db").initial_crystals([str(r["cid"]) for r in later])
    screened = np.array([r["screen_e_above_hull_mean"] for r in later])
    np.testing.assert_allclose(screened, _e_hull_column(first, crystals), rtol=1e-5, atol=1e-6)
    assert np.abs(screened - _e_hull_column(base, crystals)).min() > 1e-3  # the fine-tune changed every one
    gaps = np.array([r["screen_band_gap_mean"] for r in later])  # the other heads are the predictor's
    np.testing.assert_allclose(gaps, predict_crystals(base, crystals)[0][:, base.properties.index("band_gap")],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    for r, record in enumerate(records):  # each round relaxed its own best 3 by its own screen
        own = [row for row in rows if row["round"] == r]
        relaxed = {str(row["cid"]) for row in own if row.get("relax") == "done"}
        assert record["relaxed"] == len(relaxed) == 3 and relaxed == set(round_selection(rows, index=r, count=3))
        fine = record["fine_tune"]
        assert fine["pairs"] == 3 * (r + 1) and fine["new_pairs"] == 3 and fine["epochs"] == 300
        assert fine["mae_before"] == pytest.approx(record["screen_mae"]) and fine["mae_after"] < fine["mae_before"]
        assert set(record["top"]) == {"n", "hit_rate", "median_e_hull", "metastable_fraction"}
    assert records[0]["fine_tune"]["mae_base"] == pytest.approx(records[0]["fine_tune"]["mae_before"])
    assert "rounds (active learning): screen E_hull MAE" in result.summary()


def test_the_fine_tuned_surrogate_fits_the_collected_pairs_better(learned):
    out, _ = learned
    store = CandidateStore(out / "candidates.db")
    pairs = [r for r in _rows(out) if isinstance(r.get("hull_e_above_hull"), float)]
    assert len(pairs) == 9
    crystals = store.initial_crystals([str(r["cid"]) for r in pairs])
    labels = np.array([r["hull_e_above_hull"] for r in pairs])
    base = load_predictor("mp_20-properties")
    tuned = PredictorEnsemble.load(out / "surrogate" / "round_002.pt")
    before = np.abs(_e_hull_column(base, crystals) - labels).mean()
    after = np.abs(_e_hull_column(tuned, crystals) - labels).mean()
    assert after < 0.5 * before, (before, after)
    assert tuned.record["fine_tune"]["pairs"] == 9 and tuned.record["design"]["round"] == 2


def _untimed(record):
    """A round record without the fine-tune's wall time."""
    fine = {k: v for k, v in record["fine_tune"].items() if k != "seconds"}
    return {**record, "fine_tune": fine}


def test_a_crash_between_rounds_resumes_with_the_saved_surrogate(learned, tmp_path, monkeypatch):
    calls = []
    real = active.fine_tune_heads
    monkeypatch.setattr(active, "fine_tune_heads", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _design(out, relaxer=FakeRelaxer(crash_at=4))  # round 0 relaxed 3 and fine-tuned; round 1's first dies
    saved = out / "surrogate" / "round_000.pt"
    assert len(calls) == 1 and saved.is_file() and not (out / "surrogate" / "round_001.pt").exists()
    stamp, content = saved.stat().st_mtime_ns, saved.read_bytes()
    result = _design(out)
    assert len(calls) == 3  # rounds 1 and 2 only: round 0's fine-tune is not redone
    assert saved.stat().st_mtime_ns == stamp and saved.read_bytes() == content
    uninterrupted = learned[1]
    assert [_untimed(r) for r in result.rounds] == [_untimed(r) for r in uninterrupted.rounds]  # the same run
    assert [r["cid"] for r in result.top] == [r["cid"] for r in uninterrupted.top]
    relaxer = FakeRelaxer()
    _design(out, relaxer=relaxer)  # finished: nothing relaxed, nothing refitted
    assert relaxer.calls == 0 and len(calls) == 3


def test_rounds_without_learning_keep_the_predictor_and_old_records_resume(learned, tmp_path):
    out = tmp_path / "plain"
    result = _design(out, rounds=2, budget=16, relax_budget=4, active_learning=False)
    meta = json.loads((out / "design.json").read_text())
    assert meta["rounds"] == [8, 8] and not (out / "surrogate").exists()
    assert [r["surrogate"] for r in meta["round_results"]] == ["mp_20-properties"] * 2
    assert all(r["fine_tune"] is None and r["relaxed"] == 2 for r in meta["round_results"])
    assert "rounds: screen E_hull MAE" in result.summary() and "active learning" not in result.summary()
    old = tmp_path / "old"  # a run recorded before these settings existed resumes (they count as defaults)
    shutil.copytree(learned[0], old)
    meta = json.loads((old / "design.json").read_text())
    for key in ("fine_tune_epochs", "fine_tune_lr"):
        del meta["spec"][key]
    (old / "design.json").write_text(json.dumps(meta))
    _design(old)


def test_budgets_are_split_over_rounds():
    assert split_evenly(10, 3) == [4, 3, 3] and split_evenly(9, 3) == [3, 3, 3] and split_evenly(2, 2) == [1, 1]
    assert relax_shares([4, 3, 3], 9) == [4, 2, 3] and sum(relax_shares([4, 3, 3], 9)) == 9
    assert relax_shares([8, 8, 8], 9) == [3, 3, 3] and relax_shares([8, 8, 8, 24], 9) == [2, 1, 2, 4]


YAML = """\
budget: 300
rounds: 3
active_learning: true
fine_tune_epochs: 50
fine_tune_lr: 0.05
"""


def test_options_parse_from_yaml_flags_and_keywords(tmp_path):
    path = tmp_path / "design.yaml"
    path.write_text(YAML)
    argv = ["design", "--budget", "300", "--rounds", "3", "--active-learning", "--fine-tune-epochs", "50",
            "--fine-tune-lr", "0.05"]  # fmt: skip
    from_flags = load_spec(None, spec_options(build_parser().parse_args(argv)))
    from_keywords = DesignSpec(budget=300, rounds=3, active_learning=True, fine_tune_epochs=50, fine_tune_lr=0.05)
    assert load_spec(path) == from_flags == from_keywords
    assert spec_options(build_parser().parse_args(["design"])).get("active_learning") is None  # not given


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": 11, "budget": 10}, "rounds"),
        ({"fine_tune_epochs": 0}, "fine_tune_epochs"),
        ({"fine_tune_lr": 0.0}, "fine_tune_lr"),
        ({"fine_tune_lr": math.inf}, "fine_tune_lr"),
        ({"active_learning": True, "relax_budget": 0}, "relax_budget"),
        ({"active_learning": True, "screen_stability": None}, "active_learning"),
    ],
)
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(SpecError, match=rf"design spec: {field}\b"):
        DesignSpec(**changes)
    if None not in changes.values():  # the loader reads None as "not given"
        with pytest.raises(SpecError, match=field):
            load_spec(None, changes)


def test_bad_yaml_cli_and_a_predictor_without_stability_are_refused(tmp_path, capsys):
    path = tmp_path / "design.yaml"
    path.write_text("active_learning: sometimes\n")
    with pytest.raises(SpecError, match="active_learning"):
        load_spec(path)
    path.write_text("active_learning: true\nscreen_stability: null\n")
    with pytest.raises(SpecError, match="design spec: active_learning fine-tunes the screen's e_above_hull"):
        load_spec(path)
    out = tmp_path / "run"
    assert main(["design", "--rounds", "0", "--out", str(out)]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err
    generate = CountingGenerate()
    with pytest.raises(SpecError, match=r"active_learning .*'perov_5-properties' predicts only"):
        run_design(DesignSpec(**{**LEARN, "predictor": "perov_5-properties", "targets": (), "out": str(out)}),
                   generate=generate, relax_with=FakeRelaxer())  # fmt: skip
    assert generate.batches == [] and not (out / "design.json").exists()  # refused before any work


def test_a_round_stored_before_a_stop_is_screened_by_its_own_surrogate_on_resume(tmp_path, monkeypatch):
    out, real, calls = tmp_path / "run", active.filter_candidates, []

    def stop_in_the_second_round(ctx):  # round 1's batch is stored, then the run stops before its filter
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(ctx)

    monkeypatch.setattr(active, "filter_candidates", stop_in_the_second_round)
    with pytest.raises(RuntimeError, match="stopped"):
        _design(out, rounds=2, budget=16, relax_budget=4)
    stored = _rows(out)
    assert {r["round"] for r in stored} == {0, 1} and all(r.get("screen") is None for r in stored if r["round"] == 1)
    assert (out / "surrogate" / "round_000.pt").is_file()
    monkeypatch.setattr(active, "filter_candidates", real)
    _design(out, rounds=2, budget=16, relax_budget=4)
    screened = sorted({(r["round"], r["screen_surrogate"]) for r in _rows(out) if r.get("screen") == "done"})
    assert screened == [(0, "mp_20-properties"), (1, "surrogate/round_000.pt")]  # every row of a round, one model
