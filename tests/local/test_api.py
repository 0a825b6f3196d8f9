"""The original API on the embedded cluster: wait groups, subtasks, exec1, ZERO, GVAR."""

import os
import threading

import pytest
import trio
from support.waiting import wait_until_async

import grain
from grain.resource import ZERO, Cores, Memory, Node


def square(x):
    return x * x


async def asquare(x):
    await trio.sleep(0.01)
    return x * x


def instance_and_res():
    return grain.GVAR.instance, repr(grain.GVAR.res)


def test_results_in_submission_order_plain_and_async():
    async def main():
        async with grain.open_waitgroup() as wg:
            for i in range(20):
                wg.submit(Cores(1), asquare if i % 2 else square, i)
        return wg.results
    assert grain.run_combine(main) == [i * i for i in range(20)]


def test_nested_subtasks_and_exec1():
    async def sweep(n):
        async with grain.open_waitgroup() as wg:
            for i in range(n):
                wg.submit(Cores(1), square, i)
        return sum(wg.results)

    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1) & Memory(0.1), square, 7)
            wg.start_subtask(sweep, 30)
        one = await grain.exec1(Cores(1), square, 3)
        return wg.results, one
    assert grain.run_combine(main) == ([49, sum(i * i for i in range(30))], 9)


def test_zero_runs_in_the_client():
    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(ZERO, os.getpid)
            wg.submit(Cores(1), os.getpid)
        return wg.results, await grain.exec1(ZERO, instance_and_res)
    (client_pid, job_pid), zero = grain.run_combine(main)
    assert client_pid == os.getpid() and job_pid != os.getpid()
    assert zero == ("local", "Ø")


def test_gvar_inside_a_job():
    async def main():
        return await grain.exec1(Cores(1) & Memory(0.5), instance_and_res)
    instance, res = grain.run_combine(main)
    assert instance == "local"
    assert res.startswith("CPU_Cores([") and res.endswith("& Memory(0.5GB)")


def test_list_of_mains_runs_in_parallel():
    seen = []
    arrived = [trio.Event() for _ in range(3)]

    def make(i):
        async def main():
            seen.append(await grain.exec1(Cores(1), square, i))
            arrived[i].set()
            # Run one after another, the first main would wait here for the others forever.
            with trio.fail_after(30):
                for other in arrived:
                    await other.wait()
        return main
    grain.run_combine([make(i) for i in range(3)])
    assert sorted(seen) == [0, 1, 4]


def test_deep_nesting_does_not_deadlock():
    async def nest(depth):
        if depth == 0:
            return await grain.exec1(Cores(1), square, 2)
        async with grain.open_waitgroup() as wg:
            wg.start_subtask(nest, depth - 1)
        return wg.results[0]

    async def main():
        async with grain.open_waitgroup() as wg:
            for _ in range(400):   # 400 groups open at once: the original stalled near 300
                wg.start_subtask(nest, 1)
        return wg.results
    assert grain.run_combine(main) == [4] * 400


def test_outside_run_combine_is_a_clear_error():
    async def main():
        grain.open_waitgroup()
    with pytest.raises(RuntimeError, match="only valid inside"):
        trio.run(main)


def test_wait_group_cannot_be_reentered():
    async def main():
        wg = grain.open_waitgroup()
        async with wg:
            wg.submit(Cores(1), square, 1)
        with pytest.raises(RuntimeError, match="entered once"):
            async with wg:
                pass
        return wg.results
    assert grain.run_combine(main) == [1]


def test_idle_runners_survive_the_thread_that_started_them():
    # Regression: runners die with their parent *thread* (PR_SET_PDEATHSIG); they were
    # started from trio's helper threads, which exit after ~10 s idle, killing the runners.
    async def main():
        first = await grain.exec1(Cores(1), os.getpid)
        async with grain.open_waitgroup() as wg:
            for _ in range(4):
                wg.submit(Cores(1), os.getpid)
        # make trio start a helper thread, and wait until it has ended (idle for ~10 s)
        helper = await trio.to_thread.run_sync(threading.current_thread)
        await wait_until_async(lambda: not helper.is_alive(), 60, "trio's idle helper thread "
                               "to end", interval=0.2)
        again = await grain.exec1(Cores(1), os.getpid)
        return first, wg.results, again
    first, warm, again = grain.run_combine(main, rpw=Node(1, 1))
    assert first == again and set(warm) == {first}, "the same warm runner serves them all"


def cached_square(x, scale=1):
    return x * x * scale


async def _cache_hit(x):
    return (x == 3), f"cached {x}"

cached_square.cache_fn = _cache_hit
cached_square.cache_res = ZERO


def test_asubmit_and_the_original_cache_helpers():
    async def main():
        async with grain.open_waitgroup() as wg:
            await wg.asubmit(Cores(1), square, 4)
            wg.load_cache_or_submit(Cores(1), cached_square, 3)   # cache hit: no job
            wg.load_cache_or_submit(Cores(1), cached_square, 5, scale=2)
        return wg.results, await grain.load_cache_or_exec1(Cores(1), cached_square, 3)
    assert grain.run_combine(main) == ([16, "cached 3", 50], "cached 3")
