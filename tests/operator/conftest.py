"""Fixtures of the operator tests: KMock, a stand-in /status server, the running operator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from grain_operator.settings import OperatorConfig

from operator_harness import NS, KMock, OperatorThread, StatusServer, sample_status


@pytest.fixture
def api() -> Iterator[KMock]:
    """KMock's Kubernetes emulator on loopback, in its own thread."""
    with KMock() as kmock_api:
        yield kmock_api


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
    )


@pytest.fixture
def run_operator(operator_config: OperatorConfig) -> Callable[..., Any]:
    """A context manager running the real operator (kopf) in a thread: ``with run_operator():``."""

    @contextmanager
    def run(**overrides: Any) -> Iterator[OperatorThread]:
        fields = {**operator_config.__dict__, **overrides}
        with OperatorThread(OperatorConfig(**fields)) as op:
            yield op

    return run
