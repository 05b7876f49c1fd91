"""A real headless Chromium driven over the DevTools protocol, for the report's browser test.

:func:`load_page` opens a URL, waits for the load event, and returns what a reader would meet: console errors
(``console.error``, uncaught exceptions, browser log errors such as a failed resource), every request the page
made, the result of a JavaScript expression and, if asked, a full-page screenshot. Chromium is started with no
sandbox, no GPU, no background networking and a throw-away profile; the DevTools port is read from the
profile's ``DevToolsActivePort`` file, so no fixed port is assumed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def find_chromium() -> str | None:
    env = os.environ.get("IVLENS_CHROMIUM")
    if env:
        return env
    for c in CHROMIUM_CANDIDATES:
        if Path(c).exists():
            return c
    return shutil.which("chromium")


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: object = None
    screenshot: bytes | None = None


class _Client:
    """A minimal synchronous DevTools client: send a command, collect events until its reply."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                self.events.append(msg)
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no {method} within {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        elif m == "Network.loadingFailed":
            out.append(f"request failed: {p.get('errorText')}")
    return out


def load_page(url: str, expression: str | None = None, screenshot: bool = False, width: int = 1400,
              max_height: int = 16000, chromium: str | None = None, timeout: float = 90) -> PageResult:
    """Open ``url`` in a fresh headless Chromium and report errors, requests, an expression's value, a screenshot."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium: install it (apt-get install -y chromium) or set IVLENS_CHROMIUM")
    profile = tempfile.mkdtemp(prefix="ivlens-chromium-")
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             f"--window-size={width},900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:  # noqa: S310 - local
            targets = json.loads(r.read())
        page = next(t for t in targets if t.get("type") == "page")
        client = _Client(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            client.send(f"{domain}.enable")
        client.send("Page.navigate", url=url)
        client.wait_for("Page.loadEventFired", timeout)
        time.sleep(0.3)  # let late console messages arrive
        result = PageResult()
        if expression is not None:
            v = client.send("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in v:
                raise RuntimeError(f"expression failed: {v['exceptionDetails']}")
            result.value = v.get("result", {}).get("value")
        if screenshot:
            metrics = client.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = min(int(size["height"]) + 1, max_height)
            client.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
            shot = client.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            result.screenshot = base64.b64decode(shot["data"])
        client.send("Runtime.evaluate", expression="0")  # drain events sent meanwhile
        result.errors = _errors(client.events)
        result.requests = [e["params"]["request"]["url"] for e in client.events
                           if e["method"] == "Network.requestWillBeSent"]
        return result
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
