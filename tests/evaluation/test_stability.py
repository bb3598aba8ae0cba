"""Stability against a reference hull: hand-built hulls whose answers are known."""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.hull import (
    HullEntry,
    ReferenceHull,
    hull_data_path,
    mp2020_correction_per_atom,
    write_hull_table,
)
from crystalforge.evaluation.metrics.stability import stability
from crystalforge.relax.interfaces import RelaxResult


def cu_au_hull(**kwargs: object) -> ReferenceHull:
    """Cu at -4, Au at -3 eV/atom; CuAu 1 eV/atom below the tie line (-4.5 eV/atom)."""
    entries = [
        HullEntry("cu", "Cu1", -4.0, "test"),
        HullEntry("cu-hi", "Cu2", -3.9, "test"),  # a higher polymorph: ignored by the hull
        HullEntry("au", "Au1", -3.0, "test"),
        HullEntry("cuau", "Cu1 Au1", -4.5, "test"),
        HullEntry("cu3au-bad", "Cu3 Au1", -3.0, "test"),  # far above the hull
        HullEntry("nan", "Cu1 Au3", math.nan, "test"),  # dropped
    ]
    return ReferenceHull(entries, metadata={"version": "test-1", "mlip": "fake-1"}, **kwargs)  # type: ignore[arg-type]


def test_hull_energies_of_hand_built_entries() -> None:
    hull = cu_au_hull()
    assert len(hull) == 5 and hull.rejected == {"nan": "non-finite energy"}
    assert hull.elements == {"Cu", "Au"}
    assert hull.e_above_hull({"Cu": 1, "Au": 1}, -4.5) == pytest.approx(0.0, abs=1e-12)
    assert hull.e_above_hull("CuAu", -4.45) == pytest.approx(0.05)
    assert hull.e_above_hull("Cu2Au2", -4.6) == pytest.approx(-0.1)  # below the hull: negative
    # Cu3Au lies between Cu (-4) and CuAu (-4.5): hull at x_Au = 1/4 is -4.25
    assert hull.hull_energy_per_atom("Cu3Au") == pytest.approx(-4.25)
    assert hull.e_above_hull("Cu3Au", -4.0) == pytest.approx(0.25)
    assert hull.e_above_hull("Cu", -3.95) == pytest.approx(0.05)


def test_missing_element_gives_nan_with_reason() -> None:
    hull = cu_au_hull()
    value, reason = hull.e_above_hull_with_reason("CuAg", -4.0)
    assert math.isnan(value) and "no elemental reference for Ag" in reason and "test-1" in reason
    assert math.isnan(hull.e_above_hull("CuAu", math.nan))


def relaxed(formula: dict[str, int], energy_per_atom: float, *, converged: bool = True) -> RelaxResult:
    z = {"Cu": 29, "Au": 79, "Ag": 47}
    numbers = [z[el] for el, count in formula.items() for _ in range(count)]
    n = len(numbers)
    frac = np.linspace(0, 0.9, n)[:, None] * np.ones(3)
    crystal = Crystal(numbers, frac, np.eye(3) * 4.0)
    return RelaxResult(
        crystal, energy_per_atom * n, energy_per_atom, energy_per_atom + 0.2, rmsd=0.1 * n, steps=5, converged=converged
    )


def test_stability_rates_and_sun_combination() -> None:
    hull = cu_au_hull()
    results = [
        relaxed({"Cu": 1, "Au": 1}, -4.6),  # e_hull -0.1: stable
        relaxed({"Cu": 1, "Au": 1}, -4.5),  # 0.0: stable
        relaxed({"Cu": 1, "Au": 1}, -4.45),  # 0.05: metastable only
        relaxed({"Cu": 1, "Au": 1}, -4.3),  # 0.2: neither
        relaxed({"Cu": 1, "Ag": 1}, -4.0),  # no Ag reference
        RelaxResult.failed("explosion: boom"),  # failed relaxation
        relaxed({"Cu": 1, "Au": 1}, -4.6, converged=False),  # stable, but not converged
    ]
    unique = [True, True, True, True, True, True, False]
    novel = [True, False, True, True, True, True, True]
    result = stability(results, hull, unique=unique, novel=novel)
    assert result.num_structures == 7
    assert np.allclose(result.e_above_hull[:4], [-0.1, 0.0, 0.05, 0.2])
    assert math.isnan(result.e_above_hull[4]) and math.isnan(result.e_above_hull[5])
    assert [s.stable for s in result.structures] == [True, True, False, False, False, False, True]
    assert [s.metastable for s in result.structures] == [True, True, True, False, False, False, True]
    assert result.stable_rate == pytest.approx(100 * 3 / 7)
    assert result.metastable_rate == pytest.approx(100 * 4 / 7)
    # S.U.N.: stable & unique & novel → only the first; M.S.U.N. adds the third
    assert [s.sun for s in result.structures] == [True, False, False, False, False, False, False]
    assert result.sun_rate == pytest.approx(100 / 7) and result.msun_rate == pytest.approx(200 / 7)
    assert result.num_failed == 1 and result.num_no_reference == 1 and result.num_unconverged == 1
    assert "no elemental reference for Ag" in result.structures[4].reason
    assert result.structures[5].reason.startswith("relaxation failed: explosion")
    assert result.structures[6].reason == "ok (not converged)"
    assert result.mean_rmsd_relax == pytest.approx(np.mean([0.2, 0.2, 0.2, 0.2, 0.2, 0.2]))
    assert result.mean_e_above_hull == pytest.approx(np.mean([-0.1, 0.0, 0.05, 0.2, -0.1]))
    assert result.protocol["hull"]["version"] == "test-1" and result.protocol["stable_threshold"] == 0.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["structures"][4]["e_above_hull"] is None

    strict = stability(results, hull, count_unconverged=False)
    assert math.isnan(strict.sun_rate) and strict.structures[6].reason == "not converged (excluded)"
    assert strict.stable_rate == pytest.approx(200 / 7)


