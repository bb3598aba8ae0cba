"""The design run's report: one self-contained HTML file, ``write_report(RUN) -> RUN/report.html``.

The page renders offline: its stylesheet, its script and the vendored 3Dmol.js viewer
(``assets/vendor``, BSD-3-Clause) are inlined, the charts are inline SVG (``design.plots``), the CIF
downloads are ``data:`` links, and a Content-Security-Policy (``default-src 'none'``) forbids any
fetch. It shows the funnel, the target-property and E_hull distributions, a sortable table of the
top candidates with a 3D view of the selected one, and the run's spec, targets and timings; what the
run lacks (stages not run, files missing) is listed at the top. Every text from the run is escaped;
the embedded JSON escapes ``<``, ``>`` and ``&`` so no value can close its ``<script>``.
``render_report`` gives the page as text (``crystalforge serve`` regenerates it on each request).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path

from crystalforge.core.versions import distribution_version
from crystalforge.design.plots import Series, bar_chart, histogram
from crystalforge.design.report_data import HULL_LIMIT, RunView, number, read_run, round_results, suspect_limit
from crystalforge.io.atomic import atomic_write

_SCREENED, _PREDICTED, _HULL = "#4e79a7", "#e15759", "#59a14f"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
Cell = tuple[str, str]  # (inner HTML, sort value: a number, text, or "" when missing)


@cache
def asset(name: str) -> str:
    """The text of ``design/assets/<name>`` (``vendor/3Dmol-min.js``, ``report.css``, ...)."""
    return resources.files("crystalforge.design").joinpath("assets", *name.split("/")).read_text(encoding="utf-8")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def safe_json(value: object) -> str:
    """JSON that can sit inside ``<script>``: ``<``, ``>`` and ``&`` written as JSON unicode escapes."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def formula_html(formula: str) -> str:
    """A formula with its counts as subscripts (``Na2Cl2`` → ``Na<sub>2</sub>Cl<sub>2</sub>``), escaped."""
    parts = re.split(r"(\d+)", formula)
    return "".join(f"<sub>{p}</sub>" if p.isdigit() else _e(p) for p in parts)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


# ---- the table of top candidates ------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A column of the top table: its key (for tests), header, tooltip and cell maker."""

    key: str
    header: str
    tip: str
    cell: Callable[[Mapping[str, object]], Cell]
    numeric: bool = True


def _number_cell(value: object, spec: str, good: Callable[[float], bool] | None = None) -> Cell:
    x = number(value)
    if x is None:
        return '<span class="dim">—</span>', ""
    text = format(x, spec)
    if good is not None:
        text = f'<span class="{"ok" if good(x) else "bad"}">{text}</span>'
    return text, repr(x)


def _text_cell(value: object) -> Cell:
    if value is None or value == "":
        return '<span class="dim">—</span>', ""
    return _e(value), str(value)


def _mean_std_cell(row: Mapping[str, object], prefix: str, window: bool) -> Cell:
    mean, std = number(row.get(f"{prefix}_mean")), number(row.get(f"{prefix}_std"))
    if mean is None:
        return '<span class="dim">—</span>', ""
    text = f"{mean:.3g}" + ("" if std is None else f" ± {std:.2g}")
    inside = row.get("predict_in_window") if window else None
    if isinstance(inside, bool):
        mark = "ok" if inside else "bad"
        text = f'<span class="{mark}" title="{"in" if inside else "outside"} the target window">{text}</span>'
    return text, repr(mean)


def _novelty_cell(row: Mapping[str, object]) -> Cell:
    novel, match = row.get("dedupe_novel"), row.get("dedupe_match")
    duplicate = row.get("dedupe_duplicate_of")
    if duplicate not in (None, ""):
        return f'<span class="dim">duplicate of {_e(duplicate)}</span>', "2"
    if novel is True:
        return '<span class="ok">novel</span>', "0"
    if novel is False:
        known = "known" + ("" if match in (None, "") else f" ({_e(match)})")
        return f'<span class="dim">{known}</span>', "1"
    return '<span class="dim">—</span>', ""


def _rmsd_cell(row: Mapping[str, object]) -> Cell:
    inner, key = _number_cell(row.get("relax_rmsd"), ".3f")
    if row.get("relax_converged") is False:
        inner += ' <span class="bad" title="the relaxation did not converge">(not conv.)</span>'
    return inner, key


