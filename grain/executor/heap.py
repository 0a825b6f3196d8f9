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


FREEZE_EVERY = 15
"""Every this many scheduled full collections, what survived the last is frozen."""
DEEP_EVERY = 150
"""At most every this many, everything is thawed first and walked once (frees cycles
among what was frozen: the links and sessions of peers that have left), when one has."""
DEEP_MAX_EVERY = 1800
"""Every this many (an hour), a deep collection whether a peer left or not."""


async def full_collections(interval: float = 2.0, freeze_every: int = FREEZE_EVERY,
                           deep_every: int = DEEP_EVERY,
                           departures: Callable[[], int] | None = None,
                           deep_max_every: int = DEEP_MAX_EVERY) -> None:
    """Run the garbage collector's full collections from here, one every ``interval``
    seconds, in a step of their own, instead of letting them start inside whatever step
    allocates when one falls due (about every second or two under load).

    A full collection walks every object the collector tracks that is not frozen
    (``gc.freeze``), with the event loop stopped: ~0.3 us each. So:

    - the objects that exist when this starts (what start-up made: the modules, classes
      and functions of everything the executor imported, ~28,000 tracked objects, which
      live as long as the process) are frozen first: in an interpreter that imported the
      executor one full collection took 6.4-6.7 ms with them and 0.2 ms without;
    - every ``freeze_every``-th collection (30 s by default), what survived it is frozen
      too: what has lived that long is mostly what lives long, the links, tasks and
      sessions of connected peers (~150 tracked objects per worker over TCP; with 1,000
      workers one full collection took 45-76 ms, every 2 s, and 11-13 ms once they were
      frozen). Frozen objects are still freed by
      reference counting; only garbage cycles among them wait for
    - a deep collection, which thaws everything and walks it all once (the old cost:
      45-76 ms with 1,000 workers), then freezes what survived: at most every
      ``deep_every`` collections (5 min) and only when ``departures()`` (a count of peer
      connections that ended, the executor's) changed since the last one, since a
      cluster whose peers stay makes no such garbage; at least every
      ``deep_max_every`` (an hour) for whatever else was frozen and let go. Without
      ``departures``, every ``deep_every``-th.

    Running jobs and queued jobs add nothing here: their records, queue entries and
    grants are invisible to the collector. Young generations are still collected as
    usual. The thresholds are restored, and everything thawed, when this task ends."""
    import gc
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], 2 ** 30)   # no full collection by itself
    gc.collect(2)     # garbage made while starting must not be frozen with the rest
    gc.freeze()
    try:
        rounds = since_deep = 0
        gone_at_deep = departures() if departures is not None else 0
        while True:
            await trio.sleep(interval)
            rounds += 1
            since_deep += 1
            gone = departures() if departures is not None else gone_at_deep + 1
            if (deep_every and since_deep >= deep_every and gone != gone_at_deep) or \
                    (deep_max_every and since_deep >= deep_max_every):
                gc.unfreeze()
                gc.collect(2)
                gc.freeze()
                since_deep, gone_at_deep = 0, gone
            else:
                gc.collect(2)
                if freeze_every and rounds % freeze_every == 0:
                    gc.freeze()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
