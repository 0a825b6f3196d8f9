"""One task per trio run that keeps time for all its links (``link.StreamLink``):
their pings and their peers' silence. See ``Timekeeper``."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import trio

log = logging.getLogger("grain.net.link")

KEEPER_SLACK = 0.002
"""The timekeeper looks at the links due within this many seconds in one go; a link's
``keep_time`` does what falls due that soon, so its next look is always later."""


class Kept(Protocol):
    """What the timekeeper needs of a link."""

    peer: str
    check_at: float
    """When the timekeeper looks at it next (NaN: never again); set by ``schedule``."""

    def keep_time(self, now: float) -> float | None:
        """Ping or close as due at ``now``; when to look again (None: closed)."""

    def close(self, reason: str = "closed") -> None: ...


class Timekeeper:
    """Keeps time for every ``StreamLink`` of a trio run, from one task: sends the pings
    of links that have been quiet for their heartbeat, and closes links whose peer has
    been silent for their timeout.

    A link could keep its own time (a cancel scope with a deadline for its reader's
    wait, another for its writer's), and did: every message moved a deadline, and trio
    keeps deadlines in a heap that it rebuilds when stale entries pile up. At 1,000
    connected workers that rebuild walked ~5,000 entries and stopped the executor's
    event loop for 4-6 ms every 2-3 s, the longest stall left; the cancel scopes and
    their waits were also ~4 objects per link that full garbage collections walked.
    Here each link has one entry in a heap of its own, moved only when it is looked at
    (a ping, a check for silence: a few times per heartbeat), not per message; a link
    looked at too early says when to look again (``keep_time``)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Kept]] = []
        self._order = itertools.count()
        self._nap: trio.CancelScope | None = None

    def schedule(self, link: Kept, when: float) -> None:
        """Look at ``link`` at ``when`` (instead of whenever it was due)."""
        link.check_at = when
        heapq.heappush(self._heap, (when, next(self._order), link))
        if self._nap is not None and when < self._nap.deadline:
            self._nap.deadline = when

    async def run(self) -> None:
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._nap:
                await trio.sleep_forever()
            self._nap = None
            now = trio.current_time()
            while heap and heap[0][0] <= now + KEEPER_SLACK:
                when, _, link = heapq.heappop(heap)
                if when != link.check_at:
                    continue             # moved since, or the link is gone
                try:
                    nxt = link.keep_time(now)
                except Exception as e:  # noqa: BLE001 - one link's fault stays its own
                    log.exception("link to %s: keeping time failed", link.peer)
                    link.close(f"internal error: {e!r}")
                    nxt = None
                if nxt is None:
                    link.check_at = math.nan
                else:
                    link.check_at = nxt
                    heapq.heappush(heap, (nxt, next(self._order), link))


_timekeeper: trio.lowlevel.RunVar[Timekeeper] = trio.lowlevel.RunVar("grain_link_timekeeper")


def timekeeper() -> Timekeeper:
    """This trio run's timekeeper, started with its first link."""
    try:
        return _timekeeper.get()
    except LookupError:
        keeper = Timekeeper()
        _timekeeper.set(keeper)
        trio.lowlevel.spawn_system_task(keeper.run, name="grain link timekeeper")
        return keeper