def _cif_cell(links: Sequence[tuple[str, str, str]]) -> Cell:
    if not links:
        return '<span class="dim">—</span>', ""
    parts = []
    for label, name, text in links:
        data = base64.b64encode(text.encode("utf-8")).decode("ascii")
        parts.append(
            f'<a class="cif" download="{_e(name)}" title="{_e(name)}" '
            f'href="data:chemical/x-cif;base64,{data}">{_e(label)}</a>'
        )
    return "".join(parts), str(len(links))


def columns(view: RunView) -> list[Column]:
    """The top table's columns: the fixed ones, then one or two per property, then ranking and CIFs."""
    low = suspect_limit(view.meta)
    cols = [
        Column("rank", "#", "rank position (1 = best)", lambda r: _number_cell(r.get("rank_position"), ".0f")),
        Column("cid", "id", "candidate id (round-index)", lambda r: _text_cell(r.get("cid")), numeric=False),
        Column(
            "formula",
            "formula",
            "cell formula",
            lambda r: (formula_html(str(r.get("formula") or "")), str(r.get("formula") or "")),
            numeric=False,
        ),
        Column(
            "space_group",
            "space group",
            "after relaxation",
            lambda r: _text_cell(r.get("relax_space_group")),
            numeric=False,
        ),
        Column(
            "e_hull",
            "E<sub>hull</sub> (eV/atom)",
            f"energy above the convex hull; green: {low:g} to {HULL_LIMIT} eV/atom; red above, or below {low:g}: "
            "suspect (an MLIP artefact or a phase the reference hull lacks is likelier)",
            lambda r: _number_cell(r.get("hull_e_above_hull"), ".3f", lambda x: low <= x <= HULL_LIMIT),
        ),
    ]
    for prop in view.properties:
        for stage, what in (("predict", "predicted after relaxation"), ("screen", "screened before relaxation")):
            if any(number(r.get(f"{stage}_{prop}_mean")) is not None for r in view.top):
                header = _e(prop) + ("" if stage == "predict" else " (screen)")

                def cell(r: Mapping[str, object], s: str = stage, p: str = prop) -> Cell:
                    return _mean_std_cell(r, f"{s}_{p}", window=s == "predict")

                cols.append(Column(f"{stage}_{prop}", header, f"{prop}, {what}: mean ± std", cell))
    cols += [
        Column("novelty", "novelty", "novel or matching a known structure", _novelty_cell, numeric=False),
        Column("rmsd", "RMSD (Å)", "relaxation displacement", _rmsd_cell),
    ]
    for key, column, tip, spec in (
        ("score", "rank_score", "weighted score (lower is better)", ".3g"),
        ("front", "rank_front", "Pareto front (0 = best)", ".0f"),
    ):
        if any(number(r.get(column)) is not None for r in view.top):

            def ranked(r: Mapping[str, object], c: str = column, f: str = spec) -> Cell:
                return _number_cell(r.get(c), f)

            cols.append(Column(key, key, tip, ranked))

    def cif(r: Mapping[str, object]) -> Cell:
        files = view.cifs.get(str(r.get("cid")), [])
        return _cif_cell([(f.label, f.name, f.text) for f in files])

    cols.append(Column("cif", "CIF", "download: P1 and symmetrized", cif, numeric=False))
    return cols


def top_table(view: RunView) -> str:
    """The sortable table of top candidates (rows carry ``data-cid``; cells carry their sort value)."""
    if not view.top:
        return '<p class="empty">No candidates to list yet.</p>'
    cols = columns(view)
    head = "".join(
        f'<th scope="col" data-key="{c.key}" title="{_e(c.tip)}"{" class=n" if c.numeric else ""}>'
        f'<button type="button">{c.header}</button></th>'
        for c in cols
    )
    rows = []
    for row in view.top:
        cells = []
        for c in cols:
            inner, key = c.cell(row)
            cells.append(f'<td data-v="{_e(key)}"{" class=n" if c.numeric else ""}>{inner}</td>')
        rows.append(f'<tr data-cid="{_e(row.get("cid"))}" tabindex="0">{"".join(cells)}</tr>')
    return f'<table id="cf-top"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---- sections ---------------------------------------------------------------------------------
def _header(view: RunView, live: str | None) -> str:
    meta = view.meta
    bits = [f"{len(view.rows)} candidates"]
    for key, label in (("started", "started"), ("finished", "finished"), ("crystalforge_version", "crystalforge")):
        if meta.get(key):
            bits.append(f"{label} {_e(meta[key])}")
    if meta and view.rows and not meta.get("finished"):
        bits.append("not finished")
    live_note = f'<p class="live">{live}</p>' if live else ""
    return (
        f"<header><h1>Design report: {_e(view.path.name)}</h1>"
        f'<p class="meta">{" · ".join(bits)}</p>{live_note}'
        '<nav><a href="#funnel">Funnel</a><a href="#distributions">Distributions</a>'
        '<a href="#top">Top candidates</a><a href="#details">Run details</a></nav></header>'
    )


