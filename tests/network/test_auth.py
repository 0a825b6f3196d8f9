"""Authentication, protocol version and TLS, between real processes over real sockets."""

from __future__ import annotations

import os
import re
import ssl
import time

import netjobs
import pytest
import trio
from grain_harness import TOKEN, ExecutorProc, Harness, run_client, wait_until
from support.waiting import wait_until_async

import grain
from grain.errors import AuthenticationError, ConfigurationError, ProtocolError
from grain.net import transport
from grain.net.endpoints import parse_endpoint
from grain.protocol import handshake
from grain.protocol import messages as m
from grain.protocol.frames import FrameDecoder, encode
from grain.protocol.messages import PROTOCOL_VERSION
from grain.resource import Cores, to_wire

pytestmark = pytest.mark.timeout(90)


async def _read_frame(stream: trio.abc.Stream, dec: FrameDecoder, limit: float = 5.0):
    """The next message, or None at end of stream."""
    with trio.fail_after(limit):
        while True:
            batches = dec.feed(b"", max_frames=1)
            if batches:
                return batches[0][0][0]
            data = await stream.receive_some(65536)
            if not data:
                return None
            dec.feed(data, max_frames=0)


async def _eof_within(stream: trio.abc.Stream, limit: float = 5.0) -> bytes:
    """Read until the peer closes; returns everything read after the point of call."""
    got = b""
    with trio.fail_after(limit):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return got
            if not data:
                return got
            got += data


def _refusal_logged(ex: ExecutorProc, local_port: int, text: str) -> bool:
    return bool(re.search(rf"refused connection from 127\.0\.0\.1:{local_port}: .*{text}",
                          ex.text()))


# -- tokens -------------------------------------------------------------------------------

def test_client_with_wrong_token_is_refused(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)

    async def main() -> None:
        await grain.exec1(Cores(1), netjobs.noop, 1)

    with pytest.raises(AuthenticationError, match="wrong or missing token"):
        run_client(ex, main, limit=10, token="not-the-token")
    wait_until(lambda: "authentication failed: wrong or missing token" in ex.text(), 5,
               "the executor to log the refusal")
    assert ex.status()["jobs"]["submitted"] == 0
    assert ex.status()["clients"] == 0


