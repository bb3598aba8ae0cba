"""The design spec: YAML, keywords and defaults agree; every bad value is refused naming its field."""

from __future__ import annotations

import math
import re

import pytest

from crystalforge.design.rank import Objective
from crystalforge.design.spec import DesignSpec, SpecError, load_spec

YAML = """\
model: perov_5-dng
targets: [band_gap=2.5±0.5, "formation_energy_per_atom<-1"]
elements: [Li, Mn, O]
budget: 300
batch_size: 50
top: 5
ranking: score
objectives:
  - {key: hull_e_above_hull, goal: min, scale: 0.1}
  - {key: predict_band_gap_mean, goal: window, low: 2.0, high: 3.0}
out: runs/x
"""


def test_yaml_and_keywords_give_the_same_spec(tmp_path):
    path = tmp_path / "design.yaml"
    path.write_text(YAML)
    from_yaml = load_spec(path)
    from_keywords = DesignSpec(
        model="perov_5-dng", targets=("band_gap=2.5±0.5", "formation_energy_per_atom<-1"), elements="Li,Mn,O",
        budget=300, batch_size=50, top=5, ranking="score", out="runs/x",
        objectives=(Objective("hull_e_above_hull", scale=0.1),
                    Objective("predict_band_gap_mean", "window", low=2.0, high=3.0)),
    )  # fmt: skip
    assert from_yaml == from_keywords
    assert from_yaml.elements == "Li,Mn,O"  # a YAML list becomes the comma form Steering takes
    assert load_spec(from_yaml) is from_yaml  # a spec with no overrides is returned as it is
    assert load_spec(path, {"budget": 400, "top": None}) == from_keywords.replace(budget=400)  # None: not given


def test_derived_values():
    spec = DesignSpec(targets=("band_gap=2.5±0.5", "formation_energy_per_atom<-1"), top=7)
    assert spec.relax_count == 21  # 3 × top unless relax_budget is set
    assert spec.replace(relax_budget=4).relax_count == 4
    [gap, energy] = spec.windows
    assert (gap.low, gap.high) == (2.0, 3.0) and energy.low is None and energy.high == -1.0
    objectives = spec.ranking_objectives()  # the defaults: E_hull, and per target its window and its std
    assert [o.key for o in objectives] == [
        "hull_e_above_hull", "predict_band_gap_mean", "predict_band_gap_std",
        "predict_formation_energy_per_atom_mean", "predict_formation_energy_per_atom_std",
    ]  # fmt: skip
    assert objectives[1].goal == "window" and (objectives[1].low, objectives[1].high) == (2.0, 3.0)
    # E_hull: anything in [suspect_e_hull, 0] is as good as on the hull; deeper costs its depth below the limit
    assert (objectives[0].goal, objectives[0].low, objectives[0].high) == ("window", -0.2, 0.0)
    assert objectives[0].cost([0.05, 0.0, -0.15, -0.5]).round(6).tolist() == [0.05, 0.0, 0.0, 0.3]
    assert spec.replace(suspect_e_hull=None).ranking_objectives()[0].low == -math.inf
    assert objectives[3].low == -math.inf and objectives[3].high == -1.0
    steering = spec.steering()
    assert steering is not None and steering.uses_importance and len(steering.targets) == 2
    assert DesignSpec().steering() is None  # nothing to steer towards: plain generation
    only = DesignSpec(elements="Li,O").steering()
    assert only is not None and only.elements == "Li,O" and not only.targets
    unsteered = spec.replace(route="none")  # route none: the targets only screen and rank
    assert unsteered.steering() is None and len(unsteered.ranking_objectives()) == 5
    constrained = unsteered.replace(elements="Li,O", motif="kagome:Li").steering()
    assert constrained is not None and not constrained.targets and not constrained.uses_importance
    assert (constrained.elements, constrained.motif) == ("Li,O", "kagome:Li")
    from crystalforge.cli.design import UNSTEERED
    from crystalforge.design.spec import UNSTEERED as IN_SPEC

    assert UNSTEERED == IN_SPEC == "none"  # the CLI keeps a copy (its parser loads no torch)
    record = spec.record()  # JSON-ready: no infinities
    assert record["targets"] == list(spec.targets) and record["objectives"] == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"budget": 0}, "budget"),
        ({"batch_size": -1}, "batch_size"),
        ({"top": 0}, "top"),
        ({"relax_budget": -2}, "relax_budget"),
        ({"min_distance": -0.1}, "min_distance"),
        ({"min_distance": math.nan}, "min_distance"),
        ({"ranking": "best"}, "ranking"),
        ({"route": "teleport"}, "route"),
        ({"route": "none+importance"}, "route"),
        ({"suspect_e_hull": 0.1}, "suspect_e_hull"),
        ({"suspect_e_hull": -math.inf}, "suspect_e_hull"),
        ({"route": "gradient"}, "route"),  # a predictor route needs a target
        ({"targets": ("band_gap~2",)}, "targets"),
        ({"targets": ("band_gap=3..2",)}, "targets"),
        ({"motif": "kagome"}, "motif"),
        ({"objectives": (Objective("band_gap"),)}, "objectives[0].key"),
        ({"workers": 0}, "workers"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(SpecError, match=rf"design spec: {re.escape(field)}\b"):
        DesignSpec(**changes)
    with pytest.raises(SpecError, match=re.escape(field)):  # the same through the loader (CLI flags, keywords)
        load_spec(None, changes)


def test_bad_yaml_names_the_key(tmp_path):
    path = tmp_path / "design.yaml"
    path.write_text("budget: many\n")
    with pytest.raises(SpecError, match=r"budget: expected an integer"):
        load_spec(path)
    path.write_text("budgett: 10\n")
    with pytest.raises(SpecError, match=r"unknown key\(s\) budgett"):
        load_spec(path)
    path.write_text("objectives: [{key: hull_e_above_hull, goal: lowest}]\n")
    with pytest.raises(SpecError, match=r"objectives\[0\]\.goal"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read config"):
        load_spec(tmp_path / "missing.yaml")
