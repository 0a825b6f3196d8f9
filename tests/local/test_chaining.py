"""Chaining short jobs behind running ones keeps every guarantee: exact pinning, each job
ends once, cancellation and crashes handled."""

import os

import trio

from grain.client.api import local_session
from grain.client.waitgroup import _RUNTIME, open_waitgroup
from grain.local import LocalCluster
from grain.resource import Cores, Node


def report():
    import grain
    return sorted(grain.GVAR.res.c), sorted(os.sched_getaffinity(0))


def maybe_die(i):
    if i == 150:
        os._exit(7)
    return i


async def with_cluster(body, rpw=None):
    async with LocalCluster(rpw) as lc, local_session(lc) as session:
        reset = _RUNTIME.set(session)
        try:
            return await body(lc, session)
        finally:
            _RUNTIME.reset(reset)


def test_chained_jobs_are_pinned_exactly():
    async def body(lc, session):
        async with open_waitgroup() as wg:
            for _ in range(600):
                wg.submit(Cores(1), report)
        return lc.executor.chained, wg.results
    chained, results = trio.run(with_cluster, body)
    assert chained > 0, "a flood of tiny jobs should be chained"
    assert all(alloc == affinity for alloc, affinity in results)


def test_every_job_ends_once_when_a_runner_dies_with_jobs_chained_behind_it():
    ends = {}

    async def body(lc, session):
        done = trio.Event()

        def on_end(i):
            def cb(ok, value):
                assert i not in ends, f"job {i} ended twice"
                ends[i] = (ok, value)
                if len(ends) == 300:
                    done.set()
            return cb
        for i in range(300):
            session.submit(Cores(1), maybe_die, (i,), {}, on_end(i))
        with trio.fail_after(60):
            await done.wait()
        return lc.executor.chained
    chained = trio.run(with_cluster, body)
    assert chained > 0
    failed = {i: v for i, (ok, v) in ends.items() if not ok}
    assert list(failed) == [150], failed
    assert "exited with code 7" in str(failed[150])
    assert all(ends[i] == (True, i) for i in range(300) if i != 150)


def test_cancelling_a_flood_with_chains_frees_the_cores():
    async def body(lc, session):
        async with open_waitgroup() as wg:   # warm up the function's run-time estimate
            for _ in range(50):
                wg.submit(Cores(1), report)
        with trio.move_on_after(0.3):
            async with open_waitgroup() as wg:
                for _ in range(20000):
                    wg.submit(Cores(1), report)
        with trio.fail_after(30):
            while lc.executor.ledger.jobs:
                await trio.sleep(0.05)
        st = lc.executor.status()
        return st["cores"], st["running_jobs"], st["queue_length"]
    cores, running, queued = trio.run(with_cluster, body, Node(2, 2))
    assert cores["free"] == cores["total"] and running == 0 and queued == 0




def timed_report():
    import time

    import grain
    t0 = time.monotonic()
    time.sleep(0.0005)
    return sorted(grain.GVAR.res.c), t0, time.monotonic()


def test_no_two_jobs_ever_share_a_core_at_once():
    # monotonic clocks are system-wide on Linux: spans from different runners compare
    async def body(lc, session):
        async with open_waitgroup() as wg:
            for i in range(1500):
                wg.submit(Cores(2) if i % 50 == 0 else Cores(1), timed_report)
        return lc.executor.chained, lc.pool.spawned, wg.results
    chained, spawned, results = trio.run(with_cluster, body)
    assert chained > 0
    by_core = {}
    for cores, start, end in results:
        for c in cores:
            by_core.setdefault(c, []).append((start, end))
    for c, spans in by_core.items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
            assert s2 >= e1, f"two jobs overlapped on core {c}: {(s1, e1)} and {(s2, e2)}"
    assert spawned <= len(os.sched_getaffinity(0)) + 2, f"{spawned} runners for a 2-core worker"
