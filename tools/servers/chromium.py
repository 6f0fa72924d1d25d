"""Headless Chromium for browser tests, driven over its DevTools protocol, stopped by its process group's ID.

Chromium (Debian's ``chromium``; CI installs it) runs as a subprocess in a fresh profile folder with everything that
would reach the network switched off, DevTools on 127.0.0.1 (the port Chromium picks, read from the profile's
``DevToolsActivePort``), and WebGL on the CPU (SwiftShader), which OHIF's volume viewports need. :class:`Chromium`
drives one page: navigate, evaluate JavaScript, take screenshots.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

logger = logging.getLogger(__name__)

BINARIES = ("chromium", "chromium-browser", "/usr/bin/chromium")
INSTALL = "install it with: apt-get install chromium chromium-driver (.ci/run does)"
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--metrics-recording-only",
    "--mute-audio",
    "--password-store=basic",
)
MAX_CONSOLE = 2000
WEBGL_FLAGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools command failed; the message says which."""


def chromium_binary() -> str:
    """The Chromium executable; a clear error when it is not installed (browser tests need it, they never skip)."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"Chromium is not installed (looked for {', '.join(BINARIES)}); {INSTALL}.")


class Chromium:
    """One headless Chromium with its profile in ``root`` and one page of ``width`` x ``height`` CSS pixels."""

    def __init__(self, root: Path, width: int = 1400, height: int = 900) -> None:
        self.root = Path(root)
        self.width, self.height = width, height
        self.process: subprocess.Popen | None = None
        self.devtools = ""
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)
        self._log = None
        self._group_ended = False
        self.console: list[str] = []  # the page's console messages and uncaught exceptions, oldest first

    def start(self, timeout: float = 60.0) -> Chromium:
        profile = self.root / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        args = [
            chromium_binary(),
            *OFFLINE_FLAGS,
            *WEBGL_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self._log = open(self.root / "chromium.log", "w")
        # its own process group, so that stop() also ends the renderer and GPU processes it starts
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(self.root), process_group=0
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.process.returncode}:\n{self.log_tail()}")
            if port_file.is_file() and port_file.read_text().strip():
                self.devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
                try:
                    pages = [
                        t for t in httpx.get(f"{self.devtools}/json/list", timeout=5).json() if t["type"] == "page"
                    ]
                except httpx.HTTPError:
                    pages = []
                if pages:
                    self._ws = websocket.create_connection(
                        pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
                    )
                    self.send("Page.enable")
                    self.send("Runtime.enable")
                    self.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=self.width, height=self.height, deviceScaleFactor=1, mobile=False,
                    )  # fmt: skip
                    logger.info("Chromium (pid %d), DevTools on %s", self.process.pid, self.devtools)
                    return self
            time.sleep(0.2)
        self.stop()
        raise BrowserError(f"Chromium's DevTools did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        path = self.root / "chromium.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else ""

    def stop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except OSError:
                pass
            self._ws = None
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        if self.process is not None and not self._group_ended:
            self._group_ended = True
            try:  # children that outlived the browser process, right after it ended
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    # DevTools protocol -----------------------------------------------------------------------------------------
    def _record(self, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text[:2000]}")
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        del self.console[:-MAX_CONSOLE]

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (console events arriving meanwhile go to :attr:`console`)."""
        if self._ws is None:
            raise BrowserError("Chromium is not started")
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv())
            if "method" in reply:
                self._record(reply)
            elif reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.5) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. ``TimeoutError`` naming ``what`` otherwise."""
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"{what}: not seen within {timeout:g} s")
            time.sleep(interval)

    def screenshot(self, path: Path | None = None) -> bytes:
        """A PNG of the page as shown; also written to ``path`` when given."""
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png
