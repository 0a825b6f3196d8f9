"""The executor's placement budget per stretch of its event loop (``Executor._pump``).

Many peers' steps may run in one stretch (a thousand workers registering at once) and each
calls ``_pump``: placement must not get a budget per call, or the stretch holds all of
their placements before any socket is looked at. The budget itself is a time; what is
tested here is who gets it, without timing anything."""

from __future__ import annotations

from typing import Any

import trio

from grain import config
from grain.executor.core import Executor
from grain.executor.loopwatch import Polls
from grain.resource import Cores


def _executor() -> tuple[Executor, list[int]]:
    """An executor whose placement has a job queued (no worker: nothing can start) and
    counts its calls."""
    ex = Executor()
    ex.placement.enqueue(1, Cores(1), user="u")
    calls: list[int] = []
    schedule = ex.placement.schedule

    def counted(max_placements: int | None = None) -> list[Any]:
        calls.append(1)
        return schedule(max_placements)

    ex.placement.schedule = counted  # type: ignore[method-assign]
    return ex, calls


def test_a_stretch_whose_budget_is_spent_leaves_placement_to_the_next() -> None:
    async def main() -> None:
        ex, calls = _executor()
        ex._polls = Polls()
        ex._stretch_work(0.0)              # this stretch
        ex._pump_spent = 10 * config.STEP_SECONDS
        ex._pump()
        assert not calls and ex._pump_more.is_set(), "the next stretch's work"
        ex._polls.after_io_wait(0.0)       # the loop polled its sockets: a new stretch
        ex._pump()
        assert len(calls) == 1

    trio.run(main)


def test_the_messages_of_a_stretch_buy_placement_time_in_it() -> None:
    async def main() -> None:
        ex, calls = _executor()
        ex._polls = Polls()
        ex._stretch_work(0.0)
        ex._pump_spent = 10 * config.STEP_SECONDS
        assert ex._stretch_work(0.0) <= 0
        assert ex._stretch_work(10 * config.STEP_SECONDS) > 0, "twice what they took"
        ex._pump()
        assert len(calls) == 1

    trio.run(main)


def test_without_the_instrument_every_call_may_place() -> None:
    """An executor whose ``run`` has not started (no stretches counted) places when
    asked, as before."""
    ex, calls = _executor()
    ex._pump_spent = 10 * config.STEP_SECONDS
    ex._pump()
    ex._pump()
    assert len(calls) == 2
