"""A crystal the predictor refuses gets a NaN row *and* its reason in the table: never a silent blank."""

from __future__ import annotations

import math

import pytest

from crystalforge import api
from crystalforge.core.limits import MAX_ATOMS_ENV
from crystalforge.testing import tiny_crystals


def test_over_limit_row_names_its_reason_and_others_are_predicted(monkeypatch: pytest.MonkeyPatch) -> None:
    crystals = tiny_crystals()
    sizes = [c.num_atoms for c in crystals]
    limit = sorted(set(sizes))[-2]  # the largest crystal(s) go over it, the rest stay within
    monkeypatch.setenv(MAX_ATOMS_ENV, str(limit))
    rows = api.predict_properties(crystals, predictor="perov_5-properties")
    prop = api.list_models()["perov_5-properties"]["properties"][0]
    assert len(rows) == len(crystals)
    for row, n in zip(rows, sizes, strict=True):
        if n > limit:
            assert math.isnan(row[prop]) and f"{n} atoms exceed the limit of {limit}" in row["error"]
        else:
            assert math.isfinite(row[prop]) and row["error"] == ""
