"""``evaluate_candidates``: the settings it checks, CSP linking and its errors, cutoffs, hull, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.errors import CrystalError
from crystalforge.evaluation.hull import ReferenceHull
from crystalforge.evaluation.run import RELAXED_FILE, evaluate_candidates, link_predictions
from crystalforge.execution import ExecutorConfig
from crystalforge.io.files import read_structures
from crystalforge.testing import tiny_crystals
from tests.evaluation.fakes import CompositionCounts, FakeRelaxer, nacl_hull

TINY = {c.material_id: c for c in tiny_crystals()}


def _refs() -> list[Crystal]:
    return [TINY["si_fcc_2"], TINY["nacl_conv_8"]]


def _csp_candidates() -> list[Candidate]:
    si, nacl = _refs()
    shifted = nacl.replace(frac_coords=(nacl.frac_coords + 0.1) % 1.0, material_id="nacl_conv_8_1")
    return [
        Candidate.of(si.replace(material_id="si_fcc_2_0")),
        Candidate.of(shifted, "preds/x.extxyz:1"),
        Candidate.failure("preds/nacl_conv_8_0.cif", "malformed CIF"),  # no id: linked by its file name
        Candidate.of(si.replace(material_id="other_3")),
    ]


def test_dng_with_cutoffs_from_the_benchmark_name_writes_the_report(tmp_path):
    crystals = tiny_crystals()
    candidates = [Candidate.of(c) for c in crystals] + [Candidate.failure("bad.cif", "no data_ block")]
    struct, comp = CompositionCounts("fake_struct"), CompositionCounts("fake_comp")
    out = tmp_path / "eval"
    report = evaluate_candidates(
        candidates,
        reference=crystals,
        reference_name="tiny/test",
        reference_key="mp_20_reduced",
        train=crystals[:2],
        train_name="tiny/train",
        struct_featurizer=struct,
        comp_featurizer=comp,
        out=out,
        workers=ExecutorConfig(workers=1),
        cache_dir=tmp_path / "fp",
    )
    assert report["n"] == len(crystals) + 1
    assert report.protocol["coverage"]["struct_cutoff"] == 0.4  # mp_20's, found by name
    assert report.protocol["coverage"]["comp_cutoff"] == 10.0
    assert report.protocol["train"] == "tiny/train" and report.protocol["reference"] == "tiny/test"
    assert report["novel_rate"] == pytest.approx(100.0 * (len(crystals) - 2) / (len(crystals) + 1))
    assert {p.name for p in out.iterdir()} == {"summary.json", "per_structure.csv", "summary.md", "fingerprints"}
    assert list((out / "fingerprints").glob("fake_struct-*.npy"))  # samples' fingerprints cached for a resume
    assert list((tmp_path / "fp").glob("fake_struct-*.npy"))  # and the reference's
    assert json.loads((out / "summary.json").read_text())["n"] == report["n"]


def test_coverage_is_skipped_without_cutoffs_and_given_cutoffs_win():
    crystals = tiny_crystals()
    fp = {"struct_featurizer": CompositionCounts("fake_struct"), "comp_featurizer": CompositionCounts("fake_comp")}
    candidates = [Candidate.of(c) for c in crystals]
    unknown = evaluate_candidates(candidates, reference=crystals, reference_name="file", reference_key="mpts_52", **fp)
    assert "cov_recall" not in unknown.summary
    assert unknown.protocol["skipped"]["coverage"] == "no published cutoffs for reference 'file'"
    given = evaluate_candidates(
        candidates, reference=crystals, reference_name="file", coverage_cutoffs=(1e-9, 1e-9), **fp
    )
    assert given.protocol["coverage"]["struct_cutoff"] == 1e-9
    assert given["cov_recall"] == 100.0 and given["cov_recall_valid_only"] == 100.0  # a set covers itself
    no_ref = evaluate_candidates(candidates, reference=None, reference_name=None, reference_key="mp_20", **fp)
    assert no_ref.protocol["skipped"]["coverage"] == "no reference set"


def test_csp_links_by_name_and_counts_failed_predictions(tmp_path):
    refs = _refs()
    candidates = _csp_candidates()
    links = link_predictions(candidates, refs, "tiny")
    assert [None if link is None else (link.reference_id, link.rank) for link in links] == [
        ("si_fcc_2", 0),
        ("nacl_conv_8", 1),
        ("nacl_conv_8", 0),
        None,
    ]
    report = evaluate_candidates(
        candidates, task="csp", reference=refs, reference_name="tiny", train=refs, train_name="ignored", k=2
    )
    assert report.protocol["train"] == "not used for CSP"
    assert [r["reference_id"] for r in report.per_structure] == ["si_fcc_2", "nacl_conv_8", "nacl_conv_8", None]
    # nacl's prediction 0 is unreadable, prediction 1 (a shifted copy) matches: best of 2 matches both references
    assert report["match_rate_k"] == 100.0 and report["match_rate"] == 50.0
    assert report.per_structure[2]["csp_reason"] == "no prediction"
    assert report.per_structure[2]["failure"] == "unreadable: malformed CIF"
    assert report.per_structure[3]["csp_reason"] == "not linked to a reference material_id"
    assert report.details["csp_match"]["n_unlinked_samples"] == 1


def test_csp_linking_errors():
    refs = _refs()
    candidates = _csp_candidates()
    with pytest.raises(ValueError, match="needs a reference set"):
        evaluate_candidates(candidates, task="csp", reference=None, reference_name=None)
    with pytest.raises(ValueError, match="distinct material_id"):
        evaluate_candidates(candidates, task="csp", reference=[refs[0], refs[0]], reference_name="dupes")
    with pytest.raises(ValueError, match="reference nameless: CSP needs a distinct material_id"):
        evaluate_candidates(
            candidates, task="csp", reference=[refs[0].replace(material_id=None)], reference_name="nameless"
        )
    unrelated = [Candidate.of(refs[0].replace(material_id="mp-9")), Candidate.failure("x.cif", "empty")]
    with pytest.raises(ValueError, match="no sample is linked to a reference material_id"):
        evaluate_candidates(unrelated, task="csp", reference=refs, reference_name="tiny")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "reconstruction"}, ValueError, "task must be 'dng' or 'csp'"),
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"workers": 0}, ValueError, "workers must be >= 1"),
    ],
)
def test_bad_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate_candidates(_csp_candidates(), reference=_refs(), reference_name="tiny", **kwargs)


def test_no_candidates_is_an_error():
    with pytest.raises(CrystalError, match="no structures to evaluate"):
        evaluate_candidates([], reference=None, reference_name=None)


def test_a_relaxer_loads_the_shipped_hull_and_writes_the_relaxed_structures(tmp_path, monkeypatch):
    loaded: list[str] = []

    def load(cls: type[ReferenceHull], *args: object, **kwargs: object) -> ReferenceHull:
        loaded.append("shipped")
        return nacl_hull()

    monkeypatch.setattr(ReferenceHull, "load", classmethod(load))
    nacl = TINY["nacl_conv_8"]
    candidates = [Candidate.of(nacl, "a"), Candidate.of(nacl.replace(material_id="explodes"), "b")]
    report = evaluate_candidates(candidates, reference=None, reference_name=None, relaxer=FakeRelaxer(), out=tmp_path)
    assert loaded == ["shipped"]
    assert report["stable_rate"] == 50.0
    relaxed = read_structures(tmp_path / RELAXED_FILE)
    assert len(relaxed) == 1 and np.allclose(relaxed[0].lattice, nacl.lattice)
    without = evaluate_candidates(candidates[:1], reference=None, reference_name=None, out=tmp_path / "plain")
    assert loaded == ["shipped"] and not (tmp_path / "plain" / RELAXED_FILE).exists()
    assert "stability" in without.protocol["skipped"]


def test_featurizers_are_needed_only_when_coverage_can_run():
    from crystalforge.evaluation.run import featurizers_needed

    assert featurizers_needed("dng", "mp_20_reduced")
    assert not featurizers_needed("dng", "mpts_52")  # no published cutoffs
    assert featurizers_needed("dng", "mpts_52", (0.4, 10.0))
    assert not featurizers_needed("dng", None)
    assert not featurizers_needed("csp", "perov_5")


def test_progress_factory_sees_the_relaxation(monkeypatch):
    monkeypatch.setattr(ReferenceHull, "load", classmethod(lambda cls, *args, **kwargs: nacl_hull()))
    seen: list[tuple[int | None, str]] = []

    class Bar:
        def update(self, n: int = 1) -> None: ...

        def close(self) -> None: ...

    def factory(total: int | None, desc: str) -> Bar:
        seen.append((total, desc))
        return Bar()

    nacl = TINY["nacl_conv_8"]
    evaluate_candidates(
        [Candidate.of(nacl, "a"), Candidate.failure("b", "empty")],
        reference=None,
        reference_name=None,
        relaxer=FakeRelaxer(),
        progress=factory,
    )
    assert seen == [(1, "relaxing (fake)")]
