"""The links' timekeeper: one task per trio run that sends every link's pings and
notices every peer's silence (``grain.net.timekeeper``), instead of a deadline per
link per wait.

``StreamLink.keep_time`` is the decision for one link at one moment; the tests below
check it directly, then two real links over a socket pair left idle, and a link whose
peer says nothing."""

from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from grain.net import link as link_module
from grain.net.link import BURST, PING_JITTER, LinkClosed, StreamLink
from grain.net.timekeeper import KEEPER_SLACK
from grain.protocol.frames import FrameDecoder, encode_parts
from grain.protocol.messages import Ping

pytestmark = pytest.mark.timeout(60)


_PAIRS: list[socket.socket] = []     # both ends, the far one kept open (a closed one is news)


@pytest.fixture(autouse=True)
def _close_pairs() -> Iterator[None]:
    """The socket pairs a test made are closed after it (one test makes 5,000)."""
    yield
    while _PAIRS:
        _PAIRS.pop().close()


def _stream() -> trio.SocketStream:
    a, b = socket.socketpair()
    _PAIRS.extend((a, b))
    return trio.SocketStream(trio.socket.from_stdlib_socket(a))


def _link(heartbeat: float = 2.0, timeout: float = 10.0) -> StreamLink:
    link = StreamLink(_stream(), "peer", None, heartbeat=heartbeat, timeout=timeout)
    link._writer_idle = False      # not started: a ping would be the writer's
    return link


def test_a_peer_quiet_for_the_timeout_closes_the_link_as_silent() -> None:
    link = _link()
    link._quiet_since = 100.0
    assert link.keep_time(109.0) is not None and not link.silent
    assert link.keep_time(110.0) is None
    assert link.silent and "silent for 10s" in (link._reason or "")


def test_no_silence_while_the_reader_is_not_waiting_for_the_peer() -> None:
    """Back-pressure (``_quiet_since`` = inf) is never silence; the link is looked at
    again within a quarter of the timeout, in case the reader starts waiting."""
    link = _link()
    link._quiet_since = math.inf
    link._last_send = 1000.0
    nxt = link.keep_time(1000.5)
    assert nxt is not None and not link.silent
    assert nxt <= 1000.5 + 10.0 / 4


def test_a_ping_due_draws_the_next_gap_shorter_than_the_heartbeat() -> None:
    random.seed(7)
    link = _link(heartbeat=2.0)
    link._quiet_since = 50.0
    link._last_send = 50.0
    gaps = []
    now = 52.0
    for _ in range(200):
        nxt = link.keep_time(now)
        assert nxt is not None
        gaps.append(link._ping_gap)
        link._last_send = now       # as if the ping went out
        link._quiet_since = now
        now = link._last_send + link._ping_gap
    assert all(2.0 * (1 - PING_JITTER) <= g <= 2.0 for g in gaps)
    assert max(gaps) - min(gaps) > 2.0 * PING_JITTER / 2, "the gaps are drawn, not fixed"


def test_the_next_look_is_always_past_the_slack() -> None:
    """Whatever the link's state, the next look is later than what this look already
    handled (``now + KEEPER_SLACK``): a link due within the slack is handled now, so the
    timekeeper never spins on it (it once did, stopping the whole process, when a ping
    was due 1 ms later)."""
    rng = random.Random(3)
    for _ in range(5000):
        hb = rng.choice([0.1, 0.5, 2.0])
        link = _link(heartbeat=hb, timeout=rng.choice([0.4, 2.0, 10.0]))
        now = 1000.0
        link._last_send = now - rng.uniform(0, 2 * hb)
        link._ping_gap = hb * rng.uniform(1 - PING_JITTER, 1)
        link._quiet_since = rng.choice([math.inf, now - rng.uniform(0, link.timeout * 1.2)])
        nxt = link.keep_time(now)
        if nxt is not None:
            assert nxt > now + KEEPER_SLACK, (nxt - now, link._last_send, link._ping_gap)


