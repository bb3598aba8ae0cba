"""The design report in a real browser: headless Chromium renders it, the 3D view draws atoms, the table sorts.

Chromium is driven through its DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3
and 4, NUL-separated JSON), with nothing but the standard library: no driver, no pip package. The
tests skip when no Chromium binary is found, unless ``CRYSTALFORGE_REQUIRE_BROWSER=1`` (CI), where
they fail. ``CRYSTALFORGE_CHROMIUM`` names a binary explicitly; ``CRYSTALFORGE_SCREENSHOTS`` names a
folder to keep the screenshots in.

How "the viewer drew atoms" is checked, twice: the page's script reports the number of atoms in the
3Dmol model (``window.crystalforgeReport.atoms``, which must equal the atoms of the structure shown),
and a screenshot of the viewer's box must hold pixels of the element colours of that structure
(Jmol's red for O, green for Ba): a blank or failed WebGL canvas is white.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from crystalforge.design.report import write_report
from tests.design.test_report import TOP, make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
    # WebGL without a GPU: ANGLE on SwiftShader (a CPU rasteriser shipped with Chromium)
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
)  # fmt: skip


TRAMPOLINE = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
    "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
)


PIPE = ("--remote-debugging-pipe", "about:blank")


def find_chromium() -> str | None:
    """The Chromium binary: ``$CRYSTALFORGE_CHROMIUM``, else the first of ``BROWSERS`` on PATH."""
    named = os.environ.get("CRYSTALFORGE_CHROMIUM")
    if named:
        return named if Path(named).is_file() else shutil.which(named)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Chromium:
    """A headless Chromium and one page, spoken to in DevTools protocol over a pipe."""

    def __init__(self, binary: str, *, width: int = 1400, height: int = 1000) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="crystalforge-chromium-")
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # the protocol wants the pipe on fds 3 (commands) and 4 (replies): a small Python trampoline puts
        # it there, from numbers above 9 so that neither dup2 overwrites the other end
        low = (to_browser, from_browser)
        to_browser, from_browser = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in low)
        for fd in low:
            os.close(fd)
        args = [*FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(to_browser), str(from_browser), binary, *args, *PIPE],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable", page=True)
        self.call("Emulation.setDeviceMetricsOverride", page=True, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)  # fmt: skip

    def call(self, method: str, *, page: bool = False, timeout: float = 60.0, **params: object) -> dict:
        """Send one command (to the page's session when ``page``) and wait for its reply; events are kept."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if page:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                if "method" in reply:
                    self.events.append(reply)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no reply from Chromium in {timeout} s")
            if select.select([self._in], [], [], left)[0]:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{method}: Chromium closed the pipe (exit code {self.process.poll()})")
                self._buffer += chunk

    def js(self, expression: str) -> object:
        """Evaluate ``expression`` in the page; its value (JSON-able)."""
        result = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 60.0) -> object:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression!r} still false after {timeout} s")

    def open(self, url: str) -> None:
        """Load ``url`` and wait for the page to finish loading."""
        self.events.clear()
        self.call("Page.navigate", page=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element ``selector``."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        assert isinstance(box, list), selector
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", page=True, type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, selector: str) -> bytes:
        """A PNG of the element ``selector``'s box."""
        self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        time.sleep(0.3)  # let the viewer draw at its new place
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()"
        )
        assert isinstance(box, dict), selector
        shot = self.call("Page.captureScreenshot", page=True, format="png", clip={**box, "scale": 1})
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        """Close the browser and remove its profile."""
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._out)
        os.close(self._in)
        self._profile.cleanup()


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        named = os.environ.get("CRYSTALFORGE_CHROMIUM")
        looked = f"CRYSTALFORGE_CHROMIUM={named}" if named else ", ".join(BROWSERS) + " on PATH"
        reason = f"no Chromium binary found (looked for {looked}; apt-get install -y chromium)"
        if os.environ.get("CRYSTALFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and CRYSTALFORGE_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    chromium = Chromium(binary)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(make_run(tmp_path_factory.mktemp("browser")))


def _keep(name: str, png: bytes) -> None:
    folder = os.environ.get("CRYSTALFORGE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def _colour_pixels(png: bytes) -> dict[str, int]:
    """How many pixels of the screenshot are white-ish, red (O in Jmol colours), green (Ba) or other."""
    from PIL import Image

    raw = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    counts = {"white": 0, "red": 0, "green": 0, "drawn": 0}
    for i in range(0, len(raw), 3):
        r, g, b = raw[i], raw[i + 1], raw[i + 2]
        if r > 235 and g > 235 and b > 235:
            counts["white"] += 1
            continue
        counts["drawn"] += 1
        if r > 140 and g < 90 and b < 90:
            counts["red"] += 1
        elif g > 110 and r < 90 and b < 90:
            counts["green"] += 1
    return counts


def _data(browser: Chromium) -> dict:
    return json.loads(str(browser.js("document.getElementById('cf-data').textContent")))


def test_viewer_draws_atoms_and_table_has_rows(browser, report):
    browser.open(report.as_uri())
    first = browser.wait_for("window.crystalforgeReport && window.crystalforgeReport.shown")
    state = browser.js("({error: crystalforgeReport.error, atoms: crystalforgeReport.atoms})")
    data = _data(browser)
    assert state == {"error": None, "atoms": len(data["structures"][first]["atoms"])}
    assert first == data["first"] and data["structures"][first]["formula"] == "BaTiO3"
    assert browser.js("document.querySelectorAll('#cf-top tbody tr').length") == TOP
    assert browser.js("document.querySelector('#cf-top tbody tr.selected').dataset.cid") == first
    png = browser.screenshot("#cf-viewer")
    _keep("report-viewer.png", png)
    pixels = _colour_pixels(png)
    # BaTiO3 in Jmol colours: red O spheres and a green Ba sphere on a white background
    assert pixels["red"] > 200 and pixels["green"] > 200, pixels
    assert pixels["drawn"] > 0.02 * (pixels["white"] + pixels["drawn"]), pixels
    _keep("report-page.png", base64.b64decode(browser.call("Page.captureScreenshot", page=True, format="png")["data"]))
    errors = [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"]
    assert not errors, errors


def test_the_page_fetches_nothing(browser, report):
    browser.open(report.as_uri())
    browser.wait_for("window.crystalforgeReport && window.crystalforgeReport.shown")
    urls = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
    # no error logged (a fetch refused by the page's Content-Security-Policy would be one)
    logged = [e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded"]
    assert not [e for e in logged if e.get("level") == "error"], logged
    console = [e["params"] for e in browser.events if e["method"] == "Runtime.consoleAPICalled"]
    assert not [c for c in console if c.get("type") in ("error", "assert")], console


def test_clicking_headers_sorts_and_rows_select(browser, report):
    browser.open(report.as_uri())
    browser.wait_for("window.crystalforgeReport && window.crystalforgeReport.shown")
    column = "Array.from(document.querySelectorAll('#cf-top tbody td:nth-child(5)')).map(td => td.dataset.v)"
    hull = [float(v) for v in browser.js(column)]  # E_hull is the fifth column
    browser.click("#cf-top th[data-key=e_hull] button")
    assert [float(v) for v in browser.js(column)] == sorted(hull)
    assert browser.js("document.querySelector('#cf-top th[data-key=e_hull]').getAttribute('aria-sort')") == "ascending"
    browser.click("#cf-top th[data-key=e_hull] button")
    assert [float(v) for v in browser.js(column)] == sorted(hull, reverse=True)
    browser.click("#cf-top th[data-key=formula] button")
    formulas = browser.js(column.replace("nth-child(5)", "nth-child(3)"))
    assert formulas == sorted(formulas, key=str.lower)
    # a click on another row shows its structure
    cid = browser.js("document.querySelector('#cf-top tbody tr:last-child').dataset.cid")
    browser.click("#cf-top tbody tr:last-child td:nth-child(2)")
    assert browser.wait_for(f"crystalforgeReport.shown === {json.dumps(cid)}")
    drawn = browser.js("crystalforgeReport.atoms")
    assert drawn == len(_data(browser)["structures"][cid]["atoms"]) and drawn > 0
    png = browser.screenshot("#cf-viewer")
    _keep("report-viewer-selected.png", png)
    assert _colour_pixels(png)["drawn"] > 500
