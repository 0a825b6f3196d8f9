"""Child processes for the operator tests that run the real grain core: start, wait, stop."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from kmock_harness import wait_until


def grain_cli_available() -> bool:
    """Whether the core's CLI (``grain executor``/``grain worker``) can be imported."""
    try:
        import grain.cli.main  # noqa: F401
    except ImportError:
        return False
    return True


class Processes:
    """Child processes started by a test; all stopped (TERM, then KILL) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers 200."""
    wait_until(lambda: http_ok(url), timeout, f"{url} to answer")
