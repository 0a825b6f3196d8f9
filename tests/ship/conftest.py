"""Fixtures for the shipping tests: the one KMock harness (tests/operator/kmock_harness.py) and a
stand-in executor."""

from __future__ import annotations

import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# The harness is shared with the operator tests, whose directory is not a package (its name
# would shadow the standard library's `operator`): make it importable from here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from kmock_harness import KMock  # noqa: E402


@pytest.fixture
def api() -> Iterator[KMock]:
    """KMock's emulator on loopback, in a thread (the kubernetes client is sync)."""
    with KMock() as fake:
        yield fake


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(b"executor:" + data)


class StandInExecutor:
    """A loopback TCP server standing in for the executor: answers b"executor:" + what it got."""

    def __enter__(self) -> StandInExecutor:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def executor() -> Iterator[StandInExecutor]:
    """A TCP server on loopback in place of the executor's grain port."""
    with StandInExecutor() as server:
        yield server


@pytest.fixture(autouse=True)
def _not_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as if on a laptop, even when CI itself runs in a pod; no user from the shell."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("GRAIN_USER", raising=False)
