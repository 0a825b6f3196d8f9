"""Local-cluster tests: the real embedded executor, worker agent and runner processes."""

import psutil
import pytest


@pytest.fixture(autouse=True)
def no_runner_left_behind():
    """Every test must stop every process it started."""
    yield
    leftovers = [p for p in psutil.Process().children(recursive=True)
                 if "grain.runner" in " ".join(p.cmdline())]
    for p in leftovers:
        p.kill()
    assert not leftovers, f"runner processes left behind: {leftovers}"