def test_stability_argument_checks() -> None:
    hull = cu_au_hull()
    with pytest.raises(ValueError, match="flags"):
        stability([relaxed({"Cu": 1}, -4.0)], hull, unique=[True, False], novel=[True])
    with pytest.raises(ValueError, match="metastable_threshold"):
        stability([], hull, stable_threshold=0.2, metastable_threshold=0.1)
    empty = stability([], hull)
    assert math.isnan(empty.stable_rate) and empty.num_structures == 0


def test_relaxer_mismatch_warns() -> None:
    class Other:
        name = "other-2"

        @property
        def settings(self) -> dict[str, float]:
            return {"fmax": 0.1}

        def relax(self, crystals: list[Crystal]) -> list[RelaxResult]:
            return []

    with pytest.warns(UserWarning, match="not comparable"):
        result = stability([relaxed({"Cu": 1}, -4.0)], cu_au_hull(), relaxer=Other())
    assert result.protocol["relaxer"] == "other-2"


def fe_o_hull(treatment: str) -> ReferenceHull:
    entries = [
        HullEntry("fe", "Fe2", -8.3, "test"),
        HullEntry("o2", "O2", -4.9, "test"),
        HullEntry("fe2o3", "Fe4 O6", -6.9, "test"),
    ]
    return ReferenceHull(entries, metadata={"version": "fe-o"}, energy_treatment=treatment)  # type: ignore[arg-type]


def test_mp2020_treatment_is_applied_identically_to_samples_and_references() -> None:
    expected = (2 * -2.256 + 3 * -0.687) / 5  # Fe GGA+U mixing + oxide anion correction, per atom
    assert mp2020_correction_per_atom("Fe2O3") == pytest.approx(expected, abs=1e-9)
    assert mp2020_correction_per_atom({"Fe": 4, "O": 6}) == pytest.approx(expected, abs=1e-9)
    assert mp2020_correction_per_atom("Fe") == 0.0 and mp2020_correction_per_atom("Cu3Au") == 0.0
    none, mp = fe_o_hull("none"), fe_o_hull("mp2020")
    assert mp.treated_energy_per_atom("Fe2O3", -6.9) == pytest.approx(-6.9 + expected)
    assert none.treated_energy_per_atom("Fe2O3", -6.9) == -6.9
    # Fe2O3 is on both hulls, so a sample 0.05 eV/atom above it is 0.05 above either hull
    assert none.e_above_hull("Fe2O3", -6.85) == pytest.approx(0.05)
    assert mp.e_above_hull("Fe2O3", -6.85) == pytest.approx(0.05)
    assert mp.hull_energy_per_atom("Fe2O3") == pytest.approx(-6.9 + expected)
    # FeO lies between Fe and Fe2O3 (1/6 Fe + 5/6 Fe2O3 per atom); the corrections change its verdict
    assert none.hull_energy_per_atom("FeO") == pytest.approx((-8.3 + 5 * -6.9) / 6)
    assert none.e_above_hull("FeO", -7.0) == pytest.approx(-7.0 - (-8.3 + 5 * -6.9) / 6)  # +0.133: unstable
    correction_feo = (-2.256 - 0.687) / 2
    hull_mp = (-8.3 + 5 * (-6.9 + expected)) / 6
    assert mp.e_above_hull("FeO", -7.0) == pytest.approx(-7.0 + correction_feo - hull_mp)  # -0.243: stable


def test_hull_table_round_trip_and_metadata(tmp_path: Path) -> None:
    buffer = io.StringIO()
    entries = [
        HullEntry("b", "Au1", -3.0, "x"),
        HullEntry("a", "Au1 Cu1", -4.123456789, "y"),
        HullEntry("c", "Cu1", -4.0, "z"),
    ]
    write_hull_table(entries, buffer)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "material_id,formula,energy_per_atom,n_atoms,source"
    assert lines[1] == "a,Cu1 Au1,-4.12346,2,y" and [line.split(",")[0] for line in lines[1:]] == ["a", "b", "c"]
    path = tmp_path / "reference_hull_t.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(buffer.getvalue())
    (tmp_path / "reference_hull_t.json").write_text(
        json.dumps({"version": "t", "energy_treatment": "mp2020", "mlip": {"name": "m"}})
    )
    hull = ReferenceHull.from_file(path)
    assert hull.version == "t" and hull.energy_treatment == "mp2020" and hull.mlip == "m" and len(hull) == 3
    assert ReferenceHull.from_file(path, energy_treatment="none").energy_treatment == "none"
    assert hull.e_above_hull("CuAu", -4.12346) == pytest.approx(0.0, abs=1e-9)
    with pytest.warns(UserWarning, match="partial trial build"):
        ReferenceHull(entries, metadata={"version": "t", "partial": True})


def test_load_names_the_builder_when_the_table_is_missing() -> None:
    with pytest.raises(FileNotFoundError, match=r"build_reference_hull\.py"):
        ReferenceHull.load("no-such-version")
    table, meta = hull_data_path("x")
    assert table.name == "reference_hull_x.csv.gz" and meta.name == "reference_hull_x.json"
