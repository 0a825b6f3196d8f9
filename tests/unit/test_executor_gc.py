"""Running jobs are no work for the garbage collector.

Every full collection walks every object the collector tracks, with the event loop
stopped. A 1,000-node cluster runs tens of thousands of jobs at once, for minutes; if each
running job held collector-tracked objects in the executor (its allocation as a
``Resource`` graph: ~9 objects), every full collection there would stall the executor for
tens of milliseconds. Counted structurally, not timed: the tracked objects a real
``Executor`` holds while 512 jobs run.
"""

import gc

import trio
import trio.testing

from grain.executor.core import Executor
from grain.net.link import LinkClosed, MemoryLink, memory_link_pair
from grain.protocol import messages as m
from grain.resource import Cores, Memory, to_wire

RUNNING = 512


async def _worker(link: MemoryLink, running: list[int]) -> None:
    """Holds every job it is given (they run until the test ends)."""
    link.send(m.Attach([], []))
    try:
        while True:
            for h, _ in await link.receive():
                if type(h) is m.Run:
                    running.append(h.cid)
    except LinkClosed:
        pass


async def _drain(link: MemoryLink) -> None:
    """The client reads what it is sent (Started messages), as a real client does."""
    try:
        while True:
            await link.receive()
    except LinkClosed:
        pass


async def _tracked_while(jobs: int) -> int:
    """Objects the collector tracks once ``jobs`` jobs of one client run on one worker."""
    ex = Executor()
    running: list[int] = []
    async with trio.open_nursery() as n:
        await n.start(ex.run)
        mine, theirs = memory_link_pair("worker", "executor")
        n.start_soon(ex.serve_worker, theirs, {"name": "w"}, Cores(RUNNING) & Memory(64))
        n.start_soon(_worker, mine, running)
        client, server = memory_link_pair("client", "executor")
        n.start_soon(ex.serve_client, server, "alice", {"name": "alice", "session": 1})
        n.start_soon(_drain, client)
        client.send(m.DefineFunction(1), b"fn")
        wire = to_wire(Cores(1) & Memory(0.1))
        for cid in range(1, jobs + 1):
            client.send(m.Submit(cid, wire, 1), b"args")
        await trio.testing.wait_all_tasks_blocked()   # every message handled
        assert len(running) == jobs
        gc.collect()
        tracked = len(gc.get_objects())
        n.cancel_scope.cancel()
    return tracked


def test_a_running_job_adds_no_object_the_collector_walks():
    few = trio.run(_tracked_while, 8)
    many = trio.run(_tracked_while, RUNNING)
    per_job = (many - few) / (RUNNING - 8)
    # the messages in flight and a link's buffers come and go; what stays per job must not
    # be tracked (it was ~9 objects per job when allocations were Resource graphs)
    assert per_job < 0.5, f"{per_job:.2f} tracked objects per running job"
