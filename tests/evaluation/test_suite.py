"""The evaluation suite end to end on tiny inputs: keys, per-structure rows, failures, CSP linking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.evaluation.context import EvaluationContext, assign_groups
from crystalforge.evaluation.metrics import uniqueness as uniqueness_module
from crystalforge.evaluation.metrics.base import MetricResult
from crystalforge.evaluation.metrics.csp import CSPMatchMetric
from crystalforge.evaluation.metrics.novelty import NoveltyMetric as _Novelty
from crystalforge.evaluation.metrics.stability import StabilityMetric
from crystalforge.evaluation.metrics.structure_matcher import structure_set
from crystalforge.evaluation.metrics.uniqueness import UniquenessMetric as _Uniqueness
from crystalforge.evaluation.metrics.uniqueness import uniqueness_result
from crystalforge.evaluation.metrics.validity import ValidityMetric
from crystalforge.evaluation.report import SUMMARY_KEYS
from crystalforge.evaluation.suite import run_evaluation
from crystalforge.testing import tiny_crystals
from tests.evaluation.fakes import CompositionCounts, FakeRelaxer, KeyedFingerprint, nacl_hull


def _valid_set() -> list[Crystal]:
    """Tiny crystals that pass validity (the O/Ti/Ba triclinic cell and 3-C cell are fine too)."""
    return tiny_crystals()


def _ctx(samples: list[Candidate], reference: list[Crystal], **kw: object) -> EvaluationContext:
    return EvaluationContext(samples=samples, reference=reference, reference_name="tiny", **kw)  # type: ignore[arg-type]


def test_self_evaluation_oracles_and_failure_rows(tmp_path):
    ref = _valid_set()
    samples = [Candidate.of(c, f"s{i}") for i, c in enumerate(ref)]
    samples.append(Candidate.failure("bad.cif", "malformed CIF: no data_ block found"))
    ctx = _ctx(
        samples,
        ref,
        train=ref[:2],
        train_name="tiny train",
        struct_featurizer=CompositionCounts("fake_struct"),
        comp_featurizer=CompositionCounts("fake_comp"),
        coverage_cutoffs=(1e-9, 1e-9),
        cache_dir=tmp_path / "fp",
    )
    report = run_evaluation(ctx)
    s = report.summary
    assert s["n"] == len(ref) + 1
    assert set(s) <= set(SUMMARY_KEYS)
    n_valid = sum(r["valid"] for r in report.per_structure)
    assert s["validity"] == pytest.approx(100.0 * n_valid / s["n"])
    # Coverage: every valid reference crystal is its own nearest neighbour at distance 0.
    valid_ref = [r["valid"] for r in report.per_structure[: len(ref)]]
    assert all(valid_ref)
    assert s["cov_recall"] == pytest.approx(100.0 * sum(valid_ref) / len(ref))
    assert s["cov_precision"] == pytest.approx(100.0 * sum(valid_ref) / s["n"])  # all inputs in the denominator
    # Every sample is drawn, so the generated and reference distributions are identical.
    assert s["wdist_density"] == pytest.approx(0.0, abs=1e-12)
    assert s["wdist_num_elements"] == pytest.approx(0.0, abs=1e-12)
    assert [r["wdist_sampled"] for r in report.per_structure] == [True] * len(ref) + [False]
    assert [r["num_elements"] for r in report.per_structure[: len(ref)]] == [len(c.composition) for c in ref]
    assert [r["density"] for r in report.per_structure[: len(ref)]] == pytest.approx([c.density for c in ref])
    # The first two samples are the training set: not novel; the rest are.
    assert [r["novel"] for r in report.per_structure] == [False, False, True, True, True, False]
    assert s["unique_rate"] == pytest.approx(100.0 * len(ref) / (len(ref) + 1))
    bad = report.per_structure[-1]
    assert bad["source"] == "bad.cif"
    assert bad["failure"].startswith("unreadable: malformed CIF")
    assert bad["valid"] is False
    # Files: all three written, JSON plain, CSV one row per input.
    paths = report.write(tmp_path / "out")
    data = json.loads(paths["summary"].read_text())
    assert data["n"] == s["n"]
    assert data["protocol"]["coverage"]["struct_cutoff"] == 1e-9
    lines = paths["per_structure"].read_text().strip().splitlines()
    assert len(lines) == 1 + s["n"]
    assert "| validity (`validity`) |" in paths["markdown"].read_text()


@pytest.mark.parametrize("cache_samples", [False, True])
def test_fingerprints_are_cached(tmp_path, cache_samples):
    ref = _valid_set()
    struct, comp = CompositionCounts("fake_struct"), CompositionCounts("fake_comp")
    samples_cache = tmp_path / "samples-fp" if cache_samples else None
    for _ in range(2):
        ctx = _ctx(
            [Candidate.of(ref[2], "s0")],
            ref,
            struct_featurizer=struct,
            comp_featurizer=comp,
            coverage_cutoffs=(0.1, 0.1),
            cache_dir=tmp_path / "fp",
            sample_cache_dir=samples_cache,
        )
        run_evaluation(ctx)
    # the reference once (then cached); the samples twice, or once when their cache is asked for
    assert struct._calls == (2 if cache_samples else 3)
    assert len(list((tmp_path / "samples-fp").glob("fake_struct-*.npy"))) == int(cache_samples)


class Exploding:
    name = "exploding"

    def missing(self, ctx: EvaluationContext) -> str | None:
        return None

    def __call__(self, ctx: EvaluationContext) -> MetricResult:
        raise RuntimeError("boom")


class NeedsNothing:
    name = "never"

    def missing(self, ctx: EvaluationContext) -> str | None:
        return "not today"

    def __call__(self, ctx: EvaluationContext) -> MetricResult:  # pragma: no cover - never called
        raise AssertionError


def test_a_failing_metric_never_loses_the_others():
    ref = _valid_set()
    ctx = _ctx([Candidate.of(c, f"s{i}") for i, c in enumerate(ref)], ref)
    report = run_evaluation(ctx, [Exploding(), ValidityMetric(), NeedsNothing()])
    assert "validity" in report.summary
    assert report.protocol["errors"]["exploding"] == "RuntimeError: boom"
    assert report.protocol["skipped"]["never"] == "not today"


def test_pathological_structures_are_counted_with_reasons():
    overlapping = Crystal([11, 17], [[0, 0, 0], [0.01, 0, 0]], np.eye(3) * 5.0, material_id="overlap")
    unknown = Crystal([118, 118], [[0, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 6.0, material_id="og")
    huge = Crystal([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], np.diag([500.0, 3.0, 3.0]), material_id="huge")
    samples = [Candidate.of(c) for c in (overlapping, unknown, huge)]
    report = run_evaluation(_ctx(samples, _valid_set()))
    rows = report.per_structure
    assert rows[0]["struct_valid"] is False
    assert rows[0]["failure"] == "invalid: atoms 0 (Na) and 1 (Cl) are 0.050 Å apart (minimum 0.5 Å)"
    assert rows[1]["comp_valid"] is False
    assert rows[1]["failure"].startswith("invalid")
    assert report.summary["n"] == 3
    assert not report.protocol.get("errors")


def _rotated_copy(c: Crystal, angle: float, material_id: str) -> Crystal:
    rot = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    return Crystal(c.atomic_numbers, c.frac_coords, c.lattice @ rot.T, material_id=material_id)


def test_csp_links_by_material_id_and_scores_k1_and_best_of_k():
    ref = [c for c in _valid_set() if c.material_id in ("si_fcc_2", "nacl_conv_8", "triclinic_5")]
    rng = np.random.default_rng(0)
    nacl = ref[1]
    shaken = Crystal(nacl.atomic_numbers, nacl.frac_coords + rng.normal(0, 0.08, nacl.frac_coords.shape), nacl.lattice)
    predictions = [
        _rotated_copy(ref[0], 0.3, "si_fcc_2"),  # exact (rotated) → match, k=1
        Crystal(shaken.atomic_numbers, shaken.frac_coords, shaken.lattice, material_id="nacl_conv_8_0"),  # far
        _rotated_copy(nacl, 1.0, "nacl_conv_8_1"),  # second prediction matches → best of k only
        _rotated_copy(ref[0], 0.1, "unrelated_7"),  # links to nothing
    ]
    samples = [Candidate.of(p) for p in predictions]
    links = assign_groups(samples, [c.material_id for c in ref])
    assert [None if link is None else (link.reference_id, link.rank) for link in links] == [
        ("si_fcc_2", -1),
        ("nacl_conv_8", 0),
        ("nacl_conv_8", 1),
        None,
    ]
    ctx = EvaluationContext(samples=samples, task="csp", reference=ref, reference_name="tiny", csp_links=links)
    report = run_evaluation(ctx)
    s = report.summary
    valid_ref = report.details["csp_match"]["n_references_valid"]
    assert valid_ref == 3
    assert s["match_rate"] == pytest.approx(100 / 3)  # si only; triclinic has no prediction
    assert s["match_rate_k"] == pytest.approx(200 / 3)
    assert s["rmse"] == pytest.approx(0.0, abs=1e-6)
    rows = report.per_structure
    assert rows[3]["csp_reason"] == "not linked to a reference material_id"
    assert rows[2]["csp_matched"] is True
    assert report.details["csp_match"]["k"] == 2
    # over the 2 references that have predictions, beside the rates over all 3 references
    assert s["match_rate_over_predicted"] == pytest.approx(50.0)
    assert s["match_rate_k_over_predicted"] == pytest.approx(100.0)
    assert report.details["csp_match"]["match_rate_over_predicted"] == pytest.approx(50.0)
    assert [r["reference_id"] for r in rows] == ["si_fcc_2", "nacl_conv_8", "nacl_conv_8", None]
    md = report.to_markdown()
    assert "| match rate (k=1, over all references) (`match_rate`) | 33.33 % |" in md
    assert "| match rate (k=1, over references with a prediction) (`match_rate_over_predicted`) | 50.00 % |" in md
    assert "| match rate (best of k, over all references) (`match_rate_k`) | 66.67 % |" in md
    assert "over all 3 references" in md and "over the 2 references with at least one prediction" in md


def test_stability_sun_through_the_suite():
    hull = nacl_hull()
    nacl = next(c for c in tiny_crystals() if c.material_id == "nacl_conv_8")
    boom = Crystal(nacl.atomic_numbers, nacl.frac_coords, nacl.lattice, material_id="explodes")
    samples = [Candidate.of(nacl, "a"), Candidate.of(nacl, "b"), Candidate.of(boom, "c")]
    samples.append(Candidate.failure("bad", "file is empty"))
    ctx = EvaluationContext(
        samples=samples,
        reference=[nacl],
        reference_name="tiny",
        train=[],
        train_name="empty",
        relaxer=FakeRelaxer(),
        hull=hull,
    )
    report = run_evaluation(ctx)
    s = report.summary
    assert s["stable_rate"] == pytest.approx(50.0)  # two NaCl of four inputs
    assert s["sun_rate"] == pytest.approx(25.0)  # the second NaCl duplicates the first
    assert s["mean_rmsd_relax"] == pytest.approx(0.01)
    rows = report.per_structure
    assert rows[0]["e_above_hull"] == pytest.approx(-0.2)
    assert rows[2]["relax_failure"].startswith("explosion")
    assert rows[3]["relax_failure"].startswith("unreadable")


def test_stability_without_training_set_gives_no_sun_and_skips_uniqueness(monkeypatch):
    nacl = next(c for c in tiny_crystals() if c.material_id == "nacl_conv_8")
    ctx = EvaluationContext(samples=[Candidate.of(nacl, "a")], relaxer=FakeRelaxer(), hull=nacl_hull())

    def no_matching(*args, **kwargs):  # S.U.N. is off, so no structure matching may be done for it
        raise AssertionError("uniqueness computed without a training set")

    monkeypatch.setattr(uniqueness_module, "uniqueness", no_matching)
    report = run_evaluation(ctx, [StabilityMetric()])
    assert report.summary["stable_rate"] == 100.0 and "sun_rate" not in report.summary
    assert report.details["stability"]["sun"].startswith("not computed: no training set")
    assert "stability" not in report.protocol.get("errors", {})


# ---- coverage: the scripts' rule as the headline, valid-only beside it ----------------------------------
def _coverage_case() -> tuple[list[Candidate], list[Crystal], KeyedFingerprint]:
    """Two references; samples: a valid cover of r1, an invalid cover of r2, a valid miss, an unreadable
    record and a valid crystal without a fingerprint. Cutoffs 0.1 in both spaces.
    """
    tiny = {c.material_id: c for c in tiny_crystals()}
    nacl = tiny["nacl_conv_8"]
    reference = [nacl.replace(material_id="r1"), tiny["si_fcc_2"].replace(material_id="r2")]
    overlapping = Crystal([11, 17], [[0, 0, 0], [0.01, 0, 0]], np.eye(3) * 5.0, material_id="s1")  # invalid
    samples = [
        Candidate.of(nacl.replace(material_id="s0")),
        Candidate.of(overlapping),
        Candidate.of(nacl.replace(material_id="s2")),
        Candidate.failure("gone.cif", "file is empty"),
        Candidate.of(nacl.replace(material_id="s4")),
    ]
    table = {"r1": (0.0, 0.0), "r2": (10.0, 0.0), "s0": (0.0, 0.05), "s1": (10.0, 0.05), "s2": (5.0, 5.0)}
    return samples, reference, KeyedFingerprint("keyed", table)


def test_coverage_headline_counts_invalid_fingerprinted_samples_and_reports_valid_only_beside_it(tmp_path):
    samples, reference, fingerprint = _coverage_case()
    ctx = _ctx(
        samples, reference, struct_featurizer=fingerprint, comp_featurizer=fingerprint, coverage_cutoffs=(0.1, 0.1)
    )
    report = run_evaluation(ctx)
    s = report.summary
    assert [r["valid"] for r in report.per_structure] == [True, False, True, False, True]
    # Headline (CDVAE/DiffCSP scripts): s0, s1 and s2 have fingerprints and enter, valid or not.
    # COV-R: r1 is covered by s0 (0.05), r2 by the invalid s1 (0.05) -> 2 of 2.
    assert s["cov_recall"] == pytest.approx(100.0)
    # COV-P: s0 and s1 are within the cutoffs of a reference -> 2 of all 5 records.
    assert s["cov_precision"] == pytest.approx(40.0)
    # Valid only: s0 and s2 enter. r2's nearest is s2 at 7.07 -> COV-R 1 of 2; COV-P: s0 only -> 1 of 5.
    assert s["cov_recall_valid_only"] == pytest.approx(50.0)
    assert s["cov_precision_valid_only"] == pytest.approx(20.0)
    rows = report.per_structure
    assert [r["cov_entered"] for r in rows] == [True, True, True, None, False]
    assert [r["cov_precise"] for r in rows] == [True, True, False, None, False]
    assert [r["cov_precise_valid_only"] for r in rows] == [True, False, False, None, False]
    assert rows[1]["cov_struct_dist"] == pytest.approx(0.05)
    assert [r["cov_reason"] for r in rows] == ["entered", "entered", "entered", None, "no fingerprint"]
    assert report.details["coverage"]["valid_only"]["n_entered"] == 2
    assert report.details["coverage"]["n_entered"] == 3
    assert report.protocol["coverage"]["valid_only"] is False
    paths = report.write(tmp_path)
    data = json.loads(paths["summary"].read_text())
    assert (data["cov_recall"], data["cov_recall_valid_only"]) == (100.0, 50.0)
    assert list(data)[:7] == [
        "n",
        "validity_struct",
        "validity_comp",
        "validity",
        "cov_recall",
        "cov_precision",
        "cov_recall_valid_only",
    ]
    md = paths["markdown"].read_text()
    assert "| COV-R (every fingerprinted sample, as the published scripts) (`cov_recall`) | 100.00 % |" in md
    assert "| COV-P (valid samples only) (`cov_precision_valid_only`) | 20.00 % |" in md


# ---- candidates, legacy records, shared results ------------------------------------------------------
# per_structure.csv of the Sample-based suite (before candidates) for these inputs, unchanged since
_CSP_ROWS = """\
index,source,material_id,reference_id,formula,num_atoms,struct_valid,comp_valid,valid,validity_reason,csp_matched,csp_rms,csp_reason,failure
0,p0.cif,si_fcc_2_0,si_fcc_2,Si,2,true,true,true,valid,true,0.0,match,
1,p1.cif,nacl_conv_8,nacl_conv_8,NaCl,8,true,true,true,valid,true,0.0,match,
2,p2.cif,,si_fcc_2,,,false,false,false,unreadable: malformed CIF,false,,no prediction,unreadable: malformed CIF
3,q.cif,mp-77,,NaCl,8,true,true,true,valid,,,not linked to a reference material_id,
"""


def test_candidates_give_the_per_structure_rows_of_the_former_records():
    ref = [c for c in _valid_set() if c.material_id in ("si_fcc_2", "nacl_conv_8")]
    candidates = [
        Candidate.of(_rotated_copy(ref[0], 0.2, "si_fcc_2_0"), "p0.cif"),
        Candidate.of(_rotated_copy(ref[1], 0.4, "nacl_conv_8"), "p1.cif"),
        Candidate.failure("p2.cif", "malformed CIF", material_id="si_fcc_2_1"),
        Candidate.of(_rotated_copy(ref[1], 0.1, "mp-77"), "q.cif"),
    ]
    links = assign_groups(candidates, [c.material_id for c in ref])
    ctx = EvaluationContext(samples=candidates, task="csp", reference=ref, csp_links=links)
    report = run_evaluation(ctx, [ValidityMetric(), CSPMatchMetric()])
    assert report.to_csv() == _CSP_ROWS
    with pytest.raises(ValueError, match="CSP links"):
        EvaluationContext(samples=candidates, csp_links=links[:1])


def test_uniqueness_and_novelty_share_the_context_reduction():
    nacl = next(c for c in tiny_crystals() if c.material_id == "nacl_conv_8")
    samples = [Candidate.of(nacl, "a"), Candidate.of(_rotated_copy(nacl, 0.3, "b")), Candidate.failure("c", "empty")]
    ctx = EvaluationContext(samples=samples, train=[nacl], train_name="one")
    report = run_evaluation(ctx, [_Uniqueness(), _Novelty()])
    assert [r["unique"] for r in report.per_structure] == [True, False, False]
    assert [r["novel"] for r in report.per_structure] == [False, False, False]
    assert structure_set(ctx).num_reduced() == 2  # each NaCl cell reduced once for both metrics
    assert uniqueness_result(ctx) is ctx.memo("uniqueness", lambda: None)