def test_client_without_token_gets_a_clear_error(grain_procs: Harness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ex = grain_procs.executor()
    monkeypatch.delenv("GRAIN_TOKEN", raising=False)

    async def main() -> None:
        pass

    with pytest.raises(ConfigurationError, match="needs a token"):
        grain.run_combine(main, address=ex.address)


MACS = [(os.urandom(32), "wrong or missing token"),
        (None, "missing required field `mac`"),
        (b"", "Expected `bytes` of length >= 32"),
        ("a string", "Expected `bytes`, got `str`")]


def test_refused_before_any_payload_is_read(grain_procs: Harness) -> None:
    """A peer with a wrong (or no, or malformed) MAC gets REFUSE and a closed connection;
    the frames it pipelined behind its AUTH (a function and a job) are never looked at."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex)
    ports: list[int] = []

    async def attempt(mac: object) -> tuple[list, bytes]:
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        ports.append(stream.socket.getsockname()[1])
        dec = FrameDecoder()
        hello = await _read_frame(stream, dec)
        assert hello["kind"] == "HELLO" and hello["proto"] == "grain"
        body = {"kind": "AUTH", "version": PROTOCOL_VERSION, "role": "client",
                "nonce": os.urandom(16), "info": {"name": "intruder"}}
        if mac is not None:
            body["mac"] = mac
        await stream.send_all(
            encode(body)
            + encode(m.DefineFunction(1), b"P" + b"x" * 1000)
            + encode(m.Submit(1, to_wire(Cores(1)), 1), b"payload"))
        reply = await _read_frame(stream, dec)
        rest = await _eof_within(stream)
        await stream.aclose()
        return reply, rest

    async def main() -> None:
        for mac, why in MACS:
            reply, rest = await attempt(mac)
            assert reply["kind"] == "REFUSE", reply
            assert why in reply["reason"]
            assert rest == b""

    trio.run(main)
    for port, (_, why) in zip(ports, MACS, strict=True):
        wait_until(lambda port=port, why=why: _refusal_logged(ex, port, why), 5,
                   f"the refusal of 127.0.0.1:{port} in the log")
    st = ex.status()
    assert st["jobs"]["submitted"] == 0 and st["clients"] == 0


def test_worker_with_wrong_token_exits_with_a_clear_message(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    bad = grain_procs.tmp / "bad-token"
    bad.write_text("definitely-wrong\n")
    w = grain_procs.worker("intruder", ex, token_file=bad, wait=False)
    code = w.popen.wait(20)
    assert code != 0
    out = w.text()
    assert "error: refused by the executor: authentication failed: wrong or missing token" \
        in out, out
    assert "Traceback" not in out, out
    assert ex.status()["workers"] == []


def test_executor_checks_the_worker_is_talking_to_a_real_executor(
        grain_procs: Harness) -> None:
    """The dialer checks the listener's MAC too: a fake executor that does not know the
    token is refused by the worker, which exits with a clear message."""
    fake_port: list[int] = []

    async def fake_executor(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: trio.abc.Stream) -> None:
            dec = FrameDecoder()
            await stream.send_all(encode({"kind": "HELLO", "proto": "grain",
                                          "version": PROTOCOL_VERSION, "role": "executor",
                                          "nonce": os.urandom(16)}))
            msg = await _read_frame(stream, dec)
            assert msg is not None and msg["kind"] == "AUTH"
            await stream.send_all(encode({"kind": "WELCOME", "mac": os.urandom(32),
                                          "info": {}}))
            await _eof_within(stream, 20)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        fake_port.append(listeners[0].socket.getsockname()[1])
        task_status.started()
        await trio.serve_listeners(handle, listeners)

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(fake_executor)
            w = grain_procs.worker("wa", f"grain://127.0.0.1:{fake_port[0]}", wait=False)
            code = await trio.to_thread.run_sync(w.popen.wait, 20)
            assert code != 0
            assert "failed to prove it knows the token" in w.text(), w.text()
            assert "Traceback" not in w.text()
            n.cancel_scope.cancel()

    trio.run(main)


# -- protocol version ---------------------------------------------------------------------

def test_wrong_protocol_version_is_refused_by_the_executor(grain_procs: Harness) -> None:
    ex = grain_procs.executor()

    async def main() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        dec = FrameDecoder()
        hello = await _read_frame(stream, dec)
        assert hello["version"] == PROTOCOL_VERSION
        # A correct MAC, so that only the version is wrong.
        nonce = os.urandom(16)
        mac = handshake._mac(TOKEN, b"D", hello["nonce"], nonce, "client", None)
        await stream.send_all(encode({"kind": "AUTH", "version": PROTOCOL_VERSION + 98,
                                      "role": "client", "nonce": nonce, "mac": mac,
                                      "info": {}}))
        reply = await _read_frame(stream, dec)
        assert reply["kind"] == "REFUSE"
        assert "protocol version mismatch" in reply["reason"]
        assert str(PROTOCOL_VERSION + 98) in reply["reason"]
        assert await _eof_within(stream) == b""

    trio.run(main)
    wait_until(lambda: "protocol version mismatch" in ex.text(), 5, "the refusal in the log")


def test_client_refuses_an_executor_speaking_another_version() -> None:
    """The dialer side: a listener announcing another protocol version is refused with
    AuthenticationError before the dialer sends its AUTH (nothing of it is revealed)."""
    async def main() -> None:
        received: list[bytes] = []

        async def handle(stream: trio.abc.Stream) -> None:
            await stream.send_all(encode({"kind": "HELLO", "proto": "grain",
                                          "version": PROTOCOL_VERSION + 1,
                                          "role": "executor", "nonce": os.urandom(16)}))
            received.append(await _eof_within(stream))

        async with trio.open_nursery() as n:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            n.start_soon(trio.serve_listeners, handle, listeners)

            def client() -> None:
                async def prog() -> None:
                    pass
                grain.run_combine(prog, address=f"grain://127.0.0.1:{port}", token=TOKEN)

            with pytest.raises(AuthenticationError, match="protocol version mismatch"):
                await trio.to_thread.run_sync(client)
            await wait_until_async(lambda: received, 5, "the peer to see the client's bytes")
            assert received == [b""], "the client sent its AUTH to a wrong-version peer"
            n.cancel_scope.cancel()

    trio.run(main)


# -- TLS ----------------------------------------------------------------------------------

def _tls_ctx(ca: str) -> ssl.SSLContext:
    return transport.client_ssl_context(ca)


def test_tls_everywhere(grain_procs: Harness, tls_files: dict[str, str]) -> None:
    """Executor with a certificate made by trustme; workers, a client and `grain status`
    all verify it; jobs run; observers see TLS-wrapped connections on the executor."""
    ex = grain_procs.executor(tls=(tls_files["cert"], tls_files["key"]))
    assert "(TLS)" in ex.text()
    grain_procs.worker("wa", ex, cores="0", tls_ca=tls_files["ca"])
    grain_procs.worker("wb", ex, cores="1", tls_ca=tls_files["ca"])

    async def main() -> list:
        async with grain.open_waitgroup() as wg:
            for i in range(8):
                wg.submit(Cores(1), netjobs.where, i)
        return wg.results

    results = run_client(ex, main, tls_ca=tls_files["ca"])
    assert [r[0] for r in results] == list(range(8))
    assert {r[1] for r in results} <= {"wa", "wb"}
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file",
                        str(grain_procs.token_file), "--tls-ca", tls_files["ca"], "--json")
    assert r.returncode == 0, r.stderr
    assert {w["name"] for w in __import__("json").loads(r.stdout)["workers"]} == {"wa", "wb"}


def test_tls_required_refuses_plaintext_peers(grain_procs: Harness,
                                              tls_files: dict[str, str]) -> None:
    ex = grain_procs.executor(tls=(tls_files["cert"], tls_files["key"]))
    # A plaintext worker never gets registered.
    grain_procs.worker("plain", ex, wait=False)

    async def main() -> None:
        # A plaintext client: the executor waits for a TLS ClientHello and never says
        # HELLO in clear, so the client's handshake fails.
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        with pytest.raises(ProtocolError, match="require TLS"):
            await handshake.dial(stream, TOKEN, "client", expect_role="executor", timeout=2)
        await stream.aclose()
        # A client that trusts another CA refuses the executor's certificate.
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            await transport.connect(parse_endpoint(ex.address), _tls_ctx(tls_files["other_ca"]))
        # Garbage instead of a ClientHello is refused at once.
        stream = await trio.open_tcp_stream("127.0.0.1", ex.port)
        await stream.send_all(encode({"kind": "AUTH", "version": PROTOCOL_VERSION}))
        assert await _eof_within(stream) == b""

    trio.run(main)
    wait_until(lambda: ex.text().count("refused connection from") >= 3, 15,
               "the executor to log the refused peers (the plaintext worker among them)")
    st = ex.status()
    assert st["workers"] == [] and st["clients"] == 0


def test_tls_client_refuses_a_plaintext_executor(grain_procs: Harness,
                                                 tls_files: dict[str, str]) -> None:
    """A TLS client (or worker) reaching a plaintext executor fails fast and clearly."""
    ex = grain_procs.executor()

    async def prog() -> None:
        pass

    t0 = time.monotonic()
    with pytest.raises((ssl.SSLError, ProtocolError, ConnectionError)):
        grain.run_combine(prog, address=ex.address, token=TOKEN, tls_ca=tls_files["ca"])
    assert time.monotonic() - t0 < 5
    w = grain_procs.worker("tlsw", ex, tls_ca=tls_files["ca"], wait=False)
    wait_until(lambda: w.text().count("not reachable") >= 3, 10,
               "the worker to retry a few times")
    assert ex.status()["workers"] == []
    assert w.alive(), "a worker keeps retrying an executor it cannot reach"


def test_tls_with_an_untrusted_certificate(grain_procs: Harness,
                                           tls_files: dict[str, str]) -> None:
    """A client that does not trust the executor's CA gets a clear connection error; a
    worker that does not trust it keeps retrying (logging why) instead of crashing."""
    ex = grain_procs.executor(tls=(tls_files["cert"], tls_files["key"]))

    async def prog() -> None:
        pass

    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        grain.run_combine(prog, address=ex.address, token=TOKEN, tls_ca=tls_files["other_ca"])
    w = grain_procs.worker("doubter", ex, tls_ca=tls_files["other_ca"], wait=False,
                           extra=["--log-level", "debug"])
    wait_until(lambda: w.text().count("CERTIFICATE_VERIFY_FAILED") >= 3, 10,
               "the worker to retry a few times, saying why")
    assert w.alive(), w.tail()
    assert ex.status()["workers"] == []
    wait_until(lambda: "TLS handshake failed" in ex.text(), 5,
               "the executor to log why it refused the connection")


def test_executor_and_worker_refuse_to_start_without_a_token(grain_procs: Harness) -> None:
    for argv in (["executor", "--listen", "grain://127.0.0.1:0"],
                 ["worker", "--executor", "grain://127.0.0.1:9", "--cores", "0"]):
        r = grain_procs.cli(*argv, timeout=20)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "no token: pass --token-file FILE or set" in r.stderr
        assert "GRAIN_TOKEN" in r.stderr
        assert "Traceback" not in r.stderr


def test_passive_worker_refuses_an_executor_with_the_wrong_token(grain_procs: Harness) -> None:
    """The other direction: a passive worker (`grain worker --listen`) refuses an
    executor that dials it without the token; the program's job fails instead of hanging."""
    from grain_harness import free_port

    from grain.errors import Unschedulable

    port = free_port()
    w = grain_procs.passive_worker("passive", f"grain://127.0.0.1:{port}", cores="0")
    w.wait_for("waiting for an executor", 15)

    refused = "authentication failed: wrong or missing token"

    async def main() -> None:
        # the executor has dialled the worker and been refused: the job cannot go there
        await wait_until_async(lambda: refused in w.text(), 15,
                               "the passive worker to refuse the executor")
        with trio.fail_after(20):
            await grain.exec1(Cores(1), netjobs.noop, 1)

    with pytest.raises(Unschedulable, match="no worker is registered"):
        grain.run_combine(main, [f"grain://127.0.0.1:{port}"], token="wrong-token",
                          nolocal=True)
    wait_until(lambda: refused in w.text(), 5, "the passive worker to log the refusal")
    assert w.alive()