def test_a_stalled_loop_does_not_take_a_peer_that_spoke_for_silent() -> None:
    """The event loop stops for longer than the timeout (a long step, a process starved
    of CPU) while the peer's ping waits in the kernel. The wake-up after the stall hands
    the timekeeper's look and the reader their turns in an order trio draws; either way
    the link stays up, because the look sees the unread bytes. Without that, each stall
    is a coin toss: ten of them close the link all but surely (it did, under 20 busy
    clients on 2 cores)."""
    ping = b"".join(encode_parts([(link_module._PING, b"")]))

    async def main() -> tuple[str | None, bool]:
        a, b = socket.socketpair()
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "peer",
                          None, heartbeat=0.1, timeout=0.3)
        async with trio.open_nursery() as n:
            link.start(n)
            for _ in range(10):
                await trio.sleep(0.05)    # the reader waits for the peer again
                b.send(ping)
                time.sleep(0.4)           # the stall, past the timeout
            await trio.sleep(0.05)        # the look and the reader after the last one
            closed, silent = link.closed, link.silent
            link.close("done")
        b.close()
        return closed, silent

    assert trio.run(main) == (None, False)


def test_a_peer_that_only_began_a_frame_is_silent_all_the_same() -> None:
    """Unread bytes spare a link only until its reader has run: half a frame, then
    nothing, is silence (the reader took the half and waits for the rest)."""
    frame = b"".join(encode_parts([(link_module._PING, b"")]))

    async def main() -> bool:
        a, b = socket.socketpair()
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "peer",
                          None, heartbeat=0.1, timeout=0.3)
        async with trio.open_nursery() as n:
            link.start(n)
            b.send(frame[:3])
            with pytest.raises(LinkClosed), trio.fail_after(5):
                while True:
                    await link.receive()
        b.close()
        return link.silent

    assert trio.run(main)


async def _pair(heartbeat: float, timeout: float) -> tuple[StreamLink, StreamLink]:
    a, b = socket.socketpair()
    la = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "b", None,
                    heartbeat=heartbeat, timeout=timeout)
    lb = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(b)), "a", None,
                    heartbeat=heartbeat, timeout=timeout)
    return la, lb


def test_idle_links_ping_each_heartbeat_and_stay_up() -> None:
    """Two real links left idle for 15 heartbeats (3 timeouts) stay up; each sent a ping
    every 0.75-1 heartbeat (counted in bytes: a ping is a frame of known size)."""
    ping = sum(map(len, encode_parts([(link_module._PING, b"")])))

    async def main() -> tuple[list[int], list[str | None]]:
        la, lb = await _pair(heartbeat=0.1, timeout=0.5)
        async with trio.open_nursery() as n:
            la.start(n)
            lb.start(n)
            await trio.sleep(0.3)
            start = [la.bytes_out, lb.bytes_out]
            await trio.sleep(1.5)
            pings = [(la.bytes_out - start[0]) // ping, (lb.bytes_out - start[1]) // ping]
            closed = [la.closed, lb.closed]
            la.close("done")
            lb.close("done")
        return pings, closed

    pings, closed = trio.run(main)
    assert closed == [None, None]
    for count in pings:    # 1.5 s / 0.1 s = 15 at the longest gap, 20 at the shortest
        assert 12 <= count <= 22, pings


def test_a_peer_that_says_nothing_is_closed_after_the_timeout_not_before() -> None:
    async def main() -> float:
        a, b = socket.socketpair()
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "mute",
                          None, heartbeat=0.1, timeout=0.5)
        async with trio.open_nursery() as n:
            started = trio.current_time()
            link.start(n)
            with pytest.raises(LinkClosed):
                while True:
                    await link.receive()
            took = trio.current_time() - started
        b.close()
        assert link.silent
        return took

    took = trio.run(main)
    assert took >= 0.5


