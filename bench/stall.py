"""``python -m bench.stall``: the executor's longest event-loop stall under a greedy client.

A real ``Executor`` (the class ``grain executor`` runs), a worker that holds the one job
it is given (so everything else stays queued) and a client that:

1. **submits** ``--jobs`` tiny jobs (1,000,000 by default), in bursts as they would arrive
   from a socket;
2. waits with them all **queued** (the periodic sweep runs over them);
3. **cancels** every one of them, back to front (the worst order for a queue);
4. submits them all again and **leaves** (its session ends: the executor cancels them
   itself);
5. waits, idle, while the executor gives the memory it freed back to the system
   (**after**: ``grain.executor.heap``, as ``grain executor`` runs it);
6. submits ``jobs // 1000`` x 64 jobs more (not measured), then ``jobs // 1000`` workers
   of 64 cores connect, ``CONNECTING`` at a time: the executor **places** them all, a
   ``Run`` message each (the cluster scaled up, or came back after an outage, with a full
   queue).

Peers are joined by in-memory links (``memory_link_pair``: the messages the executor
would decode from a socket, without the decoding), so what is measured is the
executor's own work. A probe task asks to sleep 1 ms over and over; how late it wakes is
how long the event loop was busy with something else: a stall, during which no other peer
(and no ``/healthz``) is served. Reported per phase: its duration, the longest stall and
the 99th percentile, and the jobs per second the executor handled. The design's budget is
a few milliseconds per stall (``docs/scaling.md``).

    python -m bench.stall                     # 1,000,000 jobs
    python -m bench.stall --jobs 100000 --json
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
import trio

from grain.executor.core import Executor
from grain.executor.heap import full_collections, return_free_memory
from grain.net.link import LinkClosed, MemoryLink, memory_link_pair
from grain.protocol import messages as m
from grain.resource import Cores, to_wire

BURST = 5_000
"""Messages the client hands over at once: about what one 256 KiB read of a socket
carries (Submit messages of tiny jobs are ~50 bytes)."""
PROBE = 0.001
CONNECTING = 50
"""Workers that connect in one stretch of the event loop (phase "place"): about what one
pass of the listener accepts and authenticates when a thousand workers redial."""


@dataclass
class Phase:
    """Stalls seen by the probe during one phase."""

    name: str
    jobs: int
    started: float = 0.0
    seconds: float = 0.0
    stalls: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss_mib: float = 0.0     # the process's resident size at the phase's end

    def report(self) -> dict[str, Any]:
        s = sorted(self.stalls)
        worst = s[-1] if s else 0.0
        p99 = s[int(len(s) * 0.99)] if s else 0.0
        return {"phase": self.name, "jobs": self.jobs, "seconds": round(self.seconds, 3),
                "jobs_per_second": round(self.jobs / self.seconds) if self.seconds else None,
                "longest_stall_ms": round(worst * 1e3, 2), "p99_stall_ms": round(p99 * 1e3, 3),
                "longest_wall_ms": round(max(self.wall, default=0.0) * 1e3, 2),
                "probes": len(s), "rss_mib": round(self.rss_mib, 1)}


class Probe:
    """Sleeps ``PROBE`` over and over; records how late each wake-up is.

    On a shared machine a wake-up is also late when the process simply did not get a
    CPU; that is not the executor's doing. So a stall is counted as the smaller of how
    late the wake-up was and how much CPU time this thread used meanwhile (the event
    loop busy with something else); the wall-clock lateness is reported beside it."""

    def __init__(self) -> None:
        self.phase: Phase | None = None

    async def run(self) -> None:
        while True:
            t0, c0 = trio.current_time(), time.thread_time()
            await trio.sleep(PROBE)
            late = max(0.0, trio.current_time() - t0 - PROBE)
            busy = time.thread_time() - c0
            if self.phase is not None:
                self.phase.stalls.append(min(late, busy))
                self.phase.wall.append(late)


class Steps(trio.abc.Instrument):
    """Which task ran the longest steps (``--steps``): a stall names its cause. Steps
    include the garbage collections and frees that happen to fall into them."""

    def __init__(self, probe: Probe, keep: int = 8) -> None:
        self.probe, self.keep = probe, keep
        self.longest: list[tuple[float, str, str]] = []
        self._t0 = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        dt = time.thread_time() - self._t0
        if len(self.longest) < self.keep or dt > self.longest[0][0]:
            phase = self.probe.phase.name if self.probe.phase is not None else "-"
            heapq.heappush(self.longest, (dt, phase, task.name))
            if len(self.longest) > self.keep:
                heapq.heappop(self.longest)


async def _holding_worker(link: MemoryLink) -> None:
    """A worker that holds the jobs it is given until their session ends: all but one
    stay queued."""
    link.send(m.Attach([], []))
    held: list[tuple[int, int]] = []
    try:
        while True:
            for h, _ in await link.receive():
                if type(h) is m.Run:
                    held.append((h.sess, h.cid))
                elif type(h) in (m.Kill, m.EndSession):
                    for sess, cid in [k for k in held if k[0] == h.sess]:
                        held.remove((sess, cid))
                        link.send(m.Done(sess, cid, int(m.End.CANCELLED), "killed"))
    except LinkClosed:
        pass


async def _results(link: MemoryLink, want: int, box: dict[str, int]) -> None:
    """Count the client's results until ``want`` arrived."""
    while box["results"] < want:
        for h, _ in await link.receive():
            if type(h) is m.Result:
                box["results"] += 1


