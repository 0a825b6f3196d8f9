"""A real TCP cluster for the script tier: ``grain executor`` and ``grain worker`` processes
on loopback (started as in the network tests, see ``tests/network/grain_harness.py``), for
programs that connect with ``address=`` and ``token=`` like a user's program on a cluster.

Import the fixture into a test module: ``from runner_cluster import tcp_cluster``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))
from grain_harness import ExecutorProc, GrainProc, Harness, process_env  # noqa: E402, F401


@dataclass
class TcpCluster:
    """An executor and one worker ``w1`` with the machine's two first cores."""

    harness: Harness
    executor: ExecutorProc
    worker: GrainProc

    @property
    def args(self) -> tuple[str, str]:
        """What a program needs to connect: ``(address, token)``."""
        return self.executor.address, self.harness.token


@pytest.fixture
def tcp_cluster(tmp_path: Path) -> Iterator[TcpCluster]:
    (tmp_path / "cluster").mkdir(exist_ok=True)
    h = Harness(tmp_path / "cluster")
    try:
        ex = h.executor()
        w = h.worker("w1", ex, cores="0,1", memory="4GB")
        yield TcpCluster(h, ex, w)
    finally:
        problems = h.cleanup()
        assert not problems, "processes outlived their worker/executor:\n" + "\n".join(problems)
