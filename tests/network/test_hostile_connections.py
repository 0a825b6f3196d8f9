"""Hostile connections: peers that never authenticate, and an executor out of file
descriptors. An unauthenticated peer must cost a bounded amount of memory and time; at
its limit of open files the executor says so in one clear line (no traceback per failed
``accept``) and serves new clients as soon as descriptors are free again.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import netjobs
import pytest
import trio
from grain_harness import ExecutorProc, Harness, each_once, process_env, run_client, wait_until
from hostile_peers import HealthProbe, MiB, rss

from grain.protocol.frames import PREFIX
from grain.resource import Cores

pytestmark = pytest.mark.timeout(180)

PARTIAL = PREFIX.pack(64 * 1024, 0) + b"\x92" * (64 * 1024 - 1)
"""A handshake frame's prefix announcing 64 KiB of header, and all of it but one byte."""


def _settled_rss(pid: int, limit: float = 10.0) -> int:
    last, since = rss(pid), time.monotonic()
    deadline = since + limit
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = rss(pid)
        if abs(now - last) > MiB:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return now
    return rss(pid)


def _serves_a_client(ex: ExecutorProc, limit: float = 30.0) -> None:
    async def main() -> dict:
        return await each_once({i: (Cores(1), netjobs.noop, (i,)) for i in range(3)})
    assert run_client(ex, main, limit=limit) == {i: ("ok", i) for i in range(3)}


async def _hog(port: int, data: bytes, keep: list[trio.SocketStream]) -> None:
    """Connect and send ``data``; keep the socket open (the peer may drop it)."""
    try:
        s = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    keep.append(s)
    try:
        await s.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def test_two_thousand_partial_headers_cost_bounded_memory(grain_procs: Harness) -> None:
    """2,000 unauthenticated sockets each send 64 KiB of a handshake frame and wait: the
    executor's memory grows by a bounded amount (it holds at most 256 such peers), comes
    back once they are gone, and a real client is served meanwhile and after."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    _serves_a_client(ex)
    base = _settled_rss(ex.pid)
    figures: dict[str, float] = {}

    async def main() -> None:
        keep: list[trio.SocketStream] = []
        with HealthProbe("127.0.0.1", ex.http_port) as probe:
            async with trio.open_nursery() as n:
                for _ in range(2000):
                    n.start_soon(_hog, ex.port, PARTIAL, keep)
                    await trio.sleep(0)
            figures["flood"] = await trio.to_thread.run_sync(_settled_rss, ex.pid)
            t0 = time.monotonic()
            await trio.to_thread.run_sync(_serves_a_client, ex)
            figures["client during the flood (s)"] = time.monotonic() - t0
            for s in keep:
                await trio.aclose_forcefully(s)
        figures["healthz worst (s)"] = probe.worst
        assert not probe.errors, probe.errors[:3]

    trio.run(main)
    # the executor hands freed memory back every few seconds
    wait_until(lambda: rss(ex.pid) - base < 24 * MiB, 20,
               "the executor's memory to come back", interval=0.2)
    after = _settled_rss(ex.pid)
    print(f"executor RSS {base / MiB:.0f} MiB; with 2,000 partial headers "
          f"{(figures['flood'] - base) / MiB:+.0f} MiB; after {(after - base) / MiB:+.0f} MiB; "
          f"a client served during the flood in {figures['client during the flood (s)']:.2f}s; "
          f"/healthz worst {figures['healthz worst (s)'] * 1e3:.0f} ms")
    assert figures["flood"] - base < 64 * MiB, figures
    assert after - base < 24 * MiB, (base, after)
    assert figures["healthz worst (s)"] < 1.0
    assert "Traceback" not in ex.text(), ex.tail(60)
    _serves_a_client(ex)


class LimitedExecutor(ExecutorProc):
    """``grain executor`` started with a hard limit of ``NOFILE`` open files."""

    NOFILE = 96

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.netns = None
        self.argv = ["prlimit", f"--nofile={self.NOFILE}:{self.NOFILE}", sys.executable,
                     "-m", "grain.cli", *argv]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=process_env(), cwd=cwd)
        self.seen_descendants = {}
        self.host = "127.0.0.1"


def test_executor_at_its_file_limit_logs_once_and_recovers(grain_procs: Harness,
                                                           tmp_path: Path) -> None:
    """With 96 open files allowed, peers hog every descriptor (idle HTTP connections,
    unauthenticated grain connections): the executor logs a clear line saying so, no
    traceback; once the hogs are gone a new client is served at once."""
    h = grain_procs
    argv = ["executor", "--listen", "grain://127.0.0.1:0", "--http", "127.0.0.1:0",
            "--token-file", str(h.token_file), "--heartbeat", "0.5", "--timeout", "2"]
    ex = LimitedExecutor("executor", argv, tmp_path / "executor.log", tmp_path)
    h.procs.append(ex)
    ex.ready()
    h.worker("wa", ex, cores="0")
    _serves_a_client(ex)
    served: dict[str, float] = {}

    async def main() -> None:
        keep: list[trio.SocketStream] = []
        async with trio.open_nursery() as n:
            for _ in range(150):
                n.start_soon(_hog, ex.http_port, b"GET /healthz HTTP/1.1\r\n", keep)
                n.start_soon(_hog, ex.port, PREFIX.pack(100, 0), keep)
                await trio.sleep(0)
        await trio.to_thread.run_sync(lambda: wait_until(
            lambda: re.search(r"at the (file descriptor )?limit|refusing connections",
                              ex.text()), 20, "the executor to say it is at its limit"))
        for s in keep:
            await trio.aclose_forcefully(s)
        t0 = time.monotonic()
        await trio.to_thread.run_sync(_serves_a_client, ex)
        served["after"] = time.monotonic() - t0

    trio.run(main)
    text = ex.text()
    print("\n".join(line for line in text.splitlines()
                    if re.search(r"limit|refusing", line)))
    print(f"a client served {served['after']:.2f}s after the hogs left")
    assert "Traceback" not in text, ex.tail(60)
    assert len(re.findall(r"at the (file descriptor )?limit", text)) <= 4, ex.tail(40)
    assert served["after"] < 5.0
    assert ex.alive()
