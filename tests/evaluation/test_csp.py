"""CSP match rate and RMSE on hand-built cases: invariances, best of k, validity rules, reasons, workers."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher

from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.metrics.csp import MatchResult, csp_match
from crystalforge.execution import ExecutorConfig
from tests.evaluation.structures import TINY, doubled, perturbed, rock_salt, strained, transformed, triclinic


def single(prediction: Crystal | None, reference: Crystal, **kwargs: object) -> MatchResult:
    return csp_match({str(reference.material_id): [prediction]}, [reference], **kwargs)  # type: ignore[arg-type]


# ---- CSP: invariances --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["si_fcc_2", "nacl_conv_8", "triclinic_5", "edge_3"])
def test_symmetry_copies_match_with_zero_rms(name: str) -> None:
    reference = TINY[name]
    copies = [
        transformed(reference, seed=1),
        transformed(reference, seed=2, repeats=(2, 1, 1)),
        transformed(reference, seed=3, repeats=(1, 2, 2), basis=False),
    ]
    result = csp_match({name: copies}, [reference])
    assert result.match_rate == 100.0 and result.rmse < 1e-6
    assert all(p.matched and p.rms is not None and p.rms < 1e-6 for p in result.predictions)


def test_supercell_primitive_reduced_or_not_matches() -> None:
    reference = TINY["nacl_conv_8"]  # conventional cell; the primitive one has 2 atoms
    big = transformed(reference, seed=4, repeats=(2, 1, 1))
    primitive = Crystal.from_pymatgen(big.to_pymatgen().get_primitive_structure())
    assert primitive.num_atoms == 2 and big.num_atoms == 16
    result = csp_match({"nacl_conv_8": [big, primitive]}, [reference])
    assert [p.reason for p in result.predictions] == ["match", "match"]
    assert max(p.rms for p in result.predictions if p.rms is not None) < 1e-6


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["si_fcc_2", "triclinic_5", "edge_3"]),
    seed=st.integers(0, 2**16),
    repeats=st.sampled_from([None, (1, 1, 2), (2, 1, 1)]),
)
def test_random_symmetry_ops_match(name: str, seed: int, repeats: tuple[int, int, int] | None) -> None:
    reference = TINY[name]
    result = single(transformed(reference, seed=seed, repeats=repeats), reference)
    assert result.references[0].matched and result.rmse < 1e-6


def test_rms_grows_with_noise() -> None:
    reference = triclinic()
    rms = []
    for noise in (0.05, 0.2):
        result = single(perturbed(transformed(reference, seed=5), noise, seed=6), reference)
        assert result.references[0].matched, noise
        rms.append(result.rmse)
    assert 0 < rms[0] < rms[1]
    # the value is pymatgen's own normalised RMS
    direct = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(
        perturbed(transformed(reference, seed=5), 0.2, seed=6).to_pymatgen(), reference.to_pymatgen()
    )
    assert direct is not None and rms[1] == pytest.approx(float(direct[0]), abs=1e-12)


def test_different_composition_never_matches() -> None:
    nacl = rock_salt(11, 17, 5.64, "nacl")
    kcl = rock_salt(19, 17, 5.64, "kcl")  # same geometry, other element
    result = single(kcl, nacl)
    assert result.match_rate == 0.0 and math.isnan(result.rmse)
    assert result.predictions[0].reason == "composition differs"
    assert result.references[0].reason == "composition differs"
    # pymatgen agrees: it never matches different compositions
    assert (
        StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(kcl.to_pymatgen(), nacl.to_pymatgen()) is None
    )


# ---- CSP: best of k, rules, reasons ---------------------------------------------------------------
def test_best_of_k() -> None:
    reference = triclinic()
    preds = [doubled(reference, 0), doubled(reference, 1), transformed(reference, seed=7)]
    k1 = csp_match({"triclinic_5": preds}, [reference], k=1)
    k3 = csp_match({"triclinic_5": preds}, [reference], k=3)
    assert k1.match_rate == 0.0 and k1.references[0].reason == "no match" and len(k1.predictions) == 1
    assert k3.match_rate == 100.0 and k3.references[0].best_index == 2 and k3.references[0].num_predictions == 3
    assert [p.reason for p in k3.predictions] == ["no match", "no match", "match"]
    rate, rmse = k3.at_k(1)  # the same answer from the k=3 rows, without rematching
    assert rate == 0.0 and math.isnan(rmse)
    assert k3.at_k(3) == (k3.match_rate, k3.rmse)
    assert csp_match({"triclinic_5": preds}, [reference]).match_rate == 100.0  # k=None: all


def test_best_rms_is_the_minimum() -> None:
    reference = triclinic()
    preds = [perturbed(reference, 0.2, seed=1), perturbed(reference, 0.05, seed=2), perturbed(reference, 0.1, seed=3)]
    result = csp_match({"triclinic_5": preds}, [reference])
    rms = [p.rms for p in result.predictions]
    assert all(r is not None for r in rms)
    assert result.references[0].best_index == 1 and result.rmse == min(rms)  # type: ignore[type-var]


def test_rules_differ_on_invalid_reference() -> None:
    reference = triclinic()
    copy = transformed(reference, seed=8)
    diffcsp = single(copy, reference, ref_valid=[False], rule="diffcsp")
    cdvae = single(copy, reference, ref_valid=[False], rule="cdvae")
    assert diffcsp.match_rate == 0.0 and diffcsp.references[0].reason == "invalid reference"
    assert diffcsp.predictions[0].reason == "invalid reference"
    assert cdvae.match_rate == 100.0
    assert diffcsp.protocol["rule"] == "diffcsp" and diffcsp.protocol["ref_valid_given"]


@pytest.mark.parametrize("rule", ["diffcsp", "cdvae"])
def test_invalid_prediction_never_counts(rule: str) -> None:
    reference = triclinic()
    result = single(transformed(reference, seed=9), reference, pred_valid={"triclinic_5": [False]}, rule=rule)
    assert result.match_rate == 0.0 and result.references[0].reason == "invalid prediction"


def test_missing_and_none_predictions_count_as_unmatched() -> None:
    refs = [TINY["si_fcc_2"], TINY["triclinic_5"], TINY["edge_3"]]
    preds = {"si_fcc_2": [transformed(refs[0], seed=1)], "triclinic_5": [None, None]}
    result = csp_match(preds, refs)
    assert result.num_references == 3 and result.num_matched == 1
    assert result.match_rate == pytest.approx(100 / 3)
    assert [r.reason for r in result.references] == ["match", "no prediction", "no prediction"]
    assert [r.num_predictions for r in result.references] == [1, 2, 0]
    assert [p.reason for p in result.predictions] == ["match", "no prediction", "no prediction"]
    assert csp_match({}, []).num_references == 0 and math.isnan(csp_match({}, []).match_rate)


def test_reference_reason_is_the_most_informative() -> None:
    reference = triclinic()
    preds = [None, rock_salt(11, 17, 5.6, "x"), doubled(reference)]
    result = csp_match({"triclinic_5": preds}, [reference], pred_valid={"triclinic_5": [True, True, True]})
    assert [p.reason for p in result.predictions] == ["no prediction", "composition differs", "no match"]
    assert result.references[0].reason == "no match"


def test_matcher_exception_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: StructureMatcher, s1: object, s2: object) -> None:
        raise ValueError("pathological")

    monkeypatch.setattr(StructureMatcher, "get_rms_dist", boom)
    reference = triclinic()
    result = single(transformed(reference, seed=1), reference)
    assert result.match_rate == 0.0
    assert result.predictions[0].reason == "matcher error: ValueError: pathological"
    assert result.references[0].reason.startswith("matcher error")


def test_bad_inputs_raise() -> None:
    ref = triclinic()
    with pytest.raises(ValueError, match="no reference"):
        csp_match({"other": [ref]}, [ref])
    with pytest.raises(ValueError, match="duplicate"):
        csp_match({}, [ref, ref])
    with pytest.raises(ValueError, match="material_id"):
        csp_match({}, [ref.replace(material_id=None)])
    with pytest.raises(ValueError, match="pred_valid"):
        csp_match({"triclinic_5": [ref, ref]}, [ref], pred_valid={"triclinic_5": [True]})
    with pytest.raises(ValueError, match="ref_valid"):
        csp_match({}, [ref], ref_valid=[True, False])
    with pytest.raises(ValueError, match="rule"):
        csp_match({}, [ref], rule="mattergen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        csp_match({}, [ref], k=0)
    with pytest.raises(ValueError, match="stol"):
        csp_match({}, [ref], stol=-1.0)


def test_protocol_records_the_settings() -> None:
    ref = triclinic()
    result = csp_match({}, [ref], k=20, ltol=0.25)
    p = result.protocol
    assert (p["ltol"], p["stol"], p["angle_tol"], p["rule"], p["k"]) == (0.25, 0.5, 10.0, "diffcsp", 20)
    assert p["primitive_cell"] and p["scale"] and not p["attempt_supercell"] and p["pymatgen_version"]
    d = result.to_dict()
    assert d["references"][0]["reason"] == "no prediction" and d["protocol"]["metric"] == "csp_match"


def test_workers_and_executor_configs_give_identical_results() -> None:
    refs = [TINY["si_fcc_2"], TINY["nacl_conv_8"], triclinic(), TINY["edge_3"]]
    preds = {
        "si_fcc_2": [transformed(refs[0], seed=1), None],
        "nacl_conv_8": [perturbed(refs[1], 0.1, seed=2), transformed(refs[1], seed=3, repeats=(1, 2, 1))],
        "triclinic_5": [strained(refs[2]), perturbed(refs[2], 0.15, seed=4)],
    }
    one = csp_match(preds, refs, workers=1)
    for workers in (2, ExecutorConfig(workers=2)):
        other = csp_match(preds, refs, workers=workers)
        assert one.predictions == other.predictions and one.references == other.references
        assert (one.match_rate, one.rmse) == (other.match_rate, other.rmse)
    with pytest.raises(ValueError, match="workers"):
        csp_match(preds, refs, workers=0)
