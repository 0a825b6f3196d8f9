"""The executor's memory housekeeping: full garbage collections on its own schedule."""

from __future__ import annotations

import gc

import trio
import trio.testing

from grain.executor.heap import full_collections


def test_full_collections_run_on_schedule_and_never_by_themselves() -> None:
    """While the task runs, the collector starts no full collection of its own (its
    oldest generation's threshold is out of reach) and one runs every ``interval``; when
    the task ends, the thresholds are what they were."""
    before = gc.get_threshold()

    async def main() -> tuple[tuple[int, ...], int]:
        async with trio.open_nursery() as n:
            n.start_soon(full_collections, 5.0)
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
