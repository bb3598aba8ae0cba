"""``crystalforge serve``: browse design runs live, with the standard library's HTTP server.

``make_server(runs)`` serves, for each run folder given (by default on 127.0.0.1 only):

- ``/``: an index of the runs (candidates so far, started, finished);
- ``/runs/<name>/`` (and ``/runs/<name>/report.html``): the run's report (``design.report``),
  regenerated from the live ``candidates.db`` on every request, so a running design job can be
  watched by reloading the page; nothing is written to the run folder;
- ``/runs/<name>/top/<file>.cif`` and ``/runs/<name>/top/symmetrized/<file>.cif``: its CIFs.

Nothing else is served. Paths are confined to those files: a segment that is empty, ``.``, ``..``,
hidden, or holds a (decoded) slash or backslash is refused with 403; a CIF must be a plain file
whose resolved path lies inside the run's ``top/`` folder (a symlink out of it is refused); anything
else is 404. Requests are logged through ``logging`` (debug level).
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from crystalforge.design.report import asset, render_report
from crystalforge.design.report_data import read_meta, read_run
from crystalforge.design.store import CandidateStore, StoreError
from crystalforge.interrupt import interrupt_handled

logger = logging.getLogger(__name__)

_CIF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.cif$")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, content type, body and extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def check_run(path: str | Path) -> Path:
    """``path`` resolved, when it is a design run folder (holds ``candidates.db`` or ``design.json``).

    Raises ``FileNotFoundError`` naming the folder otherwise.
    """
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such design run folder")
    if not (run / "candidates.db").is_file() and not (run / "design.json").is_file():
        raise FileNotFoundError(f"{run}: not a design run folder (it holds neither candidates.db nor design.json)")
    return run.resolve()


def run_names(runs: Iterable[str | Path]) -> dict[str, Path]:
    """Each run under a URL-safe name: its folder's name, ``-2``, ``-3``... when names repeat."""
    named: dict[str, Path] = {}
    for run in runs:
        path = check_run(run)
        base = _SLUG.sub("-", path.name).strip("-.") or "run"
        name, n = base, 1
        while name in named:
            n += 1
            name = f"{base}-{n}"
        named[name] = path
    return named


def _page(title: str, body: str, status: int = HTTPStatus.OK) -> Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{asset('report.css')}</style></head>"
        f"<body><header><h1>{escape(title)}</h1></header><main>{body}</main></body></html>"
    )
    return Response(status, "text/html; charset=utf-8", html.encode("utf-8"))


def _error(status: HTTPStatus, detail: str) -> Response:
    body = f'<p>{escape(detail)}</p><p><a href="/">All runs</a></p>'
    return _page(f"{status.value} {status.phrase}", body, status)


def index_page(runs: Mapping[str, Path]) -> Response:
    """The list of runs with how far each has got."""
    items = []
    for name, path in runs.items():
        meta = read_meta(path, [])
        bits = []
        db = path / "candidates.db"
        if db.is_file():
            try:
                bits.append(f"{len(CandidateStore(db))} candidates")
            except (StoreError, OSError) as exc:
                bits.append(f"candidates.db unreadable ({exc})")
        else:
            bits.append("no candidates yet")
        for key in ("started", "finished"):
            if meta.get(key):
                bits.append(f"{key} {meta[key]}")
        if not meta.get("finished"):
            bits.append("not finished")
        items.append(
            f'<li><a href="/runs/{escape(name)}/">{escape(name)}</a> '
            f'<span class="meta">— {escape(" · ".join(bits))} · <code>{escape(str(path))}</code></span></li>'
        )
    note = '<p class="meta">Each report is rebuilt from its run\'s database on every load.</p>'
    body = f'{note}<ul class="runs">{"".join(items)}</ul>'
    return _page("crystalforge design runs", body)


def report_page(name: str, run: Path, *, limit: int) -> Response:
    """The run's report, rebuilt now from its folder."""
    stamp = time.strftime("%H:%M:%S")
    live = f'Live view of <code>{escape(str(run))}</code>, read at {stamp}: reload to update. <a href="/">All runs</a>'
    try:
        page = render_report(read_run(run, limit=limit), live=live)
    except (OSError, StoreError, ValueError) as exc:
        logger.exception("report of %s failed", run)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{name}: the report could not be built ({exc})")
    return Response(HTTPStatus.OK, "text/html; charset=utf-8", page.encode("utf-8"))


