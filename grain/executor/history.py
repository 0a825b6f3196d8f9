"""What the executor did over the last minutes: throughput, utilization, recent failures.

A ``History`` is one of the executor's observers (``Executor.observers``): it is told of
every job start and end. Its hooks do O(1) work: they add one to a counter in a ring of
per-second slots (and, for a failed job, append a small record to a bounded deque). How
busy the cluster is (cores in use, cores registered, jobs queued) is *sampled*, once a
second, by ``sample``: the HTTP server runs ``sample_forever`` beside its listener, and
every status document built samples the present too, so nothing on the job path pays for
it. A second that nobody sampled reads as ``None`` (unknown), never as zero.

``attach(executor)`` installs one ``History`` on an executor (once) and returns it;
``of(executor)`` returns the installed one, or ``None``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..protocol.messages import End
from .ledger import JobRecord, JobState

if TYPE_CHECKING:
    from .core import Executor

#: seconds of history kept (one slot per second)
WINDOW = 600
#: failures remembered (newest first in the status document)
FAILURES = 50
#: characters of a failure's error message kept (the runner's message is one line,
#: ``Type: text``; a hostile or huge one must not bloat every status document)
ERROR_CHARS = 1000
#: users whose totals are counted; past this many, new names are counted under "(other)"
MAX_USERS = 1000


class History:
    """Per-second counters over the last ``window`` seconds, and the last failures.

    ``clock`` is wall-clock time (the slots are named by Unix second, so a page can label
    its axis); ``mono`` is the executor's clock, which a job's ``started_at`` is on.
    """

    def __init__(self, window: int = WINDOW, failures: int = FAILURES, *,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2 seconds, not {window}")
        self.window = window
        self.clock = clock
        self.mono = mono
        self.sec = int(clock())              # the second the newest slot stands for
        self.since = self.sec                # the first second observed
        self.started = [0] * window
        self.finished = [0] * window
        self.failed = [0] * window
        self.cancelled = [0] * window
        # sampled: None until something sampled that second
        self.cores_busy: list[int | None] = [None] * window
        self.cores_total: list[int | None] = [None] * window
        self.queued: list[int | None] = [None] * window
        self.failures: deque[dict[str, Any]] = deque(maxlen=failures)
        self.users: dict[str, list[int]] = {}   # user -> [finished, failed]

    # -- the ring --------------------------------------------------------------------
    def _slot(self) -> int:
        """The slot of the present second, clearing the slots of seconds skipped since
        the last call (at most ``window`` of them: amortised O(1) per second)."""
        now = int(self.clock())
        if now > self.sec:
            gap = min(now - self.sec, self.window)
            for k in range(1, gap + 1):
                i = (self.sec + k) % self.window
                self.started[i] = self.finished[i] = self.failed[i] = self.cancelled[i] = 0
                self.cores_busy[i] = self.cores_total[i] = self.queued[i] = None
            self.sec = now
        # a clock that stepped back counts into the newest slot
        return self.sec % self.window

    # -- observer hooks (O(1)) --------------------------------------------------------
    def on_start(self, rec: JobRecord, worker_name: str) -> None:
        """A job was dispatched to a worker."""
        self.started[self._slot()] += 1

    def on_end(self, rec: JobRecord, end: int, message: str, worker_name: str) -> None:
        """A job ended (once per job): count it, and remember it if it failed."""
        i = self._slot()
        totals = self.users.get(rec.user)
        if totals is None:
            key = rec.user if len(self.users) < MAX_USERS else "(other)"
            totals = self.users.setdefault(key, [0, 0])
        if end == End.OK:
            self.finished[i] += 1
            totals[0] += 1
            return
        if end == End.CANCELLED:
            self.cancelled[i] += 1
            return
        self.failed[i] += 1
        totals[1] += 1
        ran = self.mono() - rec.started_at if rec.state is JobState.RUNNING else None
        self.failures.append({
            "at": round(self.clock(), 3),
            "job": rec.name,
            "user": rec.user,
            "worker": worker_name,
            "end": _end_name(end),
            "error": message[:ERROR_CHARS],
            "ran_s": round(ran, 3) if ran is not None and ran >= 0 else None,
            "attempts": rec.attempts,
        })

    # -- sampling --------------------------------------------------------------------
    def sample(self, cores_busy: int, cores_total: int, queued: int) -> None:
        """Record how busy the cluster is now (the last sample of a second wins)."""
        i = self._slot()
        self.cores_busy[i] = cores_busy
        self.cores_total[i] = cores_total
        self.queued[i] = queued

    def sample_executor(self, ex: Executor) -> None:
        """``sample`` from an executor's placement: O(users + workers)."""
        busy = sum(st.cores for st in ex.placement.user_stats().values())
        total = 0
        for w in ex.placement.workers.values():
            total += int(getattr(w.total.kinds().get("Cores"), "N", 0) or 0)
        self.sample(busy, total, len(ex.placement))

    async def sample_forever(self, ex: Executor, interval: float = 1.0) -> None:
        """Sample ``ex`` every ``interval`` seconds until cancelled."""
        while True:
            self.sample_executor(ex)
            await trio.sleep(interval)

    # -- the document ----------------------------------------------------------------
    def series(self) -> dict[str, Any]:
        """The last ``window`` seconds, oldest first: ``end`` is the Unix second of the
        last entry, one entry per ``step_s``; ``since`` is the first second this history
        observed (entries before it were never observed)."""
        self._slot()
        first = (self.sec + 1) % self.window

        def ordered(ring: list[Any]) -> list[Any]:
            return ring[first:] + ring[:first]
        return {
            "step_s": 1,
            "end": self.sec,
            "since": self.since,
            "started": ordered(self.started),
            "finished": ordered(self.finished),
            "failed": ordered(self.failed),
            "cancelled": ordered(self.cancelled),
            "cores_busy": ordered(self.cores_busy),
            "cores_total": ordered(self.cores_total),
            "queued": ordered(self.queued),
        }

    def recent_failures(self) -> list[dict[str, Any]]:
        """The remembered failures, newest first."""
        return list(reversed(self.failures))

    def user_totals(self, user: str) -> tuple[int, int]:
        """(finished, failed) jobs of ``user`` since this history was attached."""
        t = self.users.get(user)
        return (t[0], t[1]) if t is not None else (0, 0)


def _end_name(end: int) -> str:
    try:
        return End(end).name.lower()
    except ValueError:
        return str(end)


def of(ex: Executor) -> History | None:
    """The ``History`` installed on ``ex``, if any."""
    for ob in ex.observers:
        if isinstance(ob, History):
            return ob
    return None


def attach(ex: Executor, **kw: Any) -> History:
    """Install a ``History`` on ``ex`` (once: a second call returns the first)."""
    h = of(ex)
    if h is None:
        h = History(mono=ex.clock, **kw)
        ex.observers.append(h)
    return h
