"""Message links with latency, cuts and partitions, for the simulation.

``sim_link_pair`` gives two ``Link`` ends like ``memory_link_pair`` does, but each
direction is a pipe that delivers a message ``delay()`` seconds (trio time: mock time in
the simulation) after it was sent, in order (a later message never overtakes an earlier
one, as on a TCP stream). Closing an end is a FIN: what is in flight still arrives, then
the peer sees the link closed. ``cut`` is a network failure: what is in flight is lost
and both ends see the link closed at once; ``silent=True`` marks it as a heartbeat timeout
on the far end (the peer may be alive behind a broken network), as ``StreamLink`` does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ..net.link import Link, LinkClosed
from ..net.mailbox import Mailbox
from ..protocol.frames import Message

_FIN = object()


class _Pipe:
    """One direction: messages wait ``delay()`` seconds, then land in ``dest``."""

    def __init__(self, dest: Mailbox, delay: Callable[[], float], nursery: trio.Nursery) -> None:
        self.dest = dest
        self.delay = delay
        self.closed: str | None = None
        self._queue: deque[tuple[float, Any]] = deque()
        self._last = 0.0
        self._nursery = nursery
        self._pumping = False

    def put(self, item: Any) -> None:
        d = self.delay()
        if d <= 0 and not self._queue:
            if item is _FIN:
                self.dest.close(self.closed or "closed by the peer")
            else:
                self.dest.put(item)      # no latency: as a memory link does
            return
        self._last = max(self._last, trio.current_time() + d)
        self._queue.append((self._last, item))
        if not self._pumping:
            self._pumping = True
            self._nursery.start_soon(self._pump)

    def fin(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.put(_FIN)

    def cut(self, reason: str) -> None:
        self.closed = self.closed or reason
        self._queue.clear()
        self.dest.close(reason)

    async def _pump(self) -> None:
        try:
            while self._queue:
                due = self._queue[0][0]
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                    continue
                batch: list[Message] = []
                while self._queue and self._queue[0][0] <= trio.current_time():
                    item = self._queue.popleft()[1]
                    if item is _FIN:
                        self.dest.put_many(batch)
                        batch = []
                        self.dest.close(self.closed or "closed by the peer")
                        self._queue.clear()
                        break
                    batch.append(item)
                self.dest.put_many(batch)
        finally:
            self._pumping = False


class SimLink(Link):
    """One end of a simulated link."""

    def __init__(self, inbox: Mailbox, out: _Pipe, peer: str) -> None:
        self._in = inbox
        self._pipe = out
        self.peer = peer
        self.silent = False
        self.other: SimLink | None = None

    def send(self, header: Any, payload: bytes = b"") -> None:
        closed = self._pipe.closed or self._pipe.dest.closed or self._in.closed
        if closed is not None:
            raise LinkClosed(closed)
        self._pipe.put((header, payload))

    def close(self, reason: str = "closed") -> None:
        self._in.close(reason)          # this end reads no more
        self._pipe.fin(reason)          # the peer reads what is in flight, then the end

    def cut(self, reason: str = "connection lost", silent: bool = False) -> None:
        """The network fails: both ends closed now, messages in flight lost. ``silent``
        marks the *other* end's link as timed out (this end is the one that went away)."""
        assert self.other is not None
        self.other.silent = silent
        self._pipe.cut(reason)
        self.other._pipe.cut(reason)


def sim_link_pair(nursery: trio.Nursery, delay_ab: Callable[[], float],
                  delay_ba: Callable[[], float], name_a: str = "a",
                  name_b: str = "b") -> tuple[SimLink, SimLink]:
    """Two connected ends: ``a.send`` arrives at ``b.receive`` after ``delay_ab()``
    seconds, and back after ``delay_ba()``. Pipes' tasks run in ``nursery``."""
    box_a, box_b = Mailbox(), Mailbox()
    a = SimLink(box_a, _Pipe(box_b, delay_ab, nursery), name_b)
    b = SimLink(box_b, _Pipe(box_a, delay_ba, nursery), name_a)
    a.other, b.other = b, a
    return a, b
