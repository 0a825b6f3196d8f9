"""Giving the memory the executor freed back to the system.

glibc keeps freed blocks for reuse: after 2,000 peers that never authenticated, a client's
big functions or a million queued jobs that are gone, the process would keep its peak size
for ever. ``return_free_memory`` checks every few seconds and, past a slack, asks glibc to
give back what it holds free (``malloc_trim``). ``bench/stall.py`` runs it too (its
``after`` phase), so that its stalls count.

Tried and not kept: turning glibc's automatic trim off (``mallopt``) and giving the heap
back in bounded steps from here instead. The trim that a ``free`` makes at the heap's top
was a stall of 10 ms in one benchmark run, but in eight A/B runs since, neither way was
steadily better (and a bounded step still stalled 12 ms once, in ``malloc_trim``'s walk
over the free blocks), so glibc's defaults stay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

import trio

SLACK = 8 * 1024 ** 2
"""Free memory up to this is kept (it is reused soon)."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


async def return_free_memory(interval: float = 5.0, slack: int = SLACK) -> None:
    """Every ``interval`` seconds, give back what glibc holds free past ``slack`` (well
    under a millisecond usually; a few after a million jobs went). Returns at once when
    this is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2, trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):
        return      # not glibc (or too old): nothing to do
    mallinfo2.restype = _MallInfo2
    while True:
        await trio.sleep(interval)
        if mallinfo2().fordblks > slack:
            trim(0)


TARGET = 0.001
"""Seconds one scheduled full collection should take: the interval between them adapts
so that each walks about this much (``next_interval``)."""
SHORTEST = 0.05
LONGEST = 2.0
"""Bounds of the interval between scheduled full collections (seconds)."""
DEEP_EVERY = 3600.0
"""Every this many seconds, everything is thawed first and walked once: frees whatever
garbage cycles formed among frozen objects, which no scheduled collection walks."""


def next_interval(interval: float, took: float, target: float = TARGET,
                  shortest: float = SHORTEST, longest: float = LONGEST) -> float:
    """The wait before the next scheduled full collection, from the last one's
    ``interval`` and how long it ``took``. A collection walks what was made since the
    last one and still lives, about in proportion to the interval: halve it when a walk
    took longer than ``target``, double it when under a quarter of that."""
    if took > target:
        return max(shortest, interval / 2)
    if took < target / 4:
        return min(longest, interval * 2)
    return interval


def deep_due(now: float, last_deep: float, every: float = DEEP_EVERY) -> bool:
    """Whether the scheduled collection at ``now`` should be a deep one (thaw, walk
    everything, freeze): ``every`` seconds after the last."""
    return now - last_deep >= every


async def full_collections(*, target: float = TARGET, shortest: float = SHORTEST,
                           longest: float = LONGEST, deep_every: float = DEEP_EVERY,
                           stopwatch: Callable[[], float] = time.perf_counter) -> None:
    """Run the garbage collector's full collections from here, each in a step of its
    own, instead of letting them start inside whatever step allocates when one falls due
    (about every second or two under load), and freeze what each leaves alive so that no
    object is walked by more than one of them.

    A full collection walks every object the collector tracks that is not frozen
    (``gc.freeze``), with the event loop stopped: ~0.3-0.6 us each. So:

    - the objects that exist when this starts (what start-up made: the modules, classes
      and functions of everything the executor imported, ~28,000 tracked objects, which
      live as long as the process) are frozen first: in an interpreter that imported the
      executor one full collection took 6.4-6.7 ms with them and 0.2 ms without;
    - after every scheduled collection, what survived it is frozen: the next walks only
      what was made since and still lives. What a connected peer keeps is frozen once;
      what a busy executor makes anew all the time is the suspended call chains of every
      link's tasks, remade at each message or heartbeat (~34 tracked objects per worker
      over TCP, every 2 s): with 1,000 workers, full collections every 2 s, freezing
      every 30 s, took 17-28 ms each, all of it those chains (and found no garbage);
    - so the interval adapts (``next_interval``): a walk is about in proportion to the
      time since the last, and the interval halves while walks take over ``target``
      (1 ms) and doubles while they take under a quarter of it, between ``shortest`` and
      ``longest``. The collector's total work is the same (each object is walked once
      at most); it comes in steps of a millisecond or two instead of one long one;
    - frozen objects are still freed by reference counting; only garbage *cycles* among
      them wait for a deep collection, which thaws everything and walks it all once
      (with 1,000 workers: 45-76 ms), then freezes what survived: every ``deep_every``
      seconds (an hour). A peer that leaves makes no such cycle
      (``tests/network/test_departures_gc.py`` has every kind of peer leave every way
      from a real executor that froze them and finds none), so a cluster whose clients
      and workers come and go does not need one after each departure, as it did while
      every resource kind referred to itself (``Resource._parts``); what else is frozen
      and let go in cycles waits for the hourly walk.

    Running jobs and queued jobs add nothing here: their records, queue entries and
    grants are invisible to the collector. Young generations are still collected as
    usual. The thresholds are restored, and everything thawed, when this task ends.
    ``stopwatch`` times the walks (a test's fake one steers the interval)."""
    import gc
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], 2 ** 30)   # no full collection by itself
    gc.collect(2)     # garbage made while starting must not be frozen with the rest
    gc.freeze()
    try:
        interval = longest
        last_deep = trio.current_time()
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            if deep_due(now, last_deep, deep_every):
                gc.unfreeze()
                gc.collect(2)
                gc.freeze()
                last_deep = now
                continue        # the deep walk's length says nothing of the next one's
            t = stopwatch()
            gc.collect(2)
            took = stopwatch() - t
            gc.freeze()
            interval = next_interval(interval, took, target, shortest, longest)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
