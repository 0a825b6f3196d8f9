"""Results you keep, on the embedded cluster: return_exceptions, as_completed, map,
what finished after a failure or a cancellation, and cancelling a retried job."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import grain
from grain.resource import ZERO, Cores, Node


class Flaky(Exception):
    """A temporary error: the job is retried."""


def square(x: int) -> int:
    return x * x


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x * 10


def wait_for_file(path: str, value: Any) -> Any:
    """Finish only once ``path`` exists (the test decides when)."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return value


def sleep_forever() -> None:
    time.sleep(600)


def flaky_then_hang(marker_dir: str) -> None:
    """Fails with a temporary error on its first attempt; the second records its pid and
    hangs until killed."""
    d = Path(marker_dir)
    if not (d / "first").exists():
        (d / "first").write_text("")
        raise Flaky("first attempt")
    (d / "pid").write_text(str(os.getpid()))
    time.sleep(600)


async def until(pred: Any, timeout: float = 30.0) -> None:
    """Poll a condition on state (a file, a process) from the client's loop."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def test_return_exceptions_keeps_siblings_and_places_errors(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")

    async def main() -> tuple[list[Any], dict[int, Any]]:
        async with grain.open_waitgroup(return_exceptions=True) as wg:
            for i in range(6):
                wg.submit(Cores(1), fail_odd, i)
            # a sibling still running when the failures come back must not be cancelled
            wg.submit(Cores(1), wait_for_file, gate, "slow sibling")
            await until(lambda: len(wg.finished) == 6)
            Path(gate).write_text("")
        return wg.results, wg.finished
    results, finished = grain.run_combine(main, rpw=Node(2, 2))
    assert results[-1] == "slow sibling"
    assert [r for i, r in enumerate(results[:6]) if i % 2 == 0] == [0, 20, 40]
    errs = [results[i] for i in (1, 3, 5)]
    assert all(isinstance(e, ValueError) for e in errs), errs
    assert [str(e) for e in errs] == ["odd 1", "odd 3", "odd 5"]
    assert finished == dict(enumerate(results))


def test_without_return_exceptions_the_first_failure_cancels_and_keeps_what_finished(
        tmp_path: Path) -> None:
    holder: dict[str, Any] = {}

    async def fail_when_four_done(wg: grain.WaitGroup) -> None:
        await until(lambda: len(wg.finished) == 4)
        raise KeyError("the subtask failed")

    async def main() -> None:
        wg = grain.open_waitgroup()
        holder["wg"] = wg
        async with wg:
            for i in range(4):
                wg.submit(Cores(1), square, i)
            wg.submit(Cores(1), sleep_forever)          # cancelled by the failure
            wg.start_subtask(fail_when_four_done, wg)
    with pytest.raises(KeyError) as info:
        grain.run_combine(main, rpw=Node(2, 2))
    wg = holder["wg"]
    want = {0: 0, 1: 1, 2: 4, 3: 9}
    assert info.value.grain_finished == want          # type: ignore[attr-defined]
    assert wg.finished == want
    assert wg.results == []                            # never placeholders


def test_as_completed_yields_in_the_order_jobs_end(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")

    async def main() -> tuple[list[tuple[int, Any]], list[Any]]:
        seen: list[tuple[int, Any]] = []
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1), wait_for_file, gate, "late")
            wg.submit(Cores(1), square, 3)
            wg.submit(ZERO, square, 4)
            async for i, value in wg.as_completed():
                seen.append((i, value))
                if len(seen) == 2:          # the two quick ones came first
                    Path(gate).write_text("")
        return seen, wg.results
    seen, results = grain.run_combine(main, rpw=Node(2, 2))
    assert sorted(seen[:2]) == [(1, 9), (2, 16)]
    assert seen[2] == (0, "late")
    assert results == ["late", 9, 16]                  # submission order stays


def test_map_results_in_order_and_calls_after_it_come_after() -> None:
    async def main() -> tuple[list[Any], int]:
        async with grain.open_waitgroup() as wg:
            wg.map(Cores(1), square, range(50), window=7)
            wg.submit(Cores(1), square, 1000)           # waits its turn behind the map
            wg.map(Cores(1), pow, range(5), [2] * 5)    # two iterables, as builtin map
        return wg.results, len(wg)
    results, n = grain.run_combine(main, rpw=Node(2, 2))
    assert results == [i * i for i in range(50)] + [10 ** 6] + [i ** 2 for i in range(5)]
    assert n == 56


def test_map_over_a_million_items_submits_a_window_at_a_time() -> None:
    consumed = [0]

    def items() -> Any:
        for i in range(1_000_000):
            consumed[0] += 1
            yield i

    async def main() -> tuple[dict[int, Any], list[Any], int]:
        async with grain.open_waitgroup() as wg:
            wg.map(Cores(1), square, items(), window=16)
            got = 0
            async for _ in wg.as_completed():
                got += 1
                if got == 40:
                    wg.cancel()       # stop: the rest is dropped, no error
        return wg.finished, wg.results, consumed[0]
    finished, results, n = grain.run_combine(main, rpw=Node(2, 2))
    assert len(finished) >= 40 and all(v == i * i for i, v in finished.items())
    assert results == []                                # cancelled: not all ended
    assert n <= len(finished) + 16 + 1, f"{n} items read for {len(finished)} results"


def test_wait_group_errors_name_the_right_use() -> None:
    async def main() -> None:
        async with grain.open_waitgroup() as wg:
            with pytest.raises(TypeError, match="at least one iterable"):
                wg.map(Cores(1), square)
            with pytest.raises(ValueError, match="window"):
                wg.map(Cores(1), square, [1], window=0)
            wg.submit(Cores(1), square, 2)
        with pytest.raises(RuntimeError, match="only inside"):
            wg.map(Cores(1), square, [1])
        with pytest.raises(IndexError):
            wg.output(5)
        assert wg.output(0) == "" and wg.results == [4]
    grain.run_combine(main, rpw=Node(1, 1))


@pytest.mark.parametrize("how", ["wait group", "exec1"])
def test_cancelling_kills_a_retried_job_and_returns_its_cores(tmp_path: Path,
                                                              how: str) -> None:
    """Issue 10 item 3: a job retried after a temporary error keeps its identity, so
    cancelling reaches it on its second attempt; with one core, the next job only runs if
    the killed job's core came back."""
    pid_file = tmp_path / "pid"

    async def main() -> tuple[int, int]:
        if how == "wait group":
            async with grain.open_waitgroup() as wg:
                wg.submit(Cores(1), flaky_then_hang, str(tmp_path))
                await until(pid_file.exists)
                wg.cancel()
        else:
            async with trio.open_nursery() as n:
                async def one() -> None:
                    await grain.exec1(Cores(1), flaky_then_hang, str(tmp_path))
                n.start_soon(one)
                await until(pid_file.exists)
                n.cancel_scope.cancel()
        pid = int(pid_file.read_text())
        await until(lambda: not _alive(pid))
        with trio.fail_after(60):
            return pid, await grain.exec1(Cores(1), os.getpid)
    killed, after = grain.run_combine(main, rpw=Node(1, 1), temporary_err=(Flaky,))
    assert (tmp_path / "first").exists(), "the first attempt failed as planned"
    assert after != killed


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
