"""Fixtures of the operator tests: KMock, a /status source, the running operator.

Every request the operator makes against KMock is kept (``operator_request_log``, per session)
so that test_rbac.py can check all of them against the RBAC rules.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kmock_harness import (
    NS,
    KMock,
    OperatorThread,
    StatusServer,
    free_port,
    sample_status,
    wait_until,
)
from process_tools import Processes, grain_cli_available, wait_http

from grain_operator.settings import OperatorConfig


@dataclass
class LoggedRun:
    """The requests of one KMock, and whether every operator on it was namespaced."""

    namespaces: tuple[str, ...] | None  # None: some operator ran cluster-wide
    requests: list[Any] = field(default_factory=list)
    secret_namespaces: tuple[str, ...] = ()  # cluster-wide mode: where the Secrets Role is


#: In the cluster-wide tests, the namespaces with the operator's Secrets Role (the chart's
#: rbac.secretNamespaces): every namespace the tests put a GrainCluster in.
SECRET_NAMESPACES = (NS, "other")


@pytest.fixture(scope="session")
def operator_request_log() -> list[LoggedRun]:
    """Requests made by the operator in every KMock test of the session."""
    return []


@pytest.fixture
def api(operator_request_log: list[LoggedRun]) -> Iterator[KMock]:
    """KMock's Kubernetes emulator on loopback, in its own thread."""
    with KMock(namespaces=(NS, "other")) as kmock_api:
        kmock_api.modes = []  # type: ignore[attr-defined]
        yield kmock_api
        modes: list[OperatorConfig] = kmock_api.modes  # type: ignore[attr-defined]
        if modes:
            scope = None if any(m.all_namespaces for m in modes) else tuple(sorted({n for m in modes for n in m.namespaces}))
            operator_request_log.append(LoggedRun(scope, kmock_api.operator_requests(), SECRET_NAMESPACES))


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    """A stand-in executor /status on loopback."""
    with StatusServer(sample_status()) as server:
        yield server


@pytest.fixture
def operator_config(api: KMock, status_server: StatusServer, tmp_path: Path) -> OperatorConfig:
    """The operator's configuration against KMock, with short intervals."""
    return OperatorConfig(
        namespaces=(NS,),
        kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"),
        default_image="grain:default",
        resync_seconds=0.5,
        retry_delay=0.5,
        status_url=status_server.url,
        status_timeout=1.0,
        operator_namespace="grain-system",
    )


@pytest.fixture
def run_operator(api: KMock, operator_config: OperatorConfig) -> Callable[..., Any]:
    """A context manager running the real operator (kopf) in a thread: ``with run_operator():``."""

    @contextmanager
    def run(**overrides: Any) -> Iterator[OperatorThread]:
        config = OperatorConfig(**{**operator_config.__dict__, **overrides})
        api.modes.append(config)  # type: ignore[attr-defined]
        with OperatorThread(config) as op:
            yield op

    return run


@dataclass
class ExecutorEndpoint:
    """Where the executor's /status is, and whether it is the real one."""

    url: str
    real: bool
    token: str
    grain_address: str | None = None
    stand_in: StatusServer | None = None


@pytest.fixture
def executor_http(tmp_path: Path) -> Iterator[ExecutorEndpoint]:
    """The real ``grain executor`` (and one real worker) when the core's CLI imports, else the
    stand-in /status server with the JSON of docs/interfaces.md."""
    token = "test-token-" + os.urandom(8).hex()
    if not grain_cli_available():
        with StatusServer(sample_status(workers=1)) as server:
            yield ExecutorEndpoint(server.url, real=False, token=token, stand_in=server)
        return
    env = {**os.environ, "GRAIN_TOKEN": token}
    http_port = free_port()
    with Processes() as procs:
        log = tmp_path / "executor.log"
        procs.start([sys.executable, "-m", "grain.cli", "executor", "--listen", "grain://127.0.0.1:0",
                     "--http", f"127.0.0.1:{http_port}"], env, log)
        address = wait_until(lambda: _listening(log), 20, "the executor to listen")
        wait_http(f"http://127.0.0.1:{http_port}/healthz")
        cpu = sorted(os.sched_getaffinity(0))[0]
        procs.start([sys.executable, "-m", "grain.cli", "worker", "--executor", address, "--name", "node-a",
                     "--cores", str(cpu), "--memory", "1GB", "--gpus", "none"], env, tmp_path / "worker.log")
        yield ExecutorEndpoint(f"http://127.0.0.1:{http_port}/status", real=True, token=token, grain_address=address)


def _listening(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "listening on grain://" in line:
            return line.rsplit(" ", 1)[-1].strip()
    return None
