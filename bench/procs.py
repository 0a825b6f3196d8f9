"""Process bookkeeping for the harness: tree memory, and stopping what we started.

Every system's processes are descendants of the measuring subprocess (Ray's raylet and
workers, Dask's nannies, Grain's runners, the CLI executor and worker). ``remember`` notes
them while they run; ``reap`` afterwards stops whichever are still alive, by pid, and
reports them as leaked so a system that does not clean up is visible in the results.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil

_SEEN: dict[int, psutil.Process] = {}
#: helpers that live exactly as long as the process that started them, by design
_LIFELONG = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def descendants(pid: int | None = None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []


def remember(pid: int | None = None) -> None:
    """Note the current descendants of ``pid`` (default: this process)."""
    for p in descendants(pid):
        _SEEN.setdefault(p.pid, p)


def tree_memory(pid: int | None = None, *, pss: bool = True) -> dict[str, Any]:
    """RSS (and PSS, which does not double-count shared pages) of ``pid`` and all its
    descendants, in MiB, with the process count and names, and the RSS of Grain's
    runners among them."""
    root = psutil.Process(pid or os.getpid())
    procs = [root, *root.children(recursive=True)]
    rss = pss_total = runners = 0
    names: dict[str, int] = {}
    for p in procs:
        try:
            if pss:
                mi: Any = p.memory_full_info()
                pss_total += getattr(mi, "pss", mi.rss)
            else:
                mi = p.memory_info()
            rss += mi.rss
            n = p.name()
            names[n] = names.get(n, 0) + 1
            if "grain.runner" in " ".join(p.cmdline()):
                runners += mi.rss
        except psutil.Error:
            continue
    out: dict[str, Any] = {"rss_mib": rss / 2 ** 20, "procs": len(procs), "names": names,
                           "runner_rss_mib": runners / 2 ** 20}
    if pss:
        out["pss_mib"] = pss_total / 2 ** 20
    return out


def tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds used so far by ``pid`` (default: this process) and its live
    descendants. The difference over a measurement, divided by the jobs in it, is what a
    job costs the machine in all its processes: the figure that caps throughput on a given
    number of cores, whichever process spends it."""
    try:
        root = psutil.Process(pid or os.getpid())
    except psutil.Error:
        return 0.0
    return sum(_cpu_s(p) for p in [root, *descendants(pid)])


def _cpu_s(p: psutil.Process) -> float:
    """A process's CPU time, to the microsecond where the kernel tells it per thread
    (``/proc/PID/task/TID/sched``), else in the 10 ms ticks of ``/proc/PID/stat``: over
    300 round trips a tick per process would be 33 us per round trip, too coarse.
    Threads that ended during the measurement are not counted."""
    total, found = 0.0, False
    try:
        tids = os.listdir(f"/proc/{p.pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{p.pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1]) / 1e3   # ms
                        found = True
                        break
        except OSError:
            continue
    if found:
        return total
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def reap(grace: float = 5.0) -> list[str]:
    """Stop every remembered or current descendant that is still alive; return what
    had to be stopped (``name[pid]``)."""
    remember()
    alive = [p for p in _SEEN.values() if _alive(p) and not _lifelong(p)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    leaked = []
    for p in alive:
        try:
            leaked.append(f"{p.name()}[{p.pid}]")
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _SEEN.clear()
    return leaked


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (the harness's timeout path)."""
    procs = descendants(pid)
    try:
        procs.insert(0, psutil.Process(pid))
    except psutil.Error:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def _lifelong(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return any(x in cmd for x in _LIFELONG)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
