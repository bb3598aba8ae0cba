"""``crystalforge serve``: the index, live reports and CIFs over HTTP, confined to the run folders."""

from __future__ import annotations

import argparse
import http.client
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from crystalforge.cli import serve as serve_cli
from crystalforge.core.candidate import Candidate
from crystalforge.design.serve import check_run, make_server, respond, run_names
from crystalforge.design.store import CandidateStore
from crystalforge.testing import tiny_crystals
from tests.design.test_report import TOP, make_run

SECRET = "top secret, never served"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve")
    first = make_run(root / "a")
    second = make_run(root / "b", stages=("filter", "dedupe"), meta=False)  # same folder name: "run-2"
    (root / "secret.txt").write_text(SECRET)
    (first / "top" / "01_r000-000099_Evil.cif").symlink_to(root / "secret.txt")
    return first, second


def _start(runs):
    server = make_server(runs, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(runs):
    server, thread = _start(runs)
    yield server
    _stop(server, thread)


def _get(server, path: str) -> tuple[int, str, dict[str, str]]:
    """GET ``path`` exactly as written (http.client sends it without normalising ``..``)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read().decode("utf-8", "replace"), dict(reply.getheaders())
    finally:
        connection.close()


def test_index_report_and_cif(server, runs):
    assert server.url.startswith("http://127.0.0.1:") and server.runs == {"run": runs[0], "run-2": runs[1]}
    with urllib.request.urlopen(server.url, timeout=30) as reply:
        index = reply.read().decode()
    assert 'href="/runs/run/"' in index and 'href="/runs/run-2/"' in index and "11 candidates" in index
    status, page, headers = _get(server, "/runs/run/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and headers["Cache-Control"] == "no-store"
    assert page.count('<tr data-cid="') == TOP and "Live view of" in page and '<a href="/">All runs</a>' in page
    assert _get(server, "/runs/run/report.html")[0] == 200
    status, page, _ = _get(server, "/runs/run-2/")
    assert status == 200 and "design.json is missing" in page
    name = sorted(p.name for p in (runs[0] / "top").glob("0*_r000-00000*.cif"))[0]
    for sub in ("top", "top/symmetrized"):
        status, text, headers = _get(server, f"/runs/run/{sub}/{name}")
        assert status == 200 and text == (runs[0] / sub / name).read_text()
        assert headers["Content-Type"] == "chemical/x-cif" and name in headers["Content-Disposition"]


def test_reports_follow_the_live_database(tmp_path):
    run = make_run(tmp_path, stages=("filter",), cifs=False)
    server, thread = _start([run])
    try:
        assert "11 candidates" in _get(server, "/runs/run/")[1]
        store = CandidateStore(run / "candidates.db")  # a design job adding a round while we watch
        store.add([Candidate("gen", crystal=c) for c in tiny_crystals()], round=2)
        assert "16 candidates" in _get(server, "/runs/run/")[1]
        assert not (run / "report.html").exists()  # serving writes nothing into the run
    finally:
        _stop(server, thread)


@pytest.mark.parametrize(
    "path",
    [
        "/runs/run/top/../candidates.db",
        "/runs/run/top/..%2f..%2fdesign.json",
        "/runs/run/top/%2e%2e/%2e%2e/secret.txt",
        "/runs/run/%2e%2e/secret.txt",
        "/runs/run/top/symmetrized/../../design.json",
        "/../../etc/passwd",
        "/runs/../../secret.txt",
        "/runs/run/top/.hidden.cif",
        "/runs/run/top/%00.cif",
        "/runs/run/top/..\\..\\secret.txt",
        "/runs/run/top/%5c..%5csecret.txt",
    ],
)
def test_path_traversal_is_refused(server, path):
    status, body, _ = _get(server, path)
    assert status == 403 and SECRET not in body


@pytest.mark.parametrize(
    "path",
    [
        "/runs/run/candidates.db",
        "/runs/run/design.json",
        "/runs/run/top/01_r000-000099_Evil.cif",  # a symlink out of top/
        "/runs/run/top/missing.cif",
        "/runs/run/top/notes.txt",
        "/runs/nope/",
        "/etc/passwd",
        "/runs/run/top/symmetrized/symmetrized/x.cif",
    ],
)
def test_only_reports_and_cifs_are_served(server, path):
    status, body, _ = _get(server, path)
    assert status in (403, 404) and SECRET not in body and "<table" not in body


def test_head_and_unsupported_methods(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("HEAD", "/runs/run/")
    reply = connection.getresponse()
    assert reply.status == 200 and int(reply.getheader("Content-Length")) > 0 and reply.read() == b""
    connection.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(server.url, data=b"x", method="POST"), timeout=30)
    assert info.value.code == 501


def test_run_folders_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such design run folder"):
        check_run(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="plain: not a design run folder"):
        run_names([tmp_path / "plain"])
    with pytest.raises(ValueError, match="at least one"):
        make_server([], port=0)


def test_respond_without_a_socket(runs):
    named = run_names(runs)
    assert respond(named, "/?x=1").status == 200
    assert respond(named, "/runs/run").status == 200  # no trailing slash
    assert respond(named, "relative").status == 403


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_write_and_errors(runs, tmp_path, capsys):
    assert serve_cli.run(_cli(["serve", str(runs[1]), "--write"])) == 0
    assert (runs[1] / "report.html").is_file() and "wrote" in capsys.readouterr().out
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such design run folder; .*plain: not a design run"):
        serve_cli.run(_cli(["serve", str(tmp_path / "nowhere"), str(runs[0]), str(tmp_path / "plain")]))


def test_cli_reports_a_taken_port(runs, server, capsys):
    port = server.server_address[1]
    assert serve_cli.run(_cli(["serve", str(runs[0]), "--port", str(port)])) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_ctrl_c_is_the_servers_normal_end(runs, monkeypatch, capsys):
    """``crystalforge serve`` stops on Ctrl-C with exit 0 (the CLI's recorder does not make it a 130)."""
    import signal
    from http.server import ThreadingHTTPServer

    from crystalforge.cli.main import main

    monkeypatch.setattr(ThreadingHTTPServer, "serve_forever", lambda self: signal.raise_signal(signal.SIGINT))
    assert main(["serve", str(runs[0]), "--port", "0"]) == 0
    captured = capsys.readouterr()
    assert "serving 1 run(s) at" in captured.out and captured.err == ""
