"""The design report: one self-contained HTML page per run, complete or partial."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.design.plots import Series, bar_chart, histogram, nice_ticks
from crystalforge.design.report import asset, formula_html, render_report, safe_json, write_report
from crystalforge.design.report_data import read_run, viewer_structure
from crystalforge.design.store import CandidateStore
from crystalforge.io.files import crystal_to_cif
from crystalforge.testing import tiny_crystals

EVIL = '<script>alert("x")</script>'
TOP = 4


STAGES = ("filter", "dedupe", "screen", "relax", "hull", "predict", "rank")


def make_run(root: Path, *, stages: tuple[str, ...] = STAGES, meta: bool = True, cifs: bool = True) -> Path:
    """A run folder with 11 candidates (10 structures, one generation failure) through ``stages``."""
    run = root / "run"
    store = CandidateStore(run / "candidates.db")
    crystals = tiny_crystals()
    keys = store.add([Candidate("gen", crystal=c) for c in crystals], round=0)
    keys += store.add([Candidate("gen", crystal=c) for c in crystals], round=1)
    store.add([Candidate("gen", error="decode failed")], round=1, start=len(crystals))
    alive = list(keys)
    if "filter" in stages:
        store.record("filter", alive[0], {"reason": "atoms too close", "min_distance": 0.4}, status="rejected")
        alive = alive[1:]
        for key in alive:
            store.record("filter", key, {"min_distance": 2.1, "struct_valid": True, "comp_valid": True})
    if "dedupe" in stages:
        store.record("dedupe", alive[0], {"duplicate_of": alive[1]}, status="rejected")
        alive = alive[1:]
        for i, key in enumerate(alive):
            store.record("dedupe", key, {"novel": i % 2 == 0, "match": "" if i % 2 == 0 else f"mp-{i}{EVIL}"})
    if "screen" in stages:
        for i, key in enumerate(alive):
            store.record("screen", key, {"band_gap_mean": 0.4 * i, "band_gap_std": 0.1, "score": float(i)})
    if "relax" in stages:
        store.fail("relax", alive[0], "RuntimeError: did not converge")
        alive = alive[1:]
        by_key = dict(zip(keys, crystals + crystals, strict=False))
        for i, key in enumerate(alive):
            values = {"energy_per_atom": -3.0 - i, "rmsd": 0.05 * i, "steps": 20, "converged": i != 2,
                      "space_group": EVIL if i == 0 else f"Fm-3m ({200 + i})"}  # fmt: skip
            store.record("relax", key, values, crystal=by_key[key])
    if "hull" in stages:
        for i, key in enumerate(alive):
            store.record("hull", key, {"e_above_hull": [0.0, 0.04, 0.3, 2.5, 0.08, 0.12, 0.01][i]})
    if "predict" in stages:
        for i, key in enumerate(alive):
            mean = 0.5 + 0.3 * i
            store.record("predict", key, {"band_gap_mean": mean, "band_gap_std": 0.2, "in_window": 1.0 <= mean <= 2.0})
    top = alive[:TOP]
    if "rank" in stages:
        for i, key in enumerate(alive):
            store.record("rank", key, {"position": i + 1, "score": 0.1 * i, "front": i // 3})
    if meta:
        spec = {"model": "perov_5-dng", "budget": 11, "top": TOP, "note": EVIL}
        (run / "design.json").write_text(json.dumps({
            "format_version": 1, "spec": spec, "targets": [{"property": "band_gap", "low": 1.0, "high": 2.0}],
            "objectives": [{"column": "hull_e_above_hull", "goal": "min"}],
            "stages": {s: {"seconds": 1.5, "count": 10} for s in stages}, "funnel": {},
            "top": top if "rank" in stages else [],
            "started": "2024-01-01T00:00:00", "finished": "2024-01-01T00:10:00", "crystalforge_version": "0.1.0",
        }))  # fmt: skip
    if cifs and "rank" in stages:
        (run / "top" / "symmetrized").mkdir(parents=True)
        for i, candidate in enumerate(store.candidates(top)):
            assert candidate.crystal is not None
            name = f"{i + 1:02d}_{top[i]}_{candidate.crystal.formula}.cif"
            (run / "top" / name).write_text(crystal_to_cif(candidate.crystal))
            (run / "top" / "symmetrized" / name).write_text(crystal_to_cif(candidate.crystal, symmetrize=True))
    return run


class _Fetches(HTMLParser):
    """Collects every src/href and every inline script's text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "data", "action")]
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _rows(page: str) -> list[str]:
    body = page.split('<table id="cf-top">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-cid="([^"]+)"', body)


