"""Helpers of the runner's script tests: a real TCP cluster (``grain executor`` and ``grain
worker`` processes on loopback, started as in the network tests, see
``tests/network/grain_harness.py``) for programs that connect with ``address=`` and
``token=`` like a user's program on a cluster, and the reading of a program's answer.

Import the fixture into a test module: ``from runner_cluster import tcp_cluster``. The
``run_script`` fixture comes from this tier's conftest; nothing here imports ``conftest`` by
name (another tier's conftest may hold that name when tiers run together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))
from grain_harness import ExecutorProc, GrainProc, Harness, process_env  # noqa: E402, F401

RunScript = Callable[..., subprocess.CompletedProcess[str]]
"""The type of the ``run_script`` fixture (see this tier's conftest)."""

REPO = Path(__file__).resolve().parents[2]


def script_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A user's environment: this checkout importable, no Grain settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document on the program's last line of output; fails showing what the
    program said when it did not finish well."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output\n{proc.stderr}"
    return json.loads(lines[-1])


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
