"""The job functions every system runs. Module-level so that every system pickles them
by reference (Grain's dill, Dask's cloudpickle, Ray, the stdlib's pickle alike); the
harness puts the repository on ``PYTHONPATH`` so workers of every kind can import them.
"""

from __future__ import annotations

import os
import time


def noop(i: int = 0) -> None:
    """Does nothing: measures pure per-job overhead."""
    return None


def sleep_ms(i: int = 0, ms: float = 1.0) -> None:
    """Sleeps (releases the CPU): measures how well a system keeps its slots busy."""
    time.sleep(ms / 1000.0)


def echo(data: bytes) -> bytes:
    """Takes and returns a payload: measures the data path both ways."""
    return data


def burn(n: int) -> int:
    """CPU-bound pure-Python loop (holds the GIL): ``n`` is calibrated to ~0.5 s."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def burn_probe(n: int) -> tuple[int, list[int], list[int]]:
    """``burn`` plus Grain's pinning facts (used for Grain only)."""
    burn(n)
    return pin_probe()[:3]


def pin_probe(i: int = 0) -> tuple[int, list[int], list[int], str | None]:
    """(pid, the process's CPU affinity, the cores Grain allocated, OMP_NUM_THREADS)."""
    import grain
    return (os.getpid(), sorted(os.sched_getaffinity(0)), sorted(grain.GVAR.res.c),
            os.environ.get("OMP_NUM_THREADS"))


def hold(seconds: float) -> None:
    """Holds its cores for a long time (until it is cancelled)."""
    time.sleep(seconds)


def started_at() -> float:
    """The host's monotonic clock when the job ran (shared by every process of the host)."""
    return time.monotonic()
