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
from grain.protocol import messages as m
from grain.protocol.frames import PREFIX, FrameDecoder, encode, encode_batch
from grain.protocol.messages import PROTOCOL_VERSION
from grain.resource import Cores, to_wire

pytestmark = pytest.mark.timeout(90)

WIRE = to_wire(Cores(1))

AUTH = {"kind": "AUTH", "version": PROTOCOL_VERSION, "role": "client", "nonce": b"n" * 16,
        "mac": b"m" * 32}

BEFORE_HANDSHAKE = {
    "http request": (b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", "refused"),
    "huge header length": (PREFIX.pack(0xFFFFFFFF, 0), "frame header of 4294967295 bytes"),
    "zero header length": (PREFIX.pack(0, 0), "frame header of 0 bytes"),
    "payload during handshake": (PREFIX.pack(8, 1 << 30), "frame payload of"),
    "not msgpack": (PREFIX.pack(1, 0) + b"\xc1", "malformed frame header"),
    "wrong shape": (PREFIX.pack(1, 0) + b"\x07", "malformed frame header"),
    "submit before auth": (encode([2, 1, WIRE, 1, 0], b"Pxx"), "frame payload of 3"),
    "submit without payload before auth": (encode([2, 1, WIRE, 1, 0]),
                                           "malformed frame header: Expected `object`"),
    "a hello back": (encode({"kind": "HELLO", "proto": "grain", "version": PROTOCOL_VERSION,
                             "role": "client", "nonce": b"n" * 16}), "expected AUTH, got HELLO"),
    "two messages in one frame": (encode_batch([(AUTH, b""), (AUTH, b"")]),
                                  "unexpected messages during the handshake"),
    "auth without fields": (encode({"kind": "AUTH"}), "missing required field"),
    "auth not a map": (encode(["AUTH", [1, 2]]), "malformed frame header"),
    "auth of another version": (encode({**AUTH, "version": PROTOCOL_VERSION + 98}),
                                "protocol version mismatch"),
    "auth with a forged mac": (encode(AUTH), "wrong or missing token for a client"),
    "auth as an unknown role": (encode({**AUTH, "role": "admin"}),
                                "a 'admin' cannot connect here"),
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


WORKER = {"name": "wz", "capacity": WIRE}


AFTER_HANDSHAKE = {
    # name: (role, info, bytes sent, what the executor logs)
    "done from a client": ("client", None, encode([9, 7, 1, 0, "ok"], b"Px"),
                           "malformed frame header: Invalid value 9"),
    "result from a worker": ("worker", WORKER, encode([4, 1, 0, "", ""]),
                             "malformed frame header: Invalid value 4"),
    "short submit": ("client", None, encode([2]), "malformed frame header: Expected `array`"),
    "submit with a bad id": ("client", None, encode([2, "x", WIRE, 1], b"P"),
                             "Expected `int`, got `str`"),
    "submit with a negative id": ("client", None, encode([2, -5, WIRE, 1], b"P"),
                                  "Expected `int` >= 0"),
    "unknown type": ("client", None, encode([999]), "Invalid value 999"),
    "huge payload": ("client", None, PREFIX.pack(10, 0xFFFFFFF0), "frame payload of"),
    "huge header": ("client", None, PREFIX.pack(0xFFFFFFF0, 0), "frame header of"),
    "garbage": ("client", None, os.urandom(64) + b"\xff" * 64, "protocol error|frame"),
    "a second attach": ("worker", WORKER, encode([23]) + encode([23]),
                        "a worker sent Attach twice"),
    "worker without capacity": ("worker", {"name": "wx"}, b"",
                                "missing required field `capacity`"),
    "worker with a capacity of the wrong type": ("worker", {"name": "wy",
                                                            "capacity": [["Nope", 1]]}, b"",
                                                 "malformed registration"),
    "worker with an unknown kind": ("worker", {"name": "wy", "capacity": [["Nope", {}]]}, b"",
                                    "malformed capacity"),
    "worker with negative cores": ("worker", {"name": "wy",
                                              "capacity": [["Cores", {"c": [-1], "N": 1}]]},
                                   b"", "malformed capacity"),
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

    async def main() -> int:
        frame = encode(m.DefineFunction(1), b"P" + b"z" * 100)
        stream, _ = await _authenticated(ex.port)
        await stream.send_all(frame[: len(frame) // 2])
        await stream.aclose()
        stream, port = await _authenticated(ex.port)
        await stream.send_all(frame[:5])
        with trio.fail_after(10):
            await _drain_until_eof(stream, 10)   # dropped for its silence
        await stream.aclose()
        return port

    port = trio.run(main)
    # the executor closes the connection, then logs why: wait for the line
    ex.wait_for(rf"client 127\.0\.0\.1:{port} gone: .*heartbeat timeout", 10)
    st = ex.status()
    assert st["clients"] == 0 and st["jobs"]["submitted"] == 0
    _well_behaved_client_runs(ex)


BAD_REQUESTS = {
    # cid: (request, end code, words of the answer)
    2: ([["Unobtainium", {}]], m.End.UNSCHEDULABLE, "unknown resource kind"),
    3: ([["Cores", {"N": -1}]], m.End.INVALID, "Cores.N must be an integer"),
    4: ([["Cores", {"N": 1.5}]], m.End.INVALID, "Cores.N must be an integer"),
    5: ([["Cores", {"N": 0}]], m.End.INVALID, "at least Cores(1)"),
    6: ([["Memory", {"m": 2.0, "M": 2.0}]], m.End.INVALID, "at least Cores(1)"),
    7: ([["Cores", {"N": 1}], ["Memory", {"m": -1000.0, "M": 1.0}]], m.End.INVALID,
        "Memory.m must be a finite number >= 0"),
    8: ([["Cores", {"N": 1}], ["WTime", {"T": float("nan"), "softT": 1.0}]], m.End.INVALID,
        "WTime.T must be a finite number > 0"),
    9: ([["Cores", {"N": 1}], ["Cores", {"N": 2}]], m.End.INVALID, "appears twice"),
}


def test_bad_requests_get_answers_not_crashes(grain_procs: Harness) -> None:
    """Well-framed but wrong requests are answered with a job error naming the field, and
    the connection stays up: an unknown function id, an unknown resource kind, counts
    that are not positive integers, NaN and negative sizes. Nothing is queued."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)

    async def main() -> list:
        stream, _ = await _authenticated(ex.port)
        dec = FrameDecoder(m.ExecutorToClient)
        await stream.send_all(
            encode(m.Submit(1, WIRE, 42), b"P") + encode(m.DefineFunction(1), b"P")
            + b"".join(encode(m.Submit(cid, req, 1), b"P")
                       for cid, (req, _, _) in BAD_REQUESTS.items()))
        results = []
        with trio.fail_after(10):
            while len(results) < 1 + len(BAD_REQUESTS):
                data = await stream.receive_some(65536)
                assert data, "the executor dropped a client for a bad request"
                for batch in dec.feed(data):
                    results += [h for h, _ in batch if type(h) is m.Result]
        await stream.aclose()
        return results

    results = {h.cid: h for h in trio.run(main)}
    assert results[1].end == m.End.SERIALIZATION
    assert "unknown function id 42" in results[1].message
    for cid, (_, end, words) in BAD_REQUESTS.items():
        assert results[cid].end == end and words in results[cid].message, results[cid]
    st = ex.status()
    assert st["queue_length"] == 0 and st["running_jobs"] == 0
    _well_behaved_client_runs(ex)


def test_version_in_hello_is_the_documented_one(grain_procs: Harness) -> None:
    ex = grain_procs.executor()

    async def main() -> dict:
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        dec = FrameDecoder()
        with trio.fail_after(5):
            while True:
                b = dec.feed(await stream.receive_some(65536))
                if b:
                    break
        await stream.aclose()
        return b[0][0][0]

    hello = trio.run(main)
    assert hello["kind"] == "HELLO" and hello["proto"] == "grain" and hello["version"] == PROTOCOL_VERSION
    assert hello["role"] == "executor" and isinstance(hello["nonce"], bytes)
    assert len(hello["nonce"]) == 16
