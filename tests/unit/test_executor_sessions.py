"""An ended session's jobs end, whichever way they come back to the executor."""

import pytest
import trio
import trio.testing

from grain.executor.core import Executor
from grain.net.link import LinkClosed, MemoryLink, memory_link_pair
from grain.protocol import messages as m
from grain.resource import Cores, Memory, to_wire


async def _leaving_worker(link: MemoryLink, ended: trio.Event, handed_back: bool) -> None:
    """Runs the job it is given; once told the session ended, leaves: handing the job
    back and saying goodbye (``handed_back``: a worker that drains) or not (lost)."""
    link.send(m.Attach([], []))
    job = None
    try:
        while True:
            for h, _ in await link.receive():
                if type(h) is m.Run:
                    job = (h.sess, h.cid)
                elif type(h) is m.EndSession and job is not None:
                    ended.set()
                    if handed_back:
                        link.send(m.Done(job[0], job[1], int(m.End.HANDED_BACK),
                                         "draining"))
                        link.send(m.Bye("drained"))
                    link.close("gone")
                    return
    except LinkClosed:
        pass


@pytest.mark.parametrize("handed_back", [True, False], ids=["handed back", "worker lost"])
def test_a_job_that_comes_back_after_its_session_ended_ends(handed_back: bool) -> None:
    """Found by the simulation: a client dies while its job runs; the job comes back
    (handed back by a draining worker, or its worker lost) after the session ended. It
    was queued again, for a session nobody would end again, and with no worker left it
    stayed queued for ever."""

    async def main() -> tuple[int, int]:
        # the session ends as soon as the client goes; a lost worker is given up at once
        ex = Executor(client_grace=0, worker_grace=0, retries=1)
        ended = trio.Event()
        async with trio.open_nursery() as n:
            await n.start(ex.run)
            mine, theirs = memory_link_pair("worker", "executor")
            n.start_soon(ex.serve_worker, theirs, {"name": "w"}, Cores(1) & Memory(2))
            n.start_soon(_leaving_worker, mine, ended, handed_back)
            client, server = memory_link_pair("client", "executor")
            n.start_soon(ex.serve_client, server, "alice", {"name": "alice", "session": 1})
            client.send(m.DefineFunction(1), b"fn")
            client.send(m.Submit(1, to_wire(Cores(1)), 1), b"args")
            await trio.testing.wait_all_tasks_blocked()
            assert ex.ledger.started == 1
            client.close("the client died")
            await ended.wait()
            await trio.testing.wait_all_tasks_blocked()   # the worker's goodbye handled
            assert not ex.workers
            left = (len(ex.placement), len(ex.sessions))
            n.cancel_scope.cancel()
        return left

    assert trio.run(main) == (0, 0), "the job ended with its session, nothing is queued"
