"""Job functions for the network tests.

They live in their own importable module (the worker processes get this directory on
``PYTHONPATH``), so jobs are pickled by reference, as a user's installed code would be.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grain


def noop(x: object = None) -> object:
    """The cheapest job there is."""
    return x


def where(i: int) -> tuple[int, str, list[int], int, str]:
    """(i, worker name, CPUs the job is pinned to, runner pid, GRAIN_CPUS)."""
    return (i, grain.GVAR.instance, sorted(os.sched_getaffinity(0)), os.getpid(),
            os.environ.get("GRAIN_CPUS", ""))


def mark_and_sleep(marker_dir: str, tag: str, seconds: float) -> tuple[str, str]:
    """Leave a marker file saying where and in which process this attempt runs, sleep,
    then return (tag, worker name). Each attempt (retry) leaves its own marker."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"{tag}.{os.getpid()}.{time.monotonic_ns()}"
    (d / (name + ".tmp")).write_text(f"{grain.GVAR.instance} {os.getpid()}\n")
    os.rename(d / (name + ".tmp"), d / name)
    time.sleep(seconds)
    return tag, grain.GVAR.instance


def markers(marker_dir: str, tag: str | None = None) -> list[tuple[str, str, int]]:
    """(tag, worker name, pid) of every attempt that started, oldest first."""
    d = Path(marker_dir)
    if not d.exists():
        return []
    out = []
    for p in sorted(d.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[1])
                    if not p.name.endswith(".tmp") else 0):
        if p.name.endswith(".tmp"):
            continue
        t = p.name.split(".", 1)[0]
        if tag is not None and t != tag:
            continue
        inst, pid = p.read_text().split()
        out.append((t, inst, int(pid)))
    return out


def where_net(i: int) -> tuple[int, str, list[int], str]:
    """(i, worker name, CPUs the job is pinned to, the job's network namespace)."""
    return (i, grain.GVAR.instance, sorted(os.sched_getaffinity(0)),
            os.readlink("/proc/self/ns/net"))
