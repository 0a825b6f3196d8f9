"""The runner process: pinned to a job's cores, runs it, sends back its value or error.

A worker starts runners (``python -P -m grain.runner FD WORKER_PID [MAX_RESULT]``: ``-P``
so that a ``grain/`` folder in the worker's working directory is never imported) and
keeps them warm; each one runs a persistent trio loop (starting one per job would cost
more than a no-op job) and takes ``RunnerFunction`` (a pickled function, cached by id),
``RunnerJob`` and ``RunnerForget`` messages over a socket pair. For each job, in order:

1. its output starts being captured (``output``: fds 1 and 2 are pipes the runner reads);
2. the runner pins itself (``sched_setaffinity``) to the job's real CPU ids and sets
   ``OMP_NUM_THREADS`` and friends, *before* anything of the job is unpickled, so that
   libraries the unpickling imports, and subprocesses the job starts, get both;
3. function and arguments are unpickled (classes of the client's ``__main__`` are noted,
   to be sent back by reference: ``payload``), then every native thread pool already
   loaded is resized to the job's cores (``threads``);
4. the job runs: plain functions are called directly in the loop, ``async`` ones awaited;
5. its value or exception is pickled (a result over ``MAX_RESULT_BYTES`` is refused
   before it is sent: ``End.REFUSED``);
6. every process the job started is killed and reaped (the runner is their subreaper:
   ``reaper``), then the job's last output lines and its ``RunnerDone`` leave together.
"""

from __future__ import annotations

import inspect
import os
import select
import socket
import sys
import threading
import traceback
from collections import deque
from functools import partial
from typing import Any

import trio

from .. import config
from ..context import JOB_VARS as _VARS
from ..context import Deferred
from ..errors import RemoteError, SerializationError
from ..net.transport import recv_frames, send_nowait
from ..protocol import messages as m
from ..protocol import payload as pl
from ..protocol.frames import FrameDecoder, Message, encode_parts
from ..protocol.messages import End
from ..resource import from_wire
from . import reaper
from .output import OutputCapture
from .threads import ThreadPools


class Channel:
    """The runner's socket to its worker. Whole frames are written under a lock: the
    output thread and the job's thread both send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._lock = threading.Lock()
        # poll, not select: the socket's number is the worker's, above select()'s 1,024
        # when the worker is a program holding that many files (the embedded cluster)
        self.writable = select.poll()
        self.writable.register(sock, select.POLLOUT)
        self.readable = select.poll()
        self.readable.register(sock, select.POLLIN)

    def send(self, messages: list[Message]) -> None:
        parts = encode_parts(messages)
        with self._lock:
            for rest in send_nowait(self.sock, parts):
                view = memoryview(rest)
                while view:
                    try:
                        view = view[self.sock.send(view):]
                    except BlockingIOError:
                        self.writable.poll()


class Runner:
    """State kept across jobs: cached functions, current pinning and environment."""

    def __init__(self, output: OutputCapture | None = None,
                 max_result: int = config.MAX_RESULT_BYTES) -> None:
        self.fns: dict[int, Any] = {}
        self.fn_bytes: dict[int, bytes] = {}
        self.pinned: frozenset[int] | None = None
        self.all_cpus = frozenset(os.sched_getaffinity(0))
        self.env_set: dict[str, str] = {}
        self.pools = ThreadPools()
        self.output = output
        self.max_result = max_result

    def _function(self, key: int) -> Any:
        fn = self.fns.get(key)
        if fn is None:
            # the bytes go only once they loaded: a function that fails to load fails each
            # job of it with the real error, not the first one only
            fn = self.fns[key] = pl.runner_loads(self.fn_bytes[key])
            del self.fn_bytes[key]
        return fn

    def _prepare(self, cpus: list[int] | None, env: dict[str, str]) -> int:
        """Pin and set the environment; return the job's number of cores."""
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
        return len(cpus) if cpus else len(want)

    async def run(self, job: m.RunnerJob, payload: bytes) -> list[Message]:
        """Run one job; its last output lines and its ``RunnerDone``, in that order."""
        if self.output is not None:
            self.output.begin(job.jid)
        try:
            reply = await self._run(job, payload)
        finally:
            reaper.reap_descendants()
            last = self.output.end() if self.output is not None else []
        return [*last, reply]

    async def _run(self, job: m.RunnerJob, payload: bytes) -> Message:
        jid = job.jid
        cores = self._prepare(job.cpus, job.env)   # before unpickling: imports see it
        if job.code_path and job.code_path not in sys.path:
            sys.path.insert(0, job.code_path)
        try:
            fn = self._function(job.key)
            args, kwargs = pl.runner_loads(payload)
        except Exception as e:  # noqa: BLE001
            return _reply(jid, End.SERIALIZATION,
                          f"cannot unpickle the job's function or arguments on the worker: "
                          f"{type(e).__name__}: {e}")
        self.pools.fit(cores)
        _VARS["res"].set(Deferred(partial(from_wire, job.alloc, strict=False)))
        _VARS["instance"].set(job.instance)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as e:  # noqa: BLE001 - the job's own error goes back to the client
            return self._error_reply(jid, e)
        try:
            data = pl.runner_dumps(value, "the job's result", limit=self.max_result)
        except pl.TooLarge as e:
            return _reply(jid, End.REFUSED,
                          f"{e} (MAX_RESULT_BYTES); return less, or write it to shared "
                          f"storage and return its path")
        except SerializationError as e:
            return _reply(jid, End.SERIALIZATION, str(e))
        return _reply(jid, End.OK, "", data)

    def _error_reply(self, jid: int, e: BaseException) -> Message:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        e.__traceback__ = None
        try:
            data = pl.runner_dumps((e, tb), "the job's exception", limit=self.max_result)
            pl.loads(data)  # an exception that pickles but will not unpickle is common
        except Exception:  # noqa: BLE001
            data = pl.runner_dumps((RemoteError(f"{type(e).__qualname__}: {e}"[:60000]), tb))
        return _reply(jid, End.RAISED, f"{type(e).__name__}: {e}", data)


