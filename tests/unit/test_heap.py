"""The executor's memory housekeeping: full garbage collections on its own schedule."""

from __future__ import annotations

import gc
import weakref
from functools import partial
from itertools import pairwise

import trio
import trio.testing

from grain.executor.heap import deep_due, full_collections, next_interval


def test_full_collections_run_on_schedule_and_never_by_themselves() -> None:
    """While the task runs, the collector starts no full collection of its own (its
    oldest generation's threshold is out of reach) and one runs every interval (here held
    at 5 s); when the task ends, the thresholds are what they were."""
    before = gc.get_threshold()

    async def main() -> tuple[tuple[int, ...], int]:
        async with trio.open_nursery() as n:
            n.start_soon(partial(full_collections, shortest=5.0, longest=5.0))
            await trio.testing.wait_all_tasks_blocked()
            during = gc.get_threshold()
            full = gc.get_stats()[2]["collections"]
            await trio.sleep(16.0)      # three intervals pass (the clock jumps)
            ran = gc.get_stats()[2]["collections"] - full
            n.cancel_scope.cancel()
        return during, ran

    during, ran = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert during[:2] == before[:2] and during[2] >= 2 ** 30
    assert ran == 3
    assert gc.get_threshold() == before


class _Cycle:
    """A reference cycle: only a full (or young) collection frees it."""

    def __init__(self) -> None:
        self.me = self


def test_what_existed_at_start_is_not_walked_by_full_collections_but_new_garbage_goes() -> None:
    """The objects alive when the task starts (the executor's imported modules, here the
    test's) are frozen: no full collection walks them again. Garbage cycles made later,
    promoted to the oldest generation, are still freed by the scheduled collections; when
    the task ends, everything is thawed."""
    old = _Cycle()
    young_ref: list[weakref.ref[_Cycle]] = []

    def in_generations(obj: object) -> bool:
        return any(o is obj for g in range(3) for o in gc.get_objects(g))

    async def main() -> tuple[bool, int]:
        async with trio.open_nursery() as n:
            n.start_soon(partial(full_collections, shortest=5.0, longest=5.0))
            await trio.testing.wait_all_tasks_blocked()
            frozen_old = not in_generations(old)
            young = _Cycle()
            young_ref.append(weakref.ref(young))
            gc.collect(1)                     # into the oldest generation
            del young
            await trio.sleep(6.0)             # one scheduled full collection
            frozen = gc.get_freeze_count()
            n.cancel_scope.cancel()
        return frozen_old, frozen

    frozen_old, frozen = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert frozen_old and frozen > 1000
    assert young_ref[0]() is None
    assert gc.get_freeze_count() == 0 and in_generations(old)


def test_survivors_are_frozen_and_cycles_among_them_go_with_the_deep_collection() -> None:
    """What survives a scheduled collection (a connected peer's link and session) is
    frozen: the next full collections do not walk it. A garbage cycle among frozen
    objects waits for the deep collection, which walks everything once (here every
    ``deep_every`` = 5.5 s)."""
    gone_ref: list[weakref.ref[_Cycle]] = []

    def in_generations(obj: object) -> bool:
        return any(o is obj for g in range(3) for o in gc.get_objects(g))

    async def main() -> list[tuple[bool, bool, bool]]:
        seen = []
        async with trio.open_nursery() as n:
            n.start_soon(partial(full_collections, shortest=1.0, longest=1.0,
                                 deep_every=5.5))
            await trio.testing.wait_all_tasks_blocked()
            kept, gone = _Cycle(), _Cycle()     # made after the start: not frozen yet
            gone_ref.append(weakref.ref(gone))

            def state() -> tuple[bool, bool, bool]:
                g = gone_ref[0]()
                return (in_generations(kept), g is not None and in_generations(g),
                        g is not None)
            seen.append(state())
            await trio.sleep(1.5)           # collection 1: then survivors frozen
            seen.append(state())
            del gone                        # a cycle of frozen objects: garbage now
            await trio.sleep(3.0)           # collections 2-4 do not walk it
            seen.append(state())
            await trio.sleep(2.0)           # collection 5 neither; 6 is the deep one
            seen.append(state())
            seen.append((kept is not None, False, False))
            n.cancel_scope.cancel()
        return seen

    seen = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen[0] == (True, True, True), "new objects are walked by full collections"
    assert seen[1] == (False, False, True), "survivors of a collection are frozen"
    assert seen[2] == (False, False, True), "a frozen garbage cycle is not walked (kept)"
    assert seen[3] == (False, False, False), "the deep collection frees it, refreezes kept"
    assert gc.get_freeze_count() == 0


