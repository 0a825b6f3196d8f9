"""Bad input at a live executor: garbage, huge length prefixes, truncated frames and
out-of-order messages, before and after the handshake. Each time the executor logs the
peer, drops that connection, and serves a well-behaved client right after."""

from __future__ import annotations

import os
import re

import netjobs
import pytest
import trio
from grain_harness import TOKEN, ExecutorProc, Harness, each_once, run_client, wait_until

from grain.protocol import handshake
from grain.protocol.frames import PREFIX, encode, encode_batch
from grain.protocol.messages import PROTOCOL_VERSION, Msg
from grain.resource import Cores, to_wire

pytestmark = pytest.mark.timeout(90)

WIRE = to_wire(Cores(1))

BEFORE_HANDSHAKE = {
    "http request": (b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", "refused"),
    "huge header length": (PREFIX.pack(0xFFFFFFFF, 0), "frame header of 4294967295 bytes"),
    "zero header length": (PREFIX.pack(0, 0), "frame header of 0 bytes"),
    "payload during handshake": (PREFIX.pack(8, 1 << 30), "frame payload of"),
    "not msgpack": (PREFIX.pack(1, 0) + b"\xc1", "malformed frame header"),
    "wrong shape": (PREFIX.pack(1, 0) + b"\x07", "malformed frame header"),
    "submit before auth": (encode([Msg.SUBMIT, 1, WIRE, 1, 0], b"Pxx"), "frame payload of 3"),
    "short submit before auth": (encode([Msg.SUBMIT, 1, WIRE, 1, 0]),
                                 "malformed handshake message"),
    "two-field submit before auth": (encode([Msg.SUBMIT, {}]), "expected AUTH, got '2'"),
    "two messages in one frame": (encode_batch([(["AUTH", {}], b""), (["AUTH", {}], b"")]),
                                  "unexpected messages during the handshake"),
    "auth without fields": (encode(["AUTH", {}]), "protocol version mismatch"),
    "auth not a map": (encode(["AUTH", [1, 2]]), "malformed handshake message"),
    "truncated then closed": (PREFIX.pack(100, 0) + b"\x92" * 10, "closed during the handshake"),
}


async def _drain_until_eof(stream: trio.abc.Stream, limit: float = 5.0) -> None:
    with trio.fail_after(limit):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return
            except trio.BrokenResourceError:
                return


async def _send_raw(port: int, data: bytes, half_close: bool) -> int:
    """Connect, send ``data`` (after the executor's HELLO), expect to be dropped."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    local = stream.socket.getsockname()[1]
    with trio.fail_after(5):
        assert await stream.receive_some(65536)  # HELLO
    await stream.send_all(data)
    if half_close:
        await stream.send_eof()
    await _drain_until_eof(stream)
    await stream.aclose()
    return local


def _well_behaved_client_runs(ex: ExecutorProc) -> None:
    async def main() -> dict:
        return await each_once({i: (Cores(1), netjobs.noop, (i,)) for i in range(5)})
    assert run_client(ex, main, limit=15) == {i: ("ok", i) for i in range(5)}


def test_garbage_before_the_handshake(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)
    ports: dict[str, int] = {}

    async def main() -> None:
        for name, (data, _) in BEFORE_HANDSHAKE.items():
            ports[name] = await _send_raw(ex.port, data, half_close=name.startswith("trunc"))

    trio.run(main)
    for name, (_, text) in BEFORE_HANDSHAKE.items():
        rx = rf"refused connection from 127\.0\.0\.1:{ports[name]}: .*{re.escape(text)}"
        wait_until(lambda rx=rx: re.search(rx, ex.text()), 5,
                   f"the executor to log {name!r} from port {ports[name]}: {rx}")
    assert ex.status()["clients"] == 0
    _well_behaved_client_runs(ex)


async def _authenticated(port: int, role: str = "client", info: dict | None = None
                         ) -> tuple[trio.SocketStream, int]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    local = stream.socket.getsockname()[1]
    await handshake.dial(stream, TOKEN, role, info or {}, expect_role="executor")
    return stream, local


AFTER_HANDSHAKE = {
    # name: (role, info, bytes sent, what the executor logs)
    "done from a client": ("client", None, encode([Msg.DONE, 1, 0, "ok"], b"Px"),
                           "unexpected message type 9 from a client"),
    "result from a worker": ("worker", {"name": "wz", "capacity": WIRE},
                             encode([Msg.RESULT, 1, 0, None, "", ""]),
                             "unexpected message type 4 from a worker"),
    "short submit": ("client", None, encode([Msg.SUBMIT]), "IndexError"),
    "submit with a bad id": ("client", None, encode([Msg.SUBMIT, "x", WIRE, 1, 0], b"P"),
                             "ValueError"),
    "unknown type": ("client", None, encode([999]), "unexpected message type 999"),
    "huge payload": ("client", None, PREFIX.pack(10, 0xFFFFFFF0), "frame payload of"),
    "huge header": ("client", None, PREFIX.pack(0xFFFFFFF0, 0), "frame header of"),
    "garbage": ("client", None, os.urandom(64) + b"\xff" * 64, "protocol error|frame"),
    "worker without capacity": ("worker", {"name": "wx"}, b"",
                                "registered without a capacity"),
    "worker with a bad capacity": ("worker", {"name": "wy", "capacity": [["Nope", 1]]}, b"",
                                   "malformed capacity"),
}


def test_garbage_after_the_handshake(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)
    ports: dict[str, int] = {}

    async def main() -> None:
        for name, (role, info, data, _) in AFTER_HANDSHAKE.items():
            stream, ports[name] = await _authenticated(ex.port, role, info)
            if data:
                await stream.send_all(data)
            await _drain_until_eof(stream)
            await stream.aclose()

    trio.run(main)
    log = ex.text()
    for name, (_, _, _, text) in AFTER_HANDSHAKE.items():
        rx = rf"127\.0\.0\.1:{ports[name]}\b.*({text})"
        wait_until(lambda rx=rx: re.search(rx, ex.text()), 5,
                   f"the executor to log {name!r} with the peer's address: {rx}\n{log}")
    st = ex.status()
    assert st["clients"] == 0 and [w["name"] for w in st["workers"]] == ["wa"]
    assert "Traceback" not in ex.text(), ex.tail(80)
    _well_behaved_client_runs(ex)


def test_truncated_frame_after_the_handshake(grain_procs: Harness) -> None:
    """A client that sends half a SUBMIT and vanishes: its job never existed; a client that
    goes quiet mid-frame is dropped by the heartbeat timeout."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)

    async def main() -> None:
        frame = encode([Msg.DEFINE_FN, 1], b"P" + b"z" * 100)
        stream, _ = await _authenticated(ex.port)
        await stream.send_all(frame[: len(frame) // 2])
        await stream.aclose()
        stream, port = await _authenticated(ex.port)
        await stream.send_all(frame[:5])
        with trio.fail_after(10):
            await _drain_until_eof(stream, 10)   # dropped for its silence
        await stream.aclose()
        assert re.search(rf"client 127\.0\.0\.1:{port} gone: .*heartbeat timeout", ex.text())

    trio.run(main)
    st = ex.status()
    assert st["clients"] == 0 and st["jobs"]["submitted"] == 0
    _well_behaved_client_runs(ex)


def test_bad_requests_get_answers_not_crashes(grain_procs: Harness) -> None:
    """Well-framed but wrong requests are answered with a job error, and the connection
    stays up: an unknown function id, an unknown resource kind, a malformed request."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)

    async def main() -> list:
        stream, _ = await _authenticated(ex.port)
        from grain.protocol.frames import FrameDecoder
        dec = FrameDecoder()
        await stream.send_all(
            encode([Msg.SUBMIT, 1, WIRE, 42, 0], b"P")
            + encode([Msg.DEFINE_FN, 1], b"P")
            + encode([Msg.SUBMIT, 2, [["Unobtainium", 3]], 1, 0], b"P")
            + encode([Msg.SUBMIT, 3, {"not": "a request"}, 1, 0], b"P"))
        results = []
        with trio.fail_after(10):
            while len(results) < 3:
                data = await stream.receive_some(65536)
                assert data, "the executor dropped a client for a bad request"
                for batch in dec.feed(data):
                    results += [h for h, _ in batch if h[0] == Msg.RESULT]
        await stream.aclose()
        return results

    results = sorted(trio.run(main), key=lambda h: h[1])
    assert [(h[1], h[2]) for h in results] == [(1, 8), (2, 7), (3, 7)], results
    assert "unknown function id 42" in results[0][5]
    _well_behaved_client_runs(ex)


def test_version_in_hello_is_the_documented_one(grain_procs: Harness) -> None:
    ex = grain_procs.executor()

    async def main() -> dict:
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        from grain.protocol.frames import FrameDecoder
        dec = FrameDecoder()
        with trio.fail_after(5):
            while True:
                b = dec.feed(await stream.receive_some(65536))
                if b:
                    break
        await stream.aclose()
        return b[0][0][0][1]

    hello = trio.run(main)
    assert hello["proto"] == "grain" and hello["version"] == PROTOCOL_VERSION
    assert hello["role"] == "executor" and isinstance(hello["nonce"], bytes)
    assert len(hello["nonce"]) == 16
