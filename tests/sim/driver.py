"""Drive a ``SimWorld`` step by step from synchronous code (a hypothesis state machine).

The world runs in ``trio.run`` with a ``MockClock`` on a thread of its own; each call
from the test thread runs one step inside that run and returns once every task is blocked
again. Time moves only in ``advance``: there the clock autojumps (threshold 0) over idle
stretches; everywhere else the threshold is infinite, so the clock stands still while the
test thread thinks. Scheduling is deterministic: hypothesis seeds trio's scheduler.

Any exception that escapes a production task (the executor, an agent, a session) ends the
run; the next call re-raises it as ``WorldCrashed``: that is a bug found. A step that does
not settle within ``STEP_TIMEOUT`` real seconds (a task that never blocks, a deadlock) is
``WorldHung``, with every trio task's stack.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
import trio.testing

from grain.testing.world import SimParams, SimWorld

T = TypeVar("T")

STEP_TIMEOUT = float(os.environ.get("GRAIN_SIM_STEP_TIMEOUT", "30"))
"""Real seconds a step may take (they take milliseconds): past it, the world hangs."""


class WorldCrashed(AssertionError):
    """A production task raised: the whole simulated cluster stopped."""


class WorldHung(AssertionError):
    """A step never settled: some task never blocks, or waits for ever."""


class Driver:
    """``Driver(params)`` starts the world; ``call``/``run`` step it; ``close`` ends it."""

    def __init__(self, params: SimParams) -> None:
        self.clock = trio.testing.MockClock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self.world: SimWorld | None = None
        self._params = params
        self._thread = threading.Thread(target=self._main, name="sim-world", daemon=True)
        self._thread.start()
        self._ready.wait()
        self._check()

    def _main(self) -> None:
        try:
            trio.run(self._amain, clock=self.clock)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self._error = e
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self._stop = n.cancel_scope
            self.world = SimWorld(self._params, clock=self.clock.current_time)
            await n.start(self.world.run)
            await trio.testing.wait_all_tasks_blocked()
            self._ready.set()
            await trio.sleep_forever()

    def _check(self) -> None:
        if self._error is not None:
            raise WorldCrashed(f"the simulated cluster crashed: {self._error!r}") \
                from self._error
        if self._token is None:
            raise WorldCrashed("the simulated cluster did not start")

    def call(self, step: Callable[[SimWorld], Awaitable[T]]) -> T:
        """Run ``await step(world)`` in the world, then let everything settle (no time
        passes)."""
        self._check()
        box: list[outcome.Outcome[T]] = []
        finished = threading.Event()

        async def run() -> None:
            assert self.world is not None
            try:
                value = await step(self.world)
                await trio.testing.wait_all_tasks_blocked()
                box.append(outcome.Value(value))
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                box.append(outcome.Error(e))
            finally:
                finished.set()
        assert self._token is not None
        try:
            self._token.run_sync_soon(trio.lowlevel.spawn_system_task, run)
        except trio.RunFinishedError:
            self._join()
            self._check()
            raise
        deadline = time.monotonic() + STEP_TIMEOUT
        while not finished.wait(0.2):
            if not self._thread.is_alive():
                self._check()
                raise WorldCrashed("the simulated cluster stopped during a step")
            if time.monotonic() > deadline:
                raise WorldHung(f"a step did not settle within {STEP_TIMEOUT:g}s; the "
                                f"tasks:\n{self.dump()}")
        if isinstance(box[0], outcome.Error) and isinstance(box[0].error, trio.Cancelled):
            self._join()   # the step was cancelled because the world crashed
            self._check()
        return box[0].unwrap()

    def dump(self) -> str:
        """Every task of the run and where it waits (from inside the run)."""
        lines: list[str] = []
        got = threading.Event()

        def walk(task: trio.lowlevel.Task, depth: int) -> None:
            lines.append("  " * depth + task.name)
            for frame, lineno in task.iter_await_frames():
                lines.append("  " * depth + f"    {frame.f_code.co_filename}:{lineno} "
                                            f"{frame.f_code.co_name}")
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    walk(child, depth + 1)

        def collect() -> None:
            try:
                root = trio.lowlevel.current_root_task()
                if root is not None:
                    walk(root, 0)
            finally:
                got.set()
        assert self._token is not None
        try:
            self._token.run_sync_soon(collect)
        except trio.RunFinishedError:
            return "(the run has finished)"
        got.wait(5)
        return "\n".join(lines)

    def run(self, fn: Callable[[SimWorld], T]) -> T:
        """``fn(world)`` (synchronous) in the world, then settle."""
        async def step(world: SimWorld) -> T:
            return fn(world)
        return self.call(step)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of mock time pass, everything running as it would."""
        async def step(world: SimWorld) -> None:
            self.clock.autojump_threshold = 0
            try:
                await trio.sleep(seconds)
            finally:
                self.clock.autojump_threshold = math.inf
        self.call(step)

    def close(self) -> None:
        """Stop the world (every task is cancelled) and wait for its thread."""
        if self._error is None and self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._join()

    def _join(self) -> None:
        """Wait for the world's thread; a run that cannot finish (a task that ignores
        its cancellation) is a hang, reported with the tasks."""
        self._thread.join(STEP_TIMEOUT)
        if self._thread.is_alive():
            raise WorldHung(f"the simulated cluster did not stop within {STEP_TIMEOUT:g}s; "
                            f"the tasks:\n{self.dump()}")

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
