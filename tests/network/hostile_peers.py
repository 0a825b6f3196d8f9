"""Tools of the hostile-input tests: peers that speak the protocol by hand, user programs
written to disk and run as ``python main.py``, and measurements of a live executor from
outside (its resident memory, how long ``/healthz`` takes to answer).

A ``RawPeer`` authenticates like a real client or worker (``handshake.dial``) and then
sends whatever messages a test chooses, bypassing every check of Grain's own client and
worker: the executor must hold by itself.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import trio
from grain_harness import TOKEN, Harness, process_env

from grain.protocol import handshake
from grain.protocol import messages as m
from grain.protocol.frames import FrameDecoder, Message, encode_batch


class RawPeer:
    """An authenticated connection to an executor that sends messages chosen by hand."""

    def __init__(self, stream: trio.SocketStream, decoder: FrameDecoder, local_port: int,
                 user: str | None) -> None:
        self.stream = stream
        self.decoder = decoder
        self.port = local_port
        self.user = user
        self.inbox: list[Message] = []
        self.closed = False
        self._sending = trio.Lock()   # a pinger may send while a test does

    @classmethod
    async def connect(cls, port: int, role: str = "client", info: dict[str, Any] | None = None,
                      token: str = TOKEN, user: str | None = None) -> RawPeer:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        local = stream.socket.getsockname()[1]
        welcome, dec = await handshake.dial(stream, token, role, info or {},
                                            expect_role="executor", user=user)
        dec.set_schema(m.ExecutorToWorker if role == "worker" else m.ExecutorToClient)
        return cls(stream, dec, local, welcome.user)

    async def send(self, messages: Iterable[Message]) -> None:
        """One frame carrying ``messages`` (``(struct, payload)`` pairs)."""
        batch = list(messages)
        if batch:
            await self.send_raw(encode_batch(batch))

    async def send_raw(self, data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(data)

    async def keep_alive(self, every: float = 0.5) -> None:
        """Ping for as long as the connection lasts (run it as a task): a peer that says
        nothing for the executor's timeout is dropped."""
        while not self.closed:
            await trio.sleep(every)
            try:
                await self.send([(m.Ping(), b"")])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    @asynccontextmanager
    async def pinging(self, every: float = 0.5) -> AsyncIterator[None]:
        """``keep_alive`` for the length of a ``with`` block: for tests that wait on
        something else (a thread measuring the executor) while the peer has nothing to say."""
        async with trio.open_nursery() as n:
            n.start_soon(self.keep_alive, every)
            yield
            n.cancel_scope.cancel()

    async def pump(self) -> bool:
        """Read what arrived (waiting for at least one byte); False at the end."""
        if self.closed:
            return False
        try:
            data = await self.stream.receive_some(1 << 20)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return False
        for batch in self.decoder.feed(data):
            self.inbox += [(h, bytes(p)) for h, p in batch if type(h) is not m.Ping]
        return True

    async def until(self, pred: Callable[[list[Message]], Any], limit: float = 10.0) -> Any:
        """Read until ``pred(inbox)`` is truthy (returns it), or fail after ``limit``.
        Pings while it waits, as a real peer does (the executor drops silent peers)."""
        with trio.fail_after(limit):
            while True:
                got = pred(self.inbox)
                if got:
                    return got
                alive = True
                with trio.move_on_after(0.3) as waited:
                    alive = await self.pump()
                if waited.cancelled_caught:
                    try:
                        await self.send([(m.Ping(), b"")])
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        alive = False
                    continue
                if not alive:
                    got = pred(self.inbox)
                    if got:
                        return got
                    raise ConnectionError("the executor closed the connection")

    async def results(self, cids: Iterable[int], limit: float = 30.0) -> dict[int, m.Result]:
        """Wait for a ``Result`` of every job in ``cids``."""
        want = set(cids)

        def have(inbox: list[Message]) -> dict[int, m.Result] | None:
            got = {h.cid: h for h, _ in inbox if type(h) is m.Result and h.cid in want}
            return got if len(got) == len(want) else None
        return await self.until(have, limit)

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    return psutil.Process(pid).memory_info().rss


MiB = 1024 ** 2


class HealthProbe:
    """A thread asking ``/healthz`` over and over (a fresh connection each time, as a
    Kubernetes liveness probe does) and recording how long each answer took."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.times: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn.request("GET", "/healthz")
                body = conn.getresponse().read()
                conn.close()
                if body != b"ok\n":
                    self.errors.append(f"unexpected answer {body!r}")
            except OSError as e:
                self.errors.append(repr(e))
            self.times.append(time.perf_counter() - t0)
            self._stop.wait(0.005)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    @property
    def worst(self) -> float:
        return max(self.times, default=0.0)

    def summary(self) -> str:
        t = sorted(self.times)
        if not t:
            return "no answers"
        return (f"{len(t)} answers, median {t[len(t) // 2] * 1e3:.1f} ms, "
                f"worst {t[-1] * 1e3:.1f} ms")


def write_program(directory: Path, source: str, files: dict[str, str] | None = None) -> Path:
    """A user's program as ``DIRECTORY/main.py`` (and helper modules beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (directory / name).write_text(textwrap.dedent(text))
    main = directory / "main.py"
    main.write_text(textwrap.dedent(source))
    return main


def program_env() -> dict[str, str]:
    """A user's environment: this checkout's Grain importable, no Grain settings."""
    env = {k: v for k, v in process_env().items() if not k.startswith("GRAIN_")}
    return env


def run_program(main: Path, *args: str, timeout: float = 120.0
                ) -> subprocess.CompletedProcess[str]:
    """``python main.py ARGS`` in the program's own directory, to completion."""
    return subprocess.run([sys.executable, main.name, *args], capture_output=True, text=True,
                          timeout=timeout, env=program_env(), cwd=main.parent,
                          stdin=subprocess.DEVNULL)


def start_program(main: Path, *args: str, log: Path, harness: Harness
                  ) -> subprocess.Popen[bytes]:
    """``python main.py ARGS`` in the background, its output in ``log``; killed with the
    test's other processes if it is still running then."""
    with open(log, "ab") as f:
        p = subprocess.Popen([sys.executable, main.name, *args], stdout=f,
                             stderr=subprocess.STDOUT, env=program_env(), cwd=main.parent,
                             stdin=subprocess.DEVNULL)
    harness._clients.append(p)
    return p


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document on the program's last line; fails showing what it said."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output\n{proc.stderr}"
    return json.loads(lines[-1])


def runner_pids(worker_pid: int) -> list[int]:
    """The worker's runner processes (``python -m grain.runner``)."""
    try:
        kids = psutil.Process(worker_pid).children()
    except psutil.Error:
        return []
    out = []
    for k in kids:
        try:
            if "grain.runner" in k.cmdline():
                out.append(k.pid)
        except psutil.Error:
            pass
    return out


def files_in(directory: str | os.PathLike[str]) -> list[str]:
    d = Path(directory)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []
