"""The executor's event-loop watch: stretches between I/O polls, timed on a fake clock
and in a real trio loop."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from grain.executor.loopwatch import LoopWatch


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _pass(w: LoopWatch, clock: Clock, busy: float, idle: float = 0.0) -> None:
    """One scheduler pass: the poll returns, tasks run ``busy`` s, the next poll waits
    ``idle`` s."""
    w.after_io_wait(0.0)
    clock.t += busy
    w.before_io_wait(0.0)
    clock.t += idle


def test_it_keeps_the_busy_time_and_the_longest_stretch_of_the_last_windows() -> None:
    clock = Clock()
    w = LoopWatch(clock, window=60.0)
    _pass(w, clock, 0.002, idle=1.0)
    _pass(w, clock, 0.030, idle=1.0)
    _pass(w, clock, 0.001, idle=1.0)
    assert w.busy_seconds == pytest.approx(0.033)
    assert w.longest() == pytest.approx(0.030)
    clock.t += 60.0                              # the next window: the last one still counts
    _pass(w, clock, 0.004)
    assert w.longest() == pytest.approx(0.030)
    clock.t += 60.0                              # two windows on: only the newer one
    _pass(w, clock, 0.005)
    assert w.longest() == pytest.approx(0.005)
    clock.t += 200.0                             # idle for minutes: nothing long any more
    assert w.longest() == 0.0
    assert w.longest_ever == pytest.approx(0.030)


def test_a_long_stretch_is_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    clock = Clock()
    w = LoopWatch(clock, warn=1.0)
    with caplog.at_level(logging.WARNING, logger="grain.executor"):
        _pass(w, clock, 0.9, idle=1.0)
        _pass(w, clock, 1.5, idle=1.0)
        _pass(w, clock, 2.0, idle=1.0)           # within the minute: not logged again
        clock.t += 60.0
        _pass(w, clock, 1.2)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "1.50 s" in said[0] and "1.20 s" in said[1], said


def test_in_a_real_loop_a_blocking_step_is_the_longest_stretch() -> None:
    """A task that blocks the loop for 50 ms (as a full collection would) is what the
    watch reports; the sleeps around it are not busy time."""
    w = LoopWatch()

    async def main() -> None:
        trio.lowlevel.add_instrument(w)
        for _ in range(5):
            await trio.sleep(0.01)
        time.sleep(0.05)                     # the loop is stuck in this task
        for _ in range(5):
            await trio.sleep(0.01)
        trio.lowlevel.remove_instrument(w)

    trio.run(main)
    assert 0.05 <= w.longest() < 0.5
    assert w.busy_seconds < 0.05 + 0.1, "the waits in the poll are not counted"