def test_the_deep_collection_comes_on_its_timer_only() -> None:
    """Deep collections (the long walks) come every ``deep_every`` seconds and at no
    other time: a frozen garbage cycle stays until the next one, however many scheduled
    collections pass in between."""
    refs: list[weakref.ref[_Cycle]] = []

    async def main() -> list[bool]:
        alive = []
        async with trio.open_nursery() as n:
            n.start_soon(partial(full_collections, shortest=1.0, longest=1.0,
                                 deep_every=6.0))
            await trio.testing.wait_all_tasks_blocked()
            c = _Cycle()
            refs.append(weakref.ref(c))
            await trio.sleep(1.5)       # collection 1 freezes it
            del c                       # garbage among frozen objects
            await trio.sleep(4.0)       # collections 2-5 are not deep
            alive.append(refs[0]() is not None)
            await trio.sleep(1.0)       # collection 6: deep (6 s have passed)
            alive.append(refs[0]() is not None)
            c = _Cycle()
            refs[0] = weakref.ref(c)
            await trio.sleep(1.0)       # collection 7 freezes it
            del c
            await trio.sleep(4.0)       # collections 8-11 are not deep
            alive.append(refs[0]() is not None)
            await trio.sleep(1.0)       # collection 12: deep (6 s after the last)
            alive.append(refs[0]() is not None)
            n.cancel_scope.cancel()
        return alive

    alive = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert alive == [True, False, True, False]


def test_the_interval_follows_what_a_walk_costs() -> None:
    """Walks that take longer than the target (1 ms) halve the interval down to the
    shortest; walks well under it double it back up to the longest. A fake stopwatch
    says how long each walk took; the walks' start times give the intervals."""
    cost = [0.004]
    calls: list[float] = []
    reading = [0.0]

    def stopwatch() -> float:      # called just before and just after each walk
        calls.append(trio.current_time())
        reading[0] += cost[0] / 2
        return reading[0]

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(partial(full_collections, shortest=0.05, longest=2.0,
                                 stopwatch=stopwatch))
            await trio.sleep(4.3)       # 2 + 1 + 0.5 + 0.25 + 0.125 + 0.0625 + 0.05 * 7
            cost[0] = 0.0001            # walks cost nothing now
            await trio.sleep(3.2)       # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    starts = calls[::2]
    gaps = [round(b - a, 4) for a, b in pairwise([0.0, *starts])]  # the clock starts at 0
    assert gaps[:8] == [2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.05, 0.05]
    slow = [g for g in gaps[6:] if g == 0.05]
    assert gaps[6 + len(slow):] == [0.1, 0.2, 0.4, 0.8, 1.6], gaps


def test_the_interval_and_the_deep_collection_rules() -> None:
    """The pure decisions: the interval halves over the target and doubles well under
    it, within its bounds; the deep collection comes ``every`` seconds (an hour)."""
    assert next_interval(2.0, 0.004) == 1.0
    assert next_interval(0.06, 0.004) == 0.05
    assert next_interval(1.0, 0.0005) == 1.0
    assert next_interval(1.0, 0.0001) == 2.0
    assert next_interval(2.0, 0.0001) == 2.0
    assert not deep_due(3599.0, 0.0)
    assert deep_due(3600.0, 0.0)
    assert not deep_due(105.0, 100.0, every=10.0)
    assert deep_due(110.0, 100.0, every=10.0)
