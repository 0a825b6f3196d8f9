"""Headless Chromium driven over the DevTools protocol, for the browser tier.

``Chromium.start(tmp)`` runs Debian's ``chromium`` headless with a profile of its own and
``--remote-debugging-port=0``; Chromium writes the port it chose to ``DevToolsActivePort``
in the profile. ``Page`` talks to one tab over its websocket (``websocket-client``):
``navigate``, ``evaluate`` (a JavaScript expression, its value returned as JSON),
``wait_for`` (poll an expression until a Python predicate holds) and ``screenshot``.
``stop`` closes the browser and ends its process group, whatever happened.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")


def find_chromium() -> str | None:
    """The chromium binary on PATH (Debian names it ``chromium``), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.console: list[str] = []
        self.errors: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; return its result (events met meanwhile are recorded)."""
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg: dict[str, Any] = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params.get("exceptionDetails", {}))[:2000])
        elif method == "Runtime.consoleAPICalled":
            args = params.get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                         for a in args))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"{entry.get('source')}: {entry.get('text')}")

    def enable(self) -> None:
        """Report JavaScript exceptions, console calls and browser log errors."""
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}...: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, pred: Callable[[Any], Any], timeout: float,
                 what: str, interval: float = 0.1) -> Any:
        """Evaluate ``expression`` until ``pred(value)`` is truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while True:
            try:
                value = self.evaluate(expression)
                if pred(value):
                    return value
            except RuntimeError as e:
                value = f"error: {e}"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last "
                                     f"value: {str(value)[:3000]}; page errors: {self.errors}")
            time.sleep(interval)

    def screenshot(self, path: Path, width: int = 1400) -> bytes:
        """A PNG of the whole page (``width`` CSS pixels wide), written to ``path``."""
        height = int(self.evaluate("document.documentElement.scrollHeight") or 900)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                          captureBeyondViewport=True)["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


class Chromium:
    """A headless Chromium process with a private profile; ``stop()`` ends it."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self.profile = profile
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
             "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)   # its own process group: stop() ends all its children
        self.port = self._wait_port()

    @classmethod
    def start(cls, tmp: Path, binary: str) -> Chromium:
        profile = tmp / "chromium-profile"
        profile.mkdir()
        return cls(binary, profile, tmp / "chromium.log")

    def _wait_port(self, timeout: float = 30.0) -> int:
        f = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.popen.returncode}")
            try:
                first = f.read_text().splitlines()[0]
                if first.strip():
                    return int(first)
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def page(self) -> Page:
        """The first tab."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",  # noqa: S310
                                    timeout=10) as r:
            targets = json.loads(r.read())
        url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        page = Page(url)
        page.enable()
        return page

    def stop(self) -> None:
        """Close the browser and end its process group (SIGKILL if it lingers)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)   # helpers (zygote, renderers) too
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(5)
        self._log.close()

    def leftovers(self) -> list[str]:
        """Processes of the browser's process group still running (zombies aside)."""
        left = []
        for p in psutil.process_iter(["pid", "name", "status"]):
            try:
                if os.getpgid(p.pid) == self.popen.pid and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {p.info['name']}")
            except (ProcessLookupError, psutil.Error):
                pass
        return left
