"""The runner process: pinned to a job's cores, runs it, sends back its value or error.

A worker starts runners (``python -m grain.runner FD WORKER_PID``) and keeps them warm; each one runs
a persistent trio loop (starting one per job would cost more than a no-op job) and takes
``FUNCTION`` (a pickled function, cached by id) and ``RUN`` messages over a socket pair.
Before a job runs, the runner pins itself (``sched_setaffinity``) to the job's real CPU
ids and sets ``OMP_NUM_THREADS`` and friends, so subprocesses the job starts inherit both.
Plain functions are called directly in the loop; ``async`` ones are awaited.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import select
import signal
import socket
import sys
import traceback
from collections import deque
from typing import Any

import trio

from ..context import JOB_VARS as _VARS
from ..errors import RemoteError, SerializationError
from ..net.transport import send_nowait
from ..protocol import messages as m
from ..protocol import payload as pl
from ..protocol.frames import FrameDecoder, Message, encode_parts
from ..protocol.messages import End
from ..resource import from_wire

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this runner when its worker dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Runner:
    """State kept across jobs: cached functions, current pinning and environment."""

    def __init__(self) -> None:
        self.fns: dict[int, Any] = {}
        self.fn_bytes: dict[int, bytes] = {}
        self.pinned: frozenset[int] | None = None
        self.all_cpus = frozenset(os.sched_getaffinity(0))
        self.env_set: dict[str, str] = {}

    def _function(self, key: int) -> Any:
        fn = self.fns.get(key)
        if fn is None:
            fn = self.fns[key] = pl.loads(self.fn_bytes.pop(key))
        return fn

    def _prepare(self, cpus: list[int] | None, env: dict[str, str]) -> None:
        want = frozenset(cpus) if cpus else self.all_cpus
        if want != self.pinned:
            os.sched_setaffinity(0, want)
            self.pinned = want
        if env != self.env_set:
            for k in self.env_set:
                if k not in env:
                    os.environ.pop(k, None)
            os.environ.update(env)
            self.env_set = dict(env)

    async def run(self, job: m.RunnerJob, payload: bytes) -> Message:
        jid, alloc_wire, cpus, env, instance = job.jid, job.alloc, job.cpus, job.env, \
            job.instance
        if job.code_path and job.code_path not in sys.path:
            sys.path.insert(0, job.code_path)
        try:
            fn = self._function(job.key)
            args, kwargs = pl.loads(payload)
        except Exception as e:  # noqa: BLE001
            return _reply(jid, End.SERIALIZATION,
                          f"cannot unpickle the job's function or arguments on the worker: "
                          f"{type(e).__name__}: {e}")
        self._prepare(cpus, env)
        _VARS["res"].set(from_wire(alloc_wire, strict=False))
        _VARS["instance"].set(instance)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as e:  # noqa: BLE001 - the job's own error goes back to the client
            return _error_reply(jid, e)
        try:
            data = pl.dumps(value, "the job's result")
        except SerializationError as e:
            return _reply(jid, End.SERIALIZATION, str(e))
        return _reply(jid, End.OK, "", data)


def _reply(jid: int, end: End, message: str, data: bytes = b"") -> Message:
    return m.RunnerDone(jid, int(end), message[:60000]), data


def _error_reply(jid: int, e: BaseException) -> Message:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    e.__traceback__ = None
    try:
        data = pl.dumps((e, tb), "the job's exception")
        pl.loads(data)  # an exception that pickles but will not unpickle is common
    except Exception:  # noqa: BLE001
        data = pl.dumps((RemoteError(f"{type(e).__qualname__}: {e}"), tb))
    return _reply(jid, End.RAISED, f"{type(e).__name__}: {e}", data)


async def _flush(sock: socket.socket, stream: trio.SocketStream, replies: list[Message]) -> None:
    parts = encode_parts(replies)
    replies.clear()
    for rest in send_nowait(sock, parts):
        await stream.send_all(rest)


async def serve(sock: socket.socket) -> None:
    """Run jobs as they arrive, in order, one at a time; raw non-blocking socket calls on
    the hot path (fewer scheduler round trips per job). Each reply is sent before the next
    job starts, so a job that kills the runner can never take a finished job's result with
    it. Jobs chained behind the current one are already in the socket buffer: the runner
    goes straight on to them."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    dec = FrameDecoder(m.WorkerToRunner)
    runner = Runner()
    inbox: deque[Message] = deque()
    while True:
        if not inbox:
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                # Idle between jobs, nothing else can run here (a job's tasks end with
                # it): block in select() rather than a trio wait, which costs an epoll
                # registration and a scheduler round per job.
                select.select([sock], [], [])
                continue
            if not data:
                return
            for batch in dec.feed(data):
                inbox.extend(batch)
            continue
        h, payload = inbox.popleft()
        t = type(h)
        if t is m.RunnerJob:
            await _flush(sock, stream, [await runner.run(h, payload)])
        elif t is m.RunnerFunction:
            runner.fn_bytes[h.key] = payload
        elif t is m.RunnerForget:
            runner.fns.pop(h.key, None)
            runner.fn_bytes.pop(h.key, None)


def main() -> None:
    _die_with_parent()
    if len(sys.argv) > 2 and os.getppid() != int(sys.argv[2]):
        return  # the worker died before the death signal was armed: nobody to serve
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    try:
        trio.run(serve, sock)
    except KeyboardInterrupt:
        pass