def test_a_long_burst_keeps_writing_after_the_socket_was_full() -> None:
    """A program submitting thousands of jobs in a loop that never yields: its link writes
    every ``BURST`` messages as the loop goes, also once a write has found the socket full
    (what did not fit goes first, as far as it fits). Before, nothing more went out until
    the loop yielded: the peer, having read all there was, heard nothing for as long as
    the loop ran and dropped the client as silent (20 clients of 5,000 jobs each on two
    busy cores: ``tests/network/test_load.py``)."""
    payload = b"x" * 512

    async def main() -> list[int]:
        a, b = socket.socketpair()
        _PAIRS.extend((a, b))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "peer",
                          None, heartbeat=10.0, timeout=60.0)
        heard = []
        async with trio.open_nursery() as n:
            link.start(n)
            await trio.testing.wait_all_tasks_blocked()     # the writer idle
            while True:                                     # its first ping, read
                try:
                    b.recv(1 << 16)
                except BlockingIOError:
                    break
            for _ in range(6):              # no await in here: the loop never yields
                for _ in range(BURST):
                    link.send(link_module._PING, payload)
                got = 0
                while True:                 # the peer reads what has arrived
                    try:
                        got += len(b.recv(1 << 16))
                    except BlockingIOError:
                        break
                heard.append(got)
            link.close("done")
        return heard

    heard = trio.run(main)
    assert all(heard), f"bytes the peer got after each burst of {BURST}: {heard}"


def _wire(header: object) -> object:
    """``header`` as a decoder without a schema gives it back."""
    return FrameDecoder().feed(b"".join(encode_parts([(header, b"")])))[0][0][0]


def _drain(sock: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            got += sock.recv(1 << 16)
        except BlockingIOError:
            return got


def test_a_burst_right_after_connecting_is_written_as_it_goes() -> None:
    """A program that submits in a loop right after its link opened, before the link's
    writer ever ran: the bursts go out as the loop goes, our timeout first. Before, the
    writer's first step was to write that ping, so until it ran the link counted as busy
    and no burst was written: 20 clients of 5,000 jobs on two busy cores were dropped as
    silent 2 s after they connected, mid-loop (``tests/network/test_load.py``)."""
    payload = b"x" * 64

    async def main() -> tuple[list[int], list[object]]:
        a, b = socket.socketpair()
        _PAIRS.extend((a, b))
        b.setblocking(False)
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "peer",
                          None, heartbeat=10.0, timeout=60.0)
        heard, first = [], b""
        async with trio.open_nursery() as n:
            link.start(n)                   # its tasks have not run yet
            for _ in range(3):              # no await in here: the loop never yields
                for _ in range(BURST):
                    link.send(link_module._PING, payload)
                got = _drain(b)
                first = first or got
                heard.append(len(got))
            link.close("done")
        decoder = FrameDecoder()
        messages = [h for batch in decoder.feed(first) for h, _ in batch]
        return heard, messages[:1]

    heard, messages = trio.run(main)
    assert all(heard), f"bytes the peer got after each burst of {BURST}: {heard}"
    assert messages == [_wire(Ping(60.0))], "the link's timeout goes first"


def test_a_burst_never_cuts_into_a_frame_the_writer_is_still_writing() -> None:
    """The socket is full and the writer waits to write the rest of a big frame: a burst
    from a loop that never yields must not go out in the middle of it. The peer reads
    every frame whole and every message in order."""
    big = b"b" * (1 << 20)

    async def main() -> list[tuple[object, int]]:
        a, b = socket.socketpair()
        _PAIRS.extend((a, b))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setblocking(False)
        link = StreamLink(trio.SocketStream(trio.socket.from_stdlib_socket(a)), "peer",
                          None, heartbeat=10.0, timeout=60.0)
        raw = b""
        async with trio.open_nursery() as n:
            link.start(n)
            await trio.testing.wait_all_tasks_blocked()
            link.send(Ping(1.0), big)       # written at once, in part
            link.send(Ping(2.0), big)       # the writer's, once it runs
            await trio.testing.wait_all_tasks_blocked()   # it waits: the socket is full
            assert link._midframe
            for _ in range(2):
                for _ in range(BURST):
                    link.send(Ping(3.0), b"")
                raw += _drain(b)
            while link._pending or link._midframe or link._out.items:
                raw += _drain(b)                  # room: the writer goes on, until it
                await trio.testing.wait_all_tasks_blocked()   # waits again or is done
            raw += _drain(b)
            link.close("done")
        return [(h, len(p)) for batch in FrameDecoder().feed(raw) for h, p in batch]

    got = trio.run(main)
    assert got[0] == (_wire(Ping(60.0)), 0)
    assert got[1:3] == [(_wire(Ping(1.0)), 1 << 20), (_wire(Ping(2.0)), 1 << 20)]
    assert got[3:] == [(_wire(Ping(3.0)), 0)] * (2 * BURST)
