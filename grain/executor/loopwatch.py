"""How long the executor's event loop goes without looking at its sockets.

While the loop runs tasks it reads no peer's message and answers no ``/healthz``: every
such stretch is a stall for all peers at once (a full garbage collection, a long
placement pass, a huge message decoded). ``LoopWatch`` is a trio instrument that times
each stretch from the scheduler's return from its I/O poll (``after_io_wait``) to its
next poll (``before_io_wait``): exactly the time no socket was looked at. It keeps

- the time busy in all (``busy_seconds``): busy ÷ elapsed is how loaded the executor's
  one core is, the figure to watch before a cluster outgrows one executor
  (``docs/scaling.md``);
- the longest stretch of the last one to two minutes (``longest()``), for a gauge;

and logs a warning when one stretch passes ``warn`` seconds (at most one a minute).
Two calls per scheduler pass, not per task step: under load a pass handles a batch of
messages, so this costs well under a microsecond per job. ``grain executor`` installs it
(``/metrics``); the embedded cluster does not (its loop runs the user's program too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

log = logging.getLogger("grain.executor")

WINDOW = 60.0
"""Seconds per window of ``longest()``: it reports this window's and the previous one's."""
WARN_SECONDS = 1.0
"""A stretch this long is logged (every peer waited that long)."""
WARN_EVERY = 60.0


class LoopWatch(trio.abc.Instrument):
    """Times the event loop's stretches between I/O polls (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 window: float = WINDOW, warn: float = WARN_SECONDS) -> None:
        self._clock = clock
        self._window = window
        self._warn = warn
        now = clock()
        self._since = now               # when the current stretch began
        self._window_end = now + window
        self._longest_now = 0.0         # longest stretch of the current window
        self._longest_before = 0.0      # ... and of the previous one
        self._warned_at = -math.inf
        self.busy_seconds = 0.0
        self.longest_ever = 0.0

    def after_io_wait(self, timeout: float) -> None:
        self._since = self._clock()

    def before_io_wait(self, timeout: float) -> None:
        now = self._clock()
        busy = now - self._since
        self.busy_seconds += busy
        if now >= self._window_end:
            self._roll(now)
        if busy > self._longest_now:
            self._longest_now = busy
            if busy > self.longest_ever:
                self.longest_ever = busy
        if busy >= self._warn and now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("the event loop ran %.2f s without looking at its sockets: every "
                        "peer waited that long (a full garbage collection, a long placement "
                        "pass or a huge message?)", busy)

    def _roll(self, now: float) -> None:
        # a whole window without a pass (an idle loop waits in its poll) counts as quiet
        gap = now >= self._window_end + self._window
        self._longest_before = 0.0 if gap else self._longest_now
        self._longest_now = 0.0
        self._window_end = now + self._window

    def longest(self) -> float:
        """The longest stretch without an I/O poll in the last one to two windows."""
        now = self._clock()
        if now >= self._window_end:
            self._roll(now)
        return max(self._longest_now, self._longest_before)


class Polls(trio.abc.Instrument):
    """Counts the event loop's returns from its I/O poll: work done while ``count`` stays
    the same is one stretch in which no socket is looked at. The executor gives its own
    placement work a budget per stretch (``Executor._pump``): when a thousand workers'
    registrations run in one stretch, each placing jobs on its worker, the stretch would
    otherwise be all of that placement at once (0.4-0.5 s for 200 workers of 64 cores,
    ``bench/stall.py``, phase "place")."""

    def __init__(self) -> None:
        self.count = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1
