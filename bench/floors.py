"""The floors of a one-job round trip over TCP: the same three hops as Grain's cluster path
(client -> executor -> worker -> runner and back), built from relays that do nothing else.

``python -m bench.floors ROLE [DOWNSTREAM_PORT]`` runs one process of a chain and prints
the port it listens on:

- ``trio-relay PORT`` / ``trio-echo``: plain trio. A relay accepts one connection, dials
  ``PORT`` and copies bytes both ways, one task per direction (``receive_some`` then
  ``send_all``); the echo sends back what it reads. What any trio program moving a message
  pays per hop: a wake-up from epoll, a read, a write.
- ``raw-relay PORT`` / ``raw-echo``: the same with blocking sockets and ``select`` (no
  event loop, no tasks): the raw-socket floor.

``chain_roundtrip(kind, n)`` starts ``echo``, then two relays in front of it (each its own
process), and measures ``n`` round trips of a 64-byte message from this process (a trio
client for ``trio``, a blocking socket for ``raw``): the figure Grain's round trip over
TCP is divided by (``bench.workloads``).
"""

from __future__ import annotations

import select
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

from .procs import tree_cpu_s

LOOPBACK = "127.0.0.1"
MESSAGE = 64


# -- the chain's processes -------------------------------------------------------------
def _listen() -> socket.socket:
    ls = socket.socket()
    ls.bind((LOOPBACK, 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    return ls


def _nodelay(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_echo() -> None:
    """Blocking echo: read, write back."""
    with _listen() as ls:
        conn, _ = ls.accept()
        _nodelay(conn)
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                conn.sendall(data)


def raw_relay(down_port: int) -> None:
    """Blocking relay: ``select`` on both sockets, copy whatever is readable."""
    with _listen() as ls:
        up, _ = ls.accept()
        down = socket.create_connection((LOOPBACK, down_port))
        _nodelay(up)
        _nodelay(down)
        other = {up: down, down: up}
        with up, down:
            while True:
                ready, _, _ = select.select([up, down], [], [])
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    other[s].sendall(data)


async def _trio_listen() -> tuple[trio.SocketListener, int]:
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    lst = listeners[0]
    port = lst.socket.getsockname()[1]
    print(port, flush=True)
    return lst, port


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    while True:
        data = await src.receive_some(1 << 16)
        if not data:
            return
        await dst.send_all(data)


async def trio_echo() -> None:
    lst, _ = await _trio_listen()
    async with lst:
        conn = await lst.accept()
        async with conn:
            await _copy(conn, conn)


async def trio_relay(down_port: int) -> None:
    lst, _ = await _trio_listen()
    async with lst:
        up = await lst.accept()
        down = await trio.open_tcp_stream(LOOPBACK, down_port)
        async with up, down, trio.open_nursery() as n:
            n.start_soon(_copy, up, down)
            await _copy(down, up)
            n.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    role, rest = args[0], [int(a) for a in args[1:]]
    if role == "raw-echo":
        raw_echo()
    elif role == "raw-relay":
        raw_relay(*rest)
    elif role == "trio-echo":
        trio.run(trio_echo)
    elif role == "trio-relay":
        trio.run(trio_relay, rest[0])
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


# -- the measuring side ------------------------------------------------------------------
def _start(role: str, *args: int) -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen([sys.executable, "-m", "bench.floors", role, *map(str, args)],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise RuntimeError(f"bench.floors {role} exited {p.returncode} before listening")
    return p, int(line)


def _start_chain(kind: str) -> tuple[list[subprocess.Popen[bytes]], int]:
    """echo <- relay <- relay: returns the processes and the first relay's port."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        p, port = _start(f"{kind}-echo")
        procs.append(p)
        for _ in range(2):
            p, port = _start(f"{kind}-relay", port)
            procs.append(p)
    except BaseException:
        _stop(procs)
        raise
    return procs, port


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def _raw_client(port: int, n: int, warm: int) -> list[float]:
    msg = b"x" * MESSAGE
    times: list[float] = []
    with socket.create_connection((LOOPBACK, port)) as s:
        _nodelay(s)
        for i in range(warm + n):
            t = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < MESSAGE:
                chunk = s.recv(MESSAGE - got)
                if not chunk:
                    raise ConnectionError("the chain closed")
                got += len(chunk)
            if i >= warm:
                times.append(time.perf_counter() - t)
    return times


async def _trio_client(port: int, n: int, warm: int) -> list[float]:
    msg = b"x" * MESSAGE
    times: list[float] = []
    async with await trio.open_tcp_stream(LOOPBACK, port) as s:
        for i in range(warm + n):
            t = time.perf_counter()
            await s.send_all(msg)
            got = 0
            while got < MESSAGE:
                chunk = await s.receive_some(MESSAGE - got)
                if not chunk:
                    raise ConnectionError("the chain closed")
                got += len(chunk)
            if i >= warm:
                times.append(time.perf_counter() - t)
    return times


def chain_roundtrip(kind: str, n: int, warm: int = 50) -> dict[str, Any]:
    """Median and p95 round trip (ms) of a 64-byte message through ``kind``'s chain, and
    the CPU all its processes spent per round trip (us, warm-up included: the same work)."""
    procs, port = _start_chain(kind)
    try:
        cpu = tree_cpu_s()      # the chain's processes are up (each printed its port)
        if kind == "raw":
            times = _raw_client(port, n, warm)
        else:
            times = trio.run(_trio_client, port, n, warm)
        cpu = tree_cpu_s() - cpu
    finally:
        _stop(procs)
    return {"rt_median_ms": statistics.median(times) * 1e3, "rt_p95_ms": _p95(times) * 1e3,
            "rt_cpu_us": cpu / (warm + n) * 1e6}


if __name__ == "__main__":
    sys.exit(main())
