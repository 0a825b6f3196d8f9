"""Big frames over a real TCP connection: how a link reads them.

While the rest of a big frame is coming, a link's socket wakes its reader only once
``transport.LOWAT`` bytes are there (``SO_RCVLOWAT``): fewer, bigger reads. These tests
check what must hold around that: every message arrives, the next small message after a
big one wakes the reader at once (the threshold is back to one byte), and a peer that
trickles a big frame slower than the threshold fills is not taken for a silent one.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import msgspec
import pytest
import trio

from grain.net import link as link_module
from grain.net import transport
from grain.net.link import LinkClosed, StreamLink
from grain.protocol.frames import FrameDecoder, encode
from grain.protocol.messages import Ping

pytestmark = pytest.mark.timeout(60)


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


def _lowat(stream: trio.SocketStream) -> int:
    return int(stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))


PING_TAG = msgspec.msgpack.decode(msgspec.msgpack.encode(Ping(1.0)))[0]


async def _next_message(link: StreamLink) -> tuple[object, bytes]:
    """The next message that is not a ping (these links decode raw: headers are lists)."""
    while True:
        for header, payload in await link.receive():
            if not (isinstance(header, list) and header[0] == PING_TAG):
                return header, payload


def test_a_big_payload_then_a_small_message_both_arrive_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """6 MiB then a small message: both arrive whole and in order; the reader waited for
    ``LOWAT`` bytes at a time while the big frame came, and its socket wakes for a single
    byte again after it (else the small message would wait for a megabyte that never
    comes and the test would time out)."""
    big = os.urandom(6 * 1024 * 1024)
    thresholds: list[int] = []

    def recording(sock: socket.socket, n: int) -> bool:
        thresholds.append(n)
        return transport.set_rcvlowat(sock, n)

    monkeypatch.setattr(link_module, "set_rcvlowat", recording)

    async def main() -> None:
        a, b = await _tcp_pair()
        async with trio.open_nursery() as n:
            sender = StreamLink(a, "b", None)
            receiver = StreamLink(b, "a", None)
            sender.start(n)
            receiver.start(n)
            sender.send([7, "big"], big)
            header, payload = await _next_message(receiver)
            assert header == [7, "big"] and bytes(payload) == big
            sender.send([8, "small"], b"x")
            with trio.fail_after(5):
                assert await _next_message(receiver) == ([8, "small"], b"x")
            assert _lowat(b) == 1
            assert transport.LOWAT in thresholds and thresholds[-1] == 1
            sender.close()
            receiver.close()

    trio.run(main)


def test_a_big_frame_trickled_slowly_is_not_taken_for_silence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer sends a big frame in small pieces, one every 0.25 s: at that pace the
    wake-up threshold would take longer than the link's 1 s silence timeout to fill.
    The reader gives up waiting for it after ``LOWAT_PATIENCE`` (0.5 s) and reads piece by
    piece: the frame arrives and the link stays open."""
    monkeypatch.setattr(transport, "LOWAT", 256 * 1024)
    payload = os.urandom(400 * 1024)
    frame = encode([9, "slow"], payload)
    piece = 40 * 1024

    async def main() -> None:
        a, b = await _tcp_pair()
        # the peer, writing by hand from a thread
        raw = socket.socket(fileno=os.dup(a.socket.fileno()))
        raw.setblocking(True)

        def trickle() -> None:
            for i in range(0, len(frame), piece):
                raw.sendall(frame[i:i + piece])
                time.sleep(0.25)

        async with trio.open_nursery() as n:
            receiver = StreamLink(b, "a", None, timeout=1.0,
                                  decoder=FrameDecoder(big=64 * 1024))
            receiver.start(n)
            writer = threading.Thread(target=trickle)
            writer.start()
            try:
                header, got = await _next_message(receiver)
            finally:
                await trio.to_thread.run_sync(writer.join)
            assert header == [9, "slow"] and bytes(got) == payload
            assert receiver.closed is None
            receiver.close()
        raw.close()
        await a.aclose()

    trio.run(main)


def test_wake_threshold_is_a_big_frame_rest_unless_the_peer_is_slow() -> None:
    lowat = transport.LOWAT
    assert transport.wake_at(0, False) == 1
    assert transport.wake_at(lowat - 1, False) == 1
    assert transport.wake_at(lowat, False) == lowat
    assert transport.wake_at(10 * lowat, True) == 1


def test_a_decoder_says_how_much_of_a_big_frame_is_missing() -> None:
    frame = encode([1], b"z" * 5000)
    dec = FrameDecoder(big=1000)
    assert dec.missing == 0
    dec.feed(frame[:1200])
    assert dec.missing == len(frame) - 1200
    dec.feed(frame[1200:4000])
    assert dec.missing == len(frame) - 4000
    assert dec.feed(frame[4000:]) and dec.missing == 0


def test_a_peer_silent_in_the_middle_of_a_big_frame_is_declared_silent() -> None:
    """A peer sends the first part of a big frame and then nothing (a half-open
    connection): the link closes as silent after its timeout, as it would between
    frames."""
    payload = os.urandom(3 * 1024 * 1024)
    frame = encode([9, "cut"], payload)

    async def main() -> None:
        a, b = await _tcp_pair()
        raw = socket.socket(fileno=os.dup(a.socket.fileno()))
        raw.setblocking(True)
        async with trio.open_nursery() as n:
            receiver = StreamLink(b, "a", None, timeout=1.0)
            receiver.start(n)
            await trio.to_thread.run_sync(raw.sendall, frame[:len(frame) // 3])
            with trio.fail_after(10), pytest.raises(LinkClosed):
                await _next_message(receiver)
        assert receiver.silent and "silent" in (receiver.closed or "")
        raw.close()
        await a.aclose()

    trio.run(main)