def test_full_report_is_self_contained(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html" and not list(run.glob(".report.html.*"))  # atomic: no temp file left
    page = path.read_text(encoding="utf-8")
    parser = _Fetches()
    parser.feed(page)
    # nothing is fetched: every link is an in-page anchor or a data: URI, and there is no external stylesheet
    assert parser.urls and all(u.startswith(("#", "data:")) for u in parser.urls), parser.urls
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert "default-src 'none'" in page  # the CSP forbids fetches at all
    # the viewer is inlined, whole
    scripts = [s.strip() for s in parser.scripts]
    assert asset("vendor/3Dmol-min.js").strip() in scripts and asset("report.js").strip() in scripts
    # the funnel, the plots and the table
    assert "<svg" in page and "target window" in page and "0.1 eV/atom" in page
    assert _rows(page) == json.loads((run / "design.json").read_text())["top"]
    assert len(_rows(page)) == TOP
    assert "Missing from this run" not in page


def test_report_escapes_text_from_the_run(tmp_path):
    page = write_report(make_run(tmp_path)).read_text(encoding="utf-8")
    assert EVIL not in page  # the space group, the match and the spec all carried it
    assert html_escaped(EVIL) in page
    data = page.split('id="cf-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and json.loads(data)["first"]  # JSON cannot close its script element
    assert safe_json({"x": "</script>&"}) == '{"x":"\\u003c/script\\u003e\\u0026"}'
    assert formula_html("Na2Cl2") == "Na<sub>2</sub>Cl<sub>2</sub>"
    assert formula_html("<b>1") == "&lt;b&gt;<sub>1</sub>"


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_table_columns_and_downloads(tmp_path):
    run = make_run(tmp_path)
    view = read_run(run)
    page = render_report(view)
    assert [s.name for s in view.funnel] == ["generated", *STAGES]
    assert [s.passed for s in view.funnel] == [11, 9, 8, 8, 7, 7, 7, 7]
    assert view.funnel[0].failed == 1 and view.funnel[4].failed == 1 and view.funnel[1].rejected == 1
    for header in ("space group", "E<sub>hull</sub>", "band_gap", "novelty", "RMSD", "score", "front", "CIF"):
        assert header in page
    assert "± 0.2" in page and "not conv." in page and ">novel<" in page
    links = re.findall(r'download="([^"]+)"[^>]*href="data:chemical/x-cif;base64,([^"]+)"', page)
    assert len(links) == 2 * TOP  # P1 and symmetrized per candidate
    name, data = links[0]
    assert name == sorted(p.name for p in (run / "top").glob("*.cif"))[0]
    assert base64.b64decode(data).decode() == (run / "top" / name).read_text()
    structure = json.loads(page.split('id="cf-data">', 1)[1].split("</script>", 1)[0])["structures"]
    assert set(structure) == set(_rows(page))


def test_which_candidates_are_listed(tmp_path):
    run = make_run(tmp_path)
    meta = json.loads((run / "design.json").read_text())
    top = meta["top"]
    meta["top"] = top[::-1]  # design.json's top list wins: it names the exported CIFs
    (run / "design.json").write_text(json.dumps(meta))
    assert [r["cid"] for r in read_run(run).top] == top[::-1]
    meta["top"] = []  # no list (a run still going): the ranking, cut at the spec's top
    (run / "design.json").write_text(json.dumps(meta))
    assert [r["cid"] for r in read_run(run).top] == top
    (run / "design.json").unlink()  # no spec either: every ranked candidate, up to the limit
    assert len(read_run(run).top) == 7 and len(read_run(run, limit=3).top) == 3
    assert read_run(run).ranked


def test_viewer_structure_draws_face_images():
    po, si = tiny_crystals()[:2]
    assert len(viewer_structure(po)["atoms"]) == 8  # an atom at the corner: all eight corners
    assert len(viewer_structure(si)["atoms"]) == 9  # 8 corners + one inside
    assert viewer_structure(po)["lattice"][0][0] == pytest.approx(3.359)


@pytest.mark.parametrize(
    ("stages", "meta", "expect"),
    [
        (("filter", "dedupe", "screen", "relax"), True, ["'hull' has no results", "no ranking"]),
        (
            ("filter", "dedupe", "relax", "hull"),
            False,
            ["design.json is missing", "'screen' has no results yet (the run"],
        ),
        ((), True, ["'filter' has no results yet", "no CIF under top/"]),
    ],
)
def test_partial_runs_render_and_say_what_is_missing(tmp_path, stages, meta, expect):
    run = make_run(tmp_path, stages=stages, meta=meta)
    page = write_report(run).read_text(encoding="utf-8")
    assert "Missing from this run" in page
    for text in expect:
        assert html_escaped(text) in page, text
    assert len(_rows(page)) == 10  # no ranking: the candidates with a structure that went furthest
    assert asset("vendor/3Dmol-min.js") in page


def test_a_run_without_a_database_still_renders(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    page = write_report(run, out=tmp_path / "elsewhere.html").read_text(encoding="utf-8")
    assert "candidates.db is missing" in page and "No candidates" in page
    assert not (run / "candidates.db").exists()  # reading never creates a store
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report(tmp_path / "nowhere")


def test_a_broken_design_json_is_noted(tmp_path):
    run = make_run(tmp_path)
    (run / "design.json").write_text("{not json")
    page = write_report(run).read_text(encoding="utf-8")
    assert "design.json is unreadable" in page and len(_rows(page)) == 7  # every ranked candidate


def test_charts():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.05, 0.31) == [0.0, 0.1, 0.2, 0.3]
    assert histogram([Series("a", [float("nan")], "red")], xlabel="x") is None
    series = [Series("a<", [0.1, 0.2, 5.0], "red")]
    svg = histogram(series, xlabel="E", window=(0.0, None), lines=[(0.1, "l")], clip=(None, 1.0))
    assert svg is not None and "a&lt;" in svg and "1 beyond the axis" in svg and "cf-window" in svg
    bars = bar_chart([("x&", 3), ("y", 0)], label="f")
    assert bars.count("<rect") == 2 and "x&amp;" in bars


def test_rounds_section_shows_each_round(tmp_path):
    run = make_run(tmp_path)
    assert 'id="rounds"' not in write_report(run).read_text(encoding="utf-8")  # one round: no section
    meta = json.loads((run / "design.json").read_text())
    meta["round_results"] = [
        {"round": 0, "generated": 10, "relaxed": 3, "surrogate": None, "screen_mae": 0.1672,
         "fine_tune": {"pairs": 3, "mae_base": 0.1672}, "top": {"hit_rate": 0.25, "median_e_hull": 0.0812}},
        {"round": 1, "generated": 11, "relaxed": 3, "surrogate": f"surrogate/round_000.pt{EVIL}",
         "screen_mae": 0.1031, "fine_tune": None, "top": {"hit_rate": 0.5, "median_e_hull": 0.0413}},
    ]  # fmt: skip
    (run / "design.json").write_text(json.dumps(meta))
    page = write_report(run).read_text(encoding="utf-8")
    section = page[page.index('<section id="rounds">') : page.index("</section>", page.index('id="rounds"'))]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", section)
    assert len(cells) == 2 * 9
    assert cells[:9] == ["0", "10", "3", "predictor", "0.167", "0.167", "3", "0.25", "0.081"]
    assert cells[9:12] == ["1", "11", "3"] and cells[12] == html_escaped(f"surrogate/round_000.pt{EVIL}")
    assert cells[13:] == ["0.103", "—", "—", "0.50", "0.041"]