def cif_file(run: Path, parts: list[str]) -> Response:
    """``top/<file>.cif`` or ``top/symmetrized/<file>.cif`` of ``run``, when it is a plain file inside ``top/``."""
    if not _CIF.match(parts[-1]) or parts[:-1] not in (["top"], ["top", "symmetrized"]):
        return _error(HTTPStatus.NOT_FOUND, "no such file")
    top = (run / "top").resolve()
    path = run.joinpath(*parts).resolve()
    if not path.is_relative_to(top):
        return _error(HTTPStatus.FORBIDDEN, "outside the run's top/ folder")
    if not path.is_file():
        return _error(HTTPStatus.NOT_FOUND, "no such file")
    disposition = f'attachment; filename="{parts[-1]}"'
    return Response(HTTPStatus.OK, "chemical/x-cif", path.read_bytes(), (("Content-Disposition", disposition),))


def respond(runs: Mapping[str, Path], target: str, *, limit: int = 50) -> Response:
    """The response to ``GET target`` (the request line's path, possibly with a query)."""
    raw = urlsplit(target).path
    segments = [unquote(s) for s in raw.split("/")[1:]]
    inner = segments[:-1] if segments and segments[-1] == "" else segments  # a trailing slash
    bad = [s for s in inner if s in ("", ".", "..") or s.startswith(".") or any(c in s for c in "/\\\0")]
    if not raw.startswith("/") or bad:
        return _error(HTTPStatus.FORBIDDEN, "path refused")
    if not inner:
        return index_page(runs)
    if inner[0] != "runs" or len(inner) < 2 or inner[1] not in runs:
        return _error(HTTPStatus.NOT_FOUND, "no such run or page")
    name, rest = inner[1], inner[2:]
    if rest in ([], ["report.html"]):
        return report_page(name, runs[name], limit=limit)
    return cif_file(runs[name], rest)


class RunServer(ThreadingHTTPServer):
    """The HTTP server of ``make_server``: ``runs`` (name → folder), ``limit``, ``url``."""

    daemon_threads = True

    def __init__(self, runs: Mapping[str, Path], address: tuple[str, int], *, limit: int = 50) -> None:
        self.runs = dict(runs)
        self.limit = limit
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The index's address (with the port actually bound)."""
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: RunServer
    server_version = "crystalforge-serve"

    def _send(self, head: bool) -> None:
        try:
            response = respond(self.server.runs, self.path, limit=self.server.limit)
        except Exception as exc:  # a broken page must not stop the server
            logger.exception("serving %s failed", self.path)
            response = _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in response.headers:
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def do_GET(self) -> None:
        """Answer a GET."""
        self._send(head=False)

    def do_HEAD(self) -> None:
        """Answer a HEAD (the GET's headers)."""
        self._send(head=True)

    def log_message(self, format: str, *args: object) -> None:
        """Requests go to ``logging``, not stderr."""
        logger.debug("%s %s", self.address_string(), format % args)


def make_server(runs: Iterable[str | Path], *, host: str = "127.0.0.1", port: int = 8000, limit: int = 50) -> RunServer:
    """A server (bound, not yet serving) for the run folders ``runs``; port 0 picks a free port.

    Raises ``FileNotFoundError`` naming a path that is not a run folder, ``ValueError`` when none is given.
    """
    named = run_names(runs)
    if not named:
        raise ValueError("crystalforge serve: give at least one run folder")
    return RunServer(named, (host, port), limit=limit)


def serve_runs(
    runs: Iterable[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limit: int = 50,
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Serve the runs until interrupted (Ctrl-C); ``on_ready(url)`` is called once the port is bound."""
    server = make_server(runs, host=host, port=port, limit=limit)
    try:
        if on_ready is not None:
            on_ready(server.url)
        server.serve_forever()
    except KeyboardInterrupt:  # the server's normal end
        interrupt_handled()
    finally:
        server.server_close()