def _missing(view: RunView) -> str:
    if not view.missing:
        return ""
    items = "".join(f"<li>{_e(m)}</li>" for m in view.missing)
    return f'<section id="missing" class="notes"><strong>Missing from this run</strong><ul>{items}</ul></section>'


def _funnel(view: RunView) -> str:
    if not view.rows:
        return '<section id="funnel"><h2>Funnel</h2><p class="empty">No candidates stored yet.</p></section>'
    chart = bar_chart([(s.name, s.passed) for s in view.funnel], label="candidates left after each stage")
    body = "".join(
        f'<tr><td>{_e(s.name)}</td><td class="n">{s.passed}</td>'
        f'<td class="n">{"—" if s.name == "generated" else s.rejected}</td>'
        f'<td class="n">{s.failed}</td><td class="n">{_fmt(s.seconds, ".1f")}</td></tr>'
        for s in view.funnel
    )
    table = (
        '<table class="small"><thead><tr><th>stage</th><th class="n">passed (so far)</th><th class="n">rejected</th>'
        f'<th class="n">failed</th><th class="n">seconds</th></tr></thead><tbody>{body}</tbody></table>'
    )
    caption = "Candidates done in each stage and in every stage before it (failed at generation: no structure)."
    return (
        f'<section id="funnel"><h2>Funnel</h2><div class="row"><figure><figcaption>{caption}</figcaption>'
        f"{chart}</figure>{table}</div></section>"
    )


def _values(view: RunView, column: str) -> list[float]:
    return [x for x in (number(r.get(column)) for r in view.rows) if x is not None]


def _distributions(view: RunView) -> str:
    figures = []
    windows = {t.property: (t.low, t.high) for t in view.targets}
    for prop in view.properties:
        series = [
            Series("screened (all)", _values(view, f"screen_{prop}_mean"), _SCREENED),
            Series("predicted after relaxation", _values(view, f"predict_{prop}_mean"), _PREDICTED),
        ]
        window = windows.get(prop)
        svg = histogram(series, xlabel=f"{prop} (mean prediction)", window=window)
        bounds = "" if window is None else f"[{_fmt(window[0], 'g')}, {_fmt(window[1], 'g')}]"
        shade = f"; shaded: the target window {bounds}" if bounds else ""
        caption = f"{_e(prop)}: screened candidates vs the same predicted after relaxation{_e(shade)}"
        figures.append(_figure(caption, svg, f"No values of {prop} yet."))
    hull = histogram(
        [Series("candidates with E_hull", _values(view, "hull_e_above_hull"), _HULL)],
        xlabel="E above hull (eV/atom)",
        lines=[(HULL_LIMIT, f"{HULL_LIMIT} eV/atom")],
        clip=(None, 1.0),
    )
    figures.append(_figure("Energy above the convex hull after relaxation", hull, "No E_hull values yet."))
    if not view.properties:
        figures.insert(0, '<p class="empty">No target property: the run has no targets or predictions.</p>')
    return f'<section id="distributions"><h2>Distributions</h2><div class="row">{"".join(figures)}</div></section>'


def _figure(caption: str, svg: str | None, empty: str) -> str:
    inner = svg if svg is not None else f'<p class="empty">{_e(empty)}</p>'
    return f"<figure><figcaption>{caption}</figcaption>{inner}</figure>"


def _top(view: RunView) -> str:
    if view.ranked:
        note = f"The {len(view.top)} best-ranked candidates."
    else:
        note = f"No ranking yet: the {len(view.top)} candidates that went furthest through the stages."
    note += " Click a header to sort, a row to view its structure."
    return (
        f'<section id="top"><h2>Top candidates</h2><p class="meta">{_e(note)}</p><div class="top-grid">'
        f'<div class="table-wrap">{top_table(view)}</div><div class="viewer-panel">'
        '<div class="viewer-box"><div id="cf-viewer" role="img" aria-label="3D view of the selected candidate">'
        "</div></div>"
        '<p id="cf-viewer-caption" class="meta"></p><div id="cf-legend"></div></div></div></section>'
    )


