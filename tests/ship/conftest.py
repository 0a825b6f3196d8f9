"""Fixtures for the shipping tests: an emulated Kubernetes API and a stand-in executor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .k8s_fake import FakeApi, StandInExecutor


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """KMock's emulator on loopback, in a thread (the kubernetes client is sync)."""
    with FakeApi() as fake:
        yield fake


@pytest.fixture
def executor() -> Iterator[StandInExecutor]:
    """A TCP server on loopback in place of the executor's grain port."""
    with StandInExecutor() as server:
        yield server


@pytest.fixture(autouse=True)
def _not_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as if on a laptop, even when CI itself runs in a pod."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
