"""A job's processes end with the job: find every descendant of a runner and kill it.

A runner is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): when a process its job
started exits, that process's children are re-parented to the runner instead of to init,
so even a double-forked ``setsid`` daemon stays a descendant of the runner, where it can
be found (``/proc/PID/task/TID/children``) and killed. The runner kills its descendants
after every job (``reap_descendants``); the worker kills the runner's whole tree when it
stops a job from outside (``kill_tree``: cancel, ``WTime``, ``Memory``).

Only the standard library, so that the worker can use it without importing the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when the thread that forked it exits."""
    return _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included), from every one of its threads."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before their children."""
    out: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        nxt: list[int] = []
        for p in frontier:
            for c in children(p):
                if c not in seen:
                    seen.add(c)
                    out.append(c)
                    nxt.append(c)
        frontier = nxt
    return out


def exited(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped) or is gone."""
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True   # gone already
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def reap_descendants(timeout: float = 5.0) -> int:
    """Kill every descendant of this process and reap them; return how many were killed.

    Costs one ``waitid`` system call when the job started no process (the common case).
    A process killed here re-parents its own children to us (we are their subreaper), so
    the loop goes on until no child is left: forks racing the kill are caught in the next
    round. Gives up after ``timeout`` seconds (a process stuck in the kernel cannot die
    sooner); the worker then replaces the runner."""
    if not _has_children():
        return 0
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = [p for p in descendants(me) if not _zombie(p)]
        for p in tree:          # parents first: a killed parent forks no more
            _kill(p, signal.SIGKILL)
        killed.update(tree)
        _reap_children()
        if not _has_children():
            return len(killed)
        time.sleep(0.0005)      # the killed are still exiting
    return len(killed)


def _has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(pid: int, timeout: float = 2.0) -> None:
    """SIGKILL process ``pid`` and all its descendants, from outside.

    ``pid`` (a runner, a subreaper) is stopped first so that it neither forks nor reaps
    while its tree is listed and killed; descendants killed here leave their children to
    it, where the next round finds them. ``pid`` dies last: dying first would hand its
    descendants to init, out of sight."""
    _kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        tree = [p for p in descendants(pid) if not _zombie(p)]
        if not tree or time.monotonic() > deadline:
            break
        for p in tree:
            _kill(p, signal.SIGKILL)
        time.sleep(0.0005)
    _kill(pid, signal.SIGKILL)


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total