def _reply(jid: int, end: End, message: str, data: bytes = b"") -> Message:
    return m.RunnerDone(jid, int(end), message[:60000]), data


async def serve(channel: Channel, runner: Runner) -> None:
    """Run jobs as they arrive, in order, one at a time; raw non-blocking socket calls on
    the hot path (fewer scheduler round trips per job). Each reply is sent before the next
    job starts, so a job that kills the runner can never take a finished job's result with
    it. Jobs chained behind the current one are already in the socket buffer: the runner
    goes straight on to them."""
    sock = channel.sock
    dec = FrameDecoder(m.WorkerToRunner)
    inbox: deque[Message] = deque()
    preloaded = False
    while True:
        if not inbox:
            try:
                n, batches = recv_frames(sock, dec)
            except BlockingIOError:
                if not preloaded:
                    # The first idle moment (a spare runner waits for a new session):
                    # import what jobs usually need (dill for functions of a script's
                    # __main__, threadpoolctl), so that a session's first job does not
                    # wait ~0.1 s for it. A runner given a job at once skips this.
                    preloaded = True
                    preload()
                    continue
                # Idle between jobs, nothing else can run here (a job's tasks end with
                # it): block in poll() rather than a trio wait, which costs an epoll
                # registration and a scheduler round per job.
                channel.readable.poll()
                continue
            if not n:
                return
            for batch in batches:
                inbox.extend(batch)
            continue
        h, payload = inbox.popleft()
        t = type(h)
        if t is m.RunnerJob:
            channel.send(await runner.run(h, payload))
        elif t is m.RunnerFunction:
            runner.fn_bytes[h.key] = payload
        elif t is m.RunnerForget:
            runner.fns.pop(h.key, None)
            runner.fn_bytes.pop(h.key, None)


def preload() -> None:
    """Import what most jobs need, ahead of the first job."""
    pl.preload()
    try:
        import threadpoolctl  # noqa: F401 - imported for its side effect: ready
    except ImportError:
        pass


def _detach(fd: int) -> None:
    """In a child a job forked: /dev/null where the worker's socket was (closing it could
    let the number be reused, and the runner's socket object would close that later)."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def main() -> None:
    reaper.die_with_parent()
    if len(sys.argv) > 2 and os.getppid() != int(sys.argv[2]):
        return  # the worker died before the death signal was armed: nobody to serve
    reaper.become_subreaper()
    fd = int(sys.argv[1])
    max_result = int(sys.argv[3]) if len(sys.argv) > 3 else config.MAX_RESULT_BYTES
    # A process a job forks must not hold the worker's socket: when the runner dies, the
    # worker learns it from the socket's end, which never came while a forked daemon
    # kept a copy. Programs it execs do not inherit it; forks see /dev/null in its place.
    os.set_inheritable(fd, False)
    os.register_at_fork(after_in_child=lambda: _detach(fd))
    channel = Channel(socket.socket(fileno=fd))
    output = OutputCapture(channel.send)
    try:
        trio.run(serve, channel, Runner(output, max_result))
    except KeyboardInterrupt:
        pass
    except BaseException:
        # the runner's own failure goes to the worker's log, not into a job's output
        os.write(output.log_fd, traceback.format_exc().encode(errors="replace"))
        raise SystemExit(1) from None