async def _handed_over(link: MemoryLink) -> None:
    """Until the executor took what was sent: a socket's buffer fills and the sender
    waits, so a real client can never queue more than that ahead of the executor."""
    while link._out.items:
        await trio.sleep(0)


async def _send_burst(link: MemoryLink, burst: list[tuple[Any, bytes]]) -> None:
    """Hand a burst over at once, as one socket read would deliver it (building it is
    the client's work: done in steps of its own, so that it is not counted as the
    executor's)."""
    link._out.put_many(burst)
    await _handed_over(link)


async def _submit(link: MemoryLink, first: int, n: int) -> None:
    wire = to_wire(Cores(1))
    payload = b"\x80\x05\x95\x07\x00\x00\x00\x00\x00\x00\x00)}\x94\x86\x94."  # ((), {})
    for start in range(first, first + n, BURST):
        burst = []
        for cid in range(start, min(start + BURST, first + n)):
            burst.append((m.Submit(cid, wire, 1), payload))
            if cid % 256 == 0:
                await trio.lowlevel.checkpoint()
        await _send_burst(link, burst)


async def _wait_queued(ex: Executor, n: int) -> None:
    while len(ex.placement) < n:
        await trio.sleep(0.01)


async def measure(jobs: int, settle: float = 2.0, after: float = 3.0,
                  steps: bool = False) -> list[dict[str, Any]]:
    """Run the phases; returns one report per phase."""
    ex = Executor()
    probe = Probe()
    instrument = Steps(probe) if steps else None
    if instrument is not None:
        trio.lowlevel.add_instrument(instrument)
    phases: list[Phase] = []

    def begin(name: str, n: int) -> Phase:
        if phases:
            phases[-1].seconds = trio.current_time() - phases[-1].started
            phases[-1].rss_mib = psutil.Process().memory_info().rss / 1024 ** 2
        p = Phase(name, n, started=trio.current_time())
        phases.append(p)
        probe.phase = p
        return p

    async with trio.open_nursery() as n:
        await n.start(ex.run)
        n.start_soon(return_free_memory, 1.0)   # as ``grain executor`` does (every 5 s)
        n.start_soon(full_collections)          # as ``grain executor`` does
        mine, theirs = memory_link_pair("worker", "executor")
        n.start_soon(ex.serve_worker, theirs, {"name": "w"}, Cores(1) & _memory(64))
        n.start_soon(_holding_worker, mine)
        while not ex.workers or not next(iter(ex.workers.values())).attached:
            await trio.sleep(0.001)
        n.start_soon(probe.run)

        client, server = memory_link_pair("client", "executor")
        n.start_soon(ex.serve_client, server, "greedy", {"name": "greedy", "session": 1})
        client.send(m.DefineFunction(1), b"fn")
        box = {"results": 0}

        begin("submit", jobs)
        await _submit(client, 1, jobs)
        await _wait_queued(ex, jobs - 1)

        begin("queued", 0)
        await trio.sleep(settle)

        begin("cancel", jobs - 1)
        collector = trio.CancelScope()

        async def results(want: int) -> None:
            with collector:
                await _results(client, want, box)
        n.start_soon(results, jobs - 1)
        for start in range(jobs, 1, -BURST):
            burst: list[tuple[Any, bytes]] = []
            for cid in range(start, max(start - BURST, 1), -1):
                burst.append((m.Cancel(cid), b""))
                if cid % 256 == 0:
                    await trio.lowlevel.checkpoint()
            await _send_burst(client, burst)
        while box["results"] < jobs - 1:
            await trio.sleep(0.01)
        if len(ex.placement) != 0:
            raise AssertionError(f"{len(ex.placement)} jobs still queued after cancelling")

        begin("resubmit", jobs)
        await _submit(client, jobs + 1, jobs)
        await _wait_queued(ex, jobs)

        begin("leave", jobs)
        client.send(m.Bye("done"))
        client.close("done")
        while ex.sessions or len(ex.placement):
            await trio.sleep(0.01)
        # what it freed goes back to the system meanwhile (``return_free_memory``)
        begin("after", 0)
        await trio.sleep(after)

        k = max(1, min(1000, jobs // 1000))
        begin("-", 0)       # the submission is not measured: probe.phase None
        probe.phase = None
        client, server = memory_link_pair("client", "executor")
        n.start_soon(ex.serve_client, server, "second", {"name": "second", "session": 2})
        client.send(m.DefineFunction(1), b"fn")
        await _submit(client, 1, k * 64)
        await _wait_queued(ex, k * 64 - 1)     # one of them runs on the first worker
        pairs = []
        for i in range(k):      # in steps: the harness's own work is not a stall
            pairs.append((i, *memory_link_pair("worker", "executor"), Cores(64) & _memory(256)))
            await trio.lowlevel.checkpoint()
        begin("place", k * 64)
        for i, mine, theirs, capacity in pairs:
            n.start_soon(ex.serve_worker, theirs, {"name": f"big{i}"}, capacity)
            n.start_soon(_holding_worker, mine)
            if i % CONNECTING == CONNECTING - 1:
                await trio.lowlevel.checkpoint()
        del pairs
        while len(ex.placement):
            await trio.sleep(0.01)
        begin("end", 0)
        quiet = logging.getLogger("grain")
        level = quiet.level
        quiet.setLevel(logging.ERROR)       # a thousand workers' end is not news
        n.cancel_scope.cancel()
    quiet.setLevel(level)
    if instrument is not None:
        print("longest task steps (CPU ms, phase, task):", file=sys.stderr)
        for dt, phase, name in sorted(instrument.longest, reverse=True):
            print(f"  {dt * 1e3:6.1f}  {phase:<9} {name}", file=sys.stderr)
    return [p.report() for p in phases[:-1] if p.name != "-"]


def _memory(gb: float) -> Any:
    from grain.resource import Memory
    return Memory(gb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print the reports as JSON")
    ap.add_argument("--steps", action="store_true",
                    help="also print the longest task steps and their tasks (stderr)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    reports = trio.run(partial(measure, args.jobs, steps=args.steps))
    if args.json:
        print(json.dumps({"jobs": args.jobs, "phases": reports}))
        return 0
    print(f"executor event-loop stalls, {args.jobs:,} jobs "
          f"(probe: trio.sleep({PROBE * 1e3:g} ms), {time.perf_counter() - t0:.1f}s in all)")
    print(f"{'phase':<10} {'seconds':>8} {'jobs/s':>10} {'longest stall':>14} {'p99':>9} "
          f"{'(wall clock)':>13} {'RSS at end':>11}")
    for r in reports:
        rate = f"{r['jobs_per_second']:,}" if r["jobs_per_second"] else "-"
        print(f"{r['phase']:<10} {r['seconds']:>8.2f} {rate:>10} "
              f"{r['longest_stall_ms']:>11.1f} ms {r['p99_stall_ms']:>6.2f} ms "
              f"{r['longest_wall_ms']:>10.1f} ms {r['rss_mib']:>7.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
