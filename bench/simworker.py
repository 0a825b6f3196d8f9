"""``python -m bench.simworker ADDRESS TOKEN_FILE --workers N``: stand-in workers that speak
the real worker protocol and run no user code, for measuring one executor at cluster scale
(``bench.capacity``).

Each stand-in dials the executor, completes the handshake as a worker (``WorkerHello``
with ``--cores`` cores and ``--memory`` GB), sends ``Attach`` (nothing running, nothing
held), then answers every ``Run`` with ``Done(OK)`` at once, or ``--job-seconds`` after
it starts (a chained job starts when the one it is chained behind ends); a job named
``hold`` (``HOLD``) runs until it is killed or its session ends (a long job). The ``Done``
payload is 8 bytes: the ``time.monotonic()`` at which it was sent, which the executor
passes through to the client untouched, so the client can tell how long the result
waited in the executor. Results are held until the executor sends ``Release`` (or ends
the session), as a real worker holds them; ``Kill`` ends a job as cancelled. ``N``
stand-ins share one trio loop; prints ``ready N`` once all have sent ``Attach``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections import deque
from typing import Any

import trio

from grain import config
from grain.errors import ProtocolError
from grain.net import transport
from grain.net.endpoints import parse_endpoint
from grain.net.link import Link, LinkClosed, handling, open_stream_link
from grain.protocol import handshake
from grain.protocol import messages as m
from grain.resource import Cores, Memory, to_wire

STAMP = struct.Struct("<d")
OK = int(m.End.OK)
HOLD = "hold"
CANCELLED = int(m.End.CANCELLED)


class StandIn:
    """One simulated worker: its running jobs and the results it holds."""

    def __init__(self, name: str, job_seconds: float) -> None:
        self.name = name
        self.job_seconds = job_seconds
        self.link: Link | None = None
        self.running: dict[tuple[int, int], float] = {}   # (sess, cid) -> when it ends
        self.timers: deque[tuple[float, int, int]] = deque()  # (due, sess, cid), in order
        self.held: set[tuple[int, int]] = set()
        self.wake = trio.Event()
        self.runs = 0

    def done(self, sess: int, cid: int, end: int) -> None:
        """Send a job's ``Done``, stamped with the time it leaves."""
        key = (sess, cid)
        self.running.pop(key, None)
        if end == OK:
            self.held.add(key)
        assert self.link is not None
        try:
            self.link.send(m.Done(sess, cid, end, ""), STAMP.pack(time.monotonic()))
        except LinkClosed:
            pass

    def on_message(self, msg: Any) -> None:
        t = type(msg)
        if t is m.Run:
            self.runs += 1
            if msg.name == HOLD:
                self.running[(msg.sess, msg.cid)] = float("inf")
                return
            if self.job_seconds <= 0:
                self.done(msg.sess, msg.cid, OK)
                return
            start = time.monotonic()
            if msg.after is not None:   # chained: starts when the one ahead of it ends
                start = max(start, self.running.get((msg.sess, msg.after), start))
            due = start + self.job_seconds
            self.running[(msg.sess, msg.cid)] = due
            self.timers.append((due, msg.sess, msg.cid))
            self.wake.set()
        elif t is m.Release:
            for cid in msg.cids:
                self.held.discard((msg.sess, cid))
        elif t is m.Kill:
            if (msg.sess, msg.cid) in self.running:
                self.done(msg.sess, msg.cid, CANCELLED)
        elif t is m.EndSession:
            for key in [k for k in self.running if k[0] == msg.sess]:
                self.done(key[0], key[1], CANCELLED)
            self.held = {k for k in self.held if k[0] != msg.sess}

    async def timer(self) -> None:
        """Ends timed jobs when their time is up (jobs of one duration end in order)."""
        while True:
            while not self.timers:
                self.wake = trio.Event()
                await self.wake.wait()
            due, sess, cid = self.timers[0]
            now = time.monotonic()
            if due > now:
                await trio.sleep(due - now)
                continue
            with handling():
                while self.timers and self.timers[0][0] <= now:
                    due, sess, cid = self.timers.popleft()
                    if self.running.get((sess, cid)) == due:
                        self.done(sess, cid, OK)


async def serve_one(ep: Any, token: str, w: StandIn, cores: int, memory: float,
                    ready: trio.Semaphore) -> None:
    info = {"name": w.name, "capacity": to_wire(Cores(cores) & Memory(memory)),
            "cpuset": list(range(cores)), "pid": os.getpid(), "host": "sim"}
    delay = config.BACKOFF_FIRST
    while True:
        # as a real worker does: a thousand dialling at once outrun the executor's
        # room for connections in their handshake (it drops the oldest), so redial
        stream = None
        try:
            stream = await transport.connect(ep)
            _, dec = await handshake.dial(stream, token, "worker", info,
                                          expect_role="executor")
            break
        except (OSError, ProtocolError, trio.BrokenResourceError):
            if stream is not None:
                await stream.aclose()
            await trio.sleep(delay)
            delay = min(delay * 2, config.BACKOFF_MAX)
    async with open_stream_link(stream, str(ep), m.ExecutorToWorker, decoder=dec) as link, \
            trio.open_nursery() as n:
        w.link = link
        link.send(m.Attach([], []))
        ready.release()
        if w.job_seconds > 0:
            n.start_soon(w.timer)
        try:
            while True:
                batch = await link.receive()
                with handling():
                    for h, _ in batch:
                        w.on_message(h)
                del batch
        except LinkClosed:
            n.cancel_scope.cancel()


async def main_async(a: argparse.Namespace) -> None:
    token = open(a.token_file).read().strip()
    ep = parse_endpoint(a.address)
    ready = trio.Semaphore(0, max_value=a.workers)
    stand_ins = [StandIn(f"{a.prefix}{i:04d}", a.job_seconds) for i in range(a.workers)]
    async with trio.open_nursery() as n:
        for w in stand_ins:
            n.start_soon(serve_one, ep, token, w, a.cores, a.memory, ready)
            await trio.sleep(0)
        for _ in range(a.workers):
            await ready.acquire()
        print(f"ready {a.workers}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.simworker",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("address")
    ap.add_argument("token_file")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--cores", type=int, default=64)
    ap.add_argument("--memory", type=float, default=256.0)
    ap.add_argument("--job-seconds", type=float, default=0.0)
    ap.add_argument("--prefix", default=f"sim{os.getpid()}-")
    a = ap.parse_args(argv)
    try:
        trio.run(main_async, a)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