def _rounds(view: RunView) -> str:
    """Per round (``design.json``'s ``round_results``): counts, the screen's E_hull error, the fine-tune, the top."""
    records = round_results(view.meta)
    if not records:
        return ""

    def get(record: Mapping[str, object], name: str, key: str) -> object:
        return inner.get(key) if isinstance(inner := record.get(name), Mapping) else None

    body = "".join(
        f'<tr><td class="n">{_e(r.get("round"))}</td><td class="n">{_e(r.get("generated"))}</td>'
        f'<td class="n">{_e(r.get("relaxed"))}</td><td>{_e(r.get("surrogate") or "predictor")}</td>'
        f'<td class="n">{_fmt(number(r.get("screen_mae")), ".3f")}</td>'
        f'<td class="n">{_fmt(number(get(r, "fine_tune", "mae_base")), ".3f")}</td>'
        f'<td class="n">{_e(get(r, "fine_tune", "pairs") or "—")}</td>'
        f'<td class="n">{_fmt(number(get(r, "top", "hit_rate")), ".2f")}</td>'
        f'<td class="n">{_fmt(number(get(r, "top", "median_e_hull")), ".3f")}</td></tr>'
        for r in records
    )
    head = (
        '<tr><th class="n">round</th><th class="n">generated</th><th class="n">relaxed</th><th>screened by</th>'
        '<th class="n">screen E_hull MAE</th><th class="n">shipped predictor MAE</th><th class="n">fine-tune pairs</th>'
        '<th class="n">top hit rate</th><th class="n">top median E_hull</th></tr>'
    )
    note = (
        "Screen E_hull MAE: the screen's error on the round's relaxed candidates (eV/atom; predicted before they "
        "were relaxed). Top: the round's own best by the run's ranking; a hit is in every window and E_hull ≤ 0.1."
    )
    return (
        f'<section id="rounds"><h2>Rounds</h2><p class="meta">{_e(note)}</p>'
        f'<table class="small"><thead>{head}</thead><tbody>{body}</tbody></table></section>'
    )


def _details(view: RunView) -> str:
    meta = view.meta
    parts = ['<section id="details"><h2>Run details</h2>']
    if view.targets:
        rows = "".join(
            f"<tr><td>{_e(t.property)}</td><td>{_fmt(t.low, 'g')}</td><td>{_fmt(t.high, 'g')}</td></tr>"
            for t in view.targets
        )
        head = "<tr><th>property</th><th>low</th><th>high</th></tr>"
        parts.append(f'<h3>Targets</h3><table class="small">{head}{rows}</table>')
    for key, title in (("objectives", "Objectives"), ("stages", "Timings"), ("spec", "Spec")):
        if meta.get(key) not in (None, {}, []):
            parts.append(f"<h3>{title}</h3><pre>{_e(json.dumps(meta[key], indent=2, default=str))}</pre>")
    parts.append(f'<p class="meta">Run folder: <code>{_e(view.path)}</code></p></section>')
    return "".join(parts)


def render_report(view: RunView, *, live: str | None = None) -> str:
    """The report page of ``view`` as HTML text; ``live`` (HTML) adds a note under the title (serve)."""
    version = distribution_version("crystalforge")
    first = next((str(r.get("cid")) for r in view.top if str(r.get("cid")) in view.structures), None)
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    footer = (
        f"<footer>Written by crystalforge {_e(version)} on {_e(generated)}. 3D view: 3Dmol.js "
        "(BSD-3-Clause, vendored; see crystalforge/design/assets/vendor). This page fetches nothing.</footer>"
    )
    body = (
        _header(view, live)
        + f"<main>{_missing(view)}{_funnel(view)}{_rounds(view)}{_distributions(view)}{_top(view)}"
        + f"{_details(view)}</main>"
        + footer
    )
    parts = {
        "version": _e(version),
        "title": _e(f"crystalforge design report: {view.path.name}"),
        "style": asset("report.css"),
        "body": body,
        "data": safe_json({"structures": view.structures, "first": first}),
        "viewer": asset("vendor/3Dmol-min.js"),
        "script": asset("report.js"),
    }
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], asset("report.html"))


def write_report(run: str | Path, *, out: Path | None = None, limit: int = 50) -> Path:
    """Write the run's self-contained report (default ``RUN/report.html``, atomically); returns its path.

    ``limit`` bounds the number of top candidates listed. Raises ``FileNotFoundError`` when ``run``
    is not a folder; a partial run (no database, no ``design.json``, stages missing) still gets a
    report that says what is missing.
    """
    view = read_run(run, limit=limit)
    target = Path(out) if out is not None else Path(run) / "report.html"
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write(render_report(view))
    return target
