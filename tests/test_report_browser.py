"""report.html in a real browser: headless Chromium loads it offline, draws every chart,
logs no console error, requests nothing from the network, and paints a non-blank page.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON), so no websocket library is needed. The test
skips, saying why, when no Chromium is installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg

from tests.test_report import synthetic_run
from xpusim.engine.report.html import render_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60.0
_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def _browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], send_fd: int, recv_fd: int) -> None:
        self.proc, self.send_fd, self.recv_fd = proc, send_fd, recv_fd
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium over the debugging pipe")
            ready, _, _ = select.select([self.recv_fd], [], [], left)
            if ready:
                chunk = os.read(self.recv_fd, 1 << 20)
                if not chunk:
                    raise ConnectionError("Chromium closed the debugging pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.send_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Return the first event (already received or arriving) for which ``pred`` holds."""
        for e in self.events:
            if pred(e):
                return e
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            e = self._read(deadline)
            self.events.append(e)
            if pred(e):
                return e


@pytest.fixture(scope="module")
def devtools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    exe = _browser()
    if exe is None:
        pytest.skip(
            "Chromium is not installed (apt-get install -y chromium); the browser "
            "check of report.html needs it"
        )
    profile = tmp_path_factory.mktemp("chromium-profile")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # the debugging pipe is fds 3 (commands in) and 4 (answers out) of the browser; a tiny
    # Python trampoline moves the pipe ends there (a POSIX shell only redirects fds 0-9)
    cmd = [
        sys.executable,
        "-c",
        _TRAMPOLINE,
        str(to_chrome_r),
        str(from_chrome_w),
        exe,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(
        cmd,
        pass_fds=(to_chrome_r, from_chrome_w),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    client = DevTools(proc, to_chrome_w, from_chrome_r)
    try:
        yield client
    finally:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, ConnectionError):
            client.call("Browser.close")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_chrome_w)
        os.close(from_chrome_r)


@pytest.fixture(scope="module")
def loaded(devtools: DevTools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Load report.html of the synthetic run; return console errors, requests, chart
    boxes and a full-page screenshot."""
    folder = tmp_path_factory.mktemp("report")
    page = folder / "report.html"
    page.write_text(render_html(synthetic_run()), encoding="utf-8")
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        devtools.call(f"{domain}.enable", session)
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=1200,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    devtools.call("Page.navigate", session, url=page.as_uri())
    devtools.wait_for(lambda e: e.get("method") == "Page.loadEventFired")
    boxes = devtools.call(
        "Runtime.evaluate",
        session,
        returnByValue=True,
        expression="""JSON.stringify(Array.from(document.querySelectorAll('svg.chart')).map(s => {
            const r = s.getBoundingClientRect();
            return {chart: s.dataset.chart, width: r.width, height: r.height,
                    marks: s.querySelectorAll('path, use, rect, text').length};
        }))""",
    )["result"]["value"]
    shot = devtools.call(
        "Page.captureScreenshot", session, format="png", captureBeyondViewport=True
    )["data"]
    devtools.call("Runtime.evaluate", session, expression="1")  # drain late console events
    events = devtools.events
    errors = [
        e["params"]
        for e in events
        if (
            e.get("method") == "Runtime.consoleAPICalled"
            and e["params"].get("type") in ("error", "assert")
        )
        or e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
    ]
    requests = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    (folder / "report.png").write_bytes(base64.b64decode(shot))
    return {
        "errors": errors,
        "requests": requests,
        "boxes": json.loads(boxes),
        "png": base64.b64decode(shot),
        "folder": folder,
    }


def test_no_console_errors(loaded: dict[str, Any]) -> None:
    """Opening report.html logs no console error and throws no exception."""
    assert loaded["errors"] == []


def test_nothing_is_fetched_from_the_network(loaded: dict[str, Any]) -> None:
    """The only request is the file itself: no script, style or font from the network."""
    others = [u for u in loaded["requests"] if not u.startswith(("file:", "data:", "about:"))]
    assert others == []


def test_every_chart_is_drawn_with_a_nonzero_size(loaded: dict[str, Any]) -> None:
    """All five charts are laid out with a real size and contain drawn marks."""
    boxes = {b["chart"]: b for b in loaded["boxes"]}
    assert set(boxes) == {"pareto", "latency", "energy", "utilization", "cost"}
    for chart, box in boxes.items():
        assert box["width"] > 100 and box["height"] > 100, chart
        assert box["marks"] > 10, chart


def test_screenshot_is_not_blank(loaded: dict[str, Any]) -> None:
    """The full-page screenshot is a tall PNG with varied pixels (text and charts drawn)."""
    png: bytes = loaded["png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    height, width = pixels.shape[:2]
    assert width == 1200 and height > 1500
    gray = pixels[..., :3].mean(axis=2)
    assert float(gray.std()) > 0.02
    assert float((gray < 0.5).mean()) > 0.005  # dark ink: text, axes, bars
    rgb = (pixels[..., :3] * 255).astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert colours.size > 50  # chart colours and anti-aliased text, not one flat fill
