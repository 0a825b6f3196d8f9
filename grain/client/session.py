"""A client session: the jobs a program has in flight on an executor, and their endings.

A session outlives its connections. Its id (random, chosen here) names it to the
executor; when the connection is lost, the session reconnects by itself (with backoff, for
the reconnect grace: 5 minutes by default), then redefines its functions and resubmits
every unfinished job, naming the worker where it saw each one start, so that the executor
re-attaches jobs that are still running instead of running them again. Only when the grace
runs out do pending jobs fail with ``ExecutorLost``.

``submit`` pickles now (so an unpicklable function or argument fails at the call, naming
the object) and queues the message; a function goes over the link once, then by id. A job
has one id for its whole life here (retries after a ``temporary_err`` included), so
cancelling it works whatever attempt it is on. Each job's ``on_end(ok, value_or_error)``
is called exactly once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import config, errors
from ..context import JOB_VARS
from ..net.link import Link, LinkClosed, handling
from ..protocol import messages as m
from ..protocol import payload as pl
from ..protocol.frames import wire_key
from ..protocol.messages import End
from ..resource import (
    ZERO,
    InvalidResource,
    Resource,
    UnknownResourceKind,
    request_from_wire,
    to_wire,
)

log = logging.getLogger("grain.client")
_LAST_END = max(End)

OnEnd = Callable[[bool, Any], None]
OnStart = Callable[[str], None]
OnOutput = Callable[[int, bytes, int], None]
IDLE_FUNCTIONS = 256
ACK_DELAY = 0.05
"""Acknowledgements of results wait this long for a message to ride on (the next
submission, usually): a job's round trip then costs the executor and the worker no
message of its own for it. Workers hold a result until its acknowledgement arrives."""
IDLE_FUNCTION_BYTES = 64 * 1024 ** 2
Connect = Callable[[int, bool], Awaitable[Link]]
"""``connect(session_id, resume)`` -> a started link to the executor."""

_END_ERRORS: dict[End, type[errors.GrainError]] = {
    End.CRASHED: errors.RunnerCrashed,
    End.TIMEOUT: errors.JobTimeout,
    End.MEMORY: errors.MemoryLimitExceeded,
    End.CANCELLED: errors.JobCancelled,
    End.WORKER_LOST: errors.WorkerLost,
    End.UNSCHEDULABLE: errors.Unschedulable,
    End.SERIALIZATION: errors.SerializationError,
    End.EXECUTOR_LOST: errors.ExecutorLost,
    End.INVALID: errors.InvalidRequest,
    End.REFUSED: errors.LimitExceeded,
}


@dataclass(slots=True)
class _Job:
    on_end: OnEnd
    request_wire: Any
    fid: int
    payload: bytes
    what: str
    name: str
    on_start: OnStart | None = None
    on_output: OnOutput | None = None
    attempts: int = 1
    worker: str | None = None      # where the executor said it started


@dataclass(slots=True)
class _Function:
    fn: Any
    fid: int
    data: bytes
    jobs: int = 0


def decode_error(end: End, message: str, data: bytes, what: str) -> BaseException:
    """The exception a client sees for a job that ended without a value."""
    if end == End.RAISED:
        try:
            exc, tb = pl.loads(data)
        except Exception as e:  # noqa: BLE001
            return errors.RemoteError(f"{what} raised {message} (and the exception could not "
                                      f"be unpickled here: {e!r})")
        if not isinstance(exc, BaseException):
            return errors.RemoteError(f"{what} raised {message}")
        exc.__cause__ = errors.RemoteTraceback(str(tb))
        return exc
    cls = _END_ERRORS.get(end, errors.JobError)
    return cls(f"{what}: {message}" if message else what)


class Session:
    """Jobs submitted to one executor, over one connection after another."""

    def __init__(self, link: Link, *, temporary_err: tuple[type[BaseException], ...] = (),
                 temporary_attempts: int = config.TEMPORARY_ATTEMPTS,
                 worker_retries: int | None = None, connect: Connect | None = None,
                 reconnect_grace: float = config.CLIENT_GRACE,
                 session_id: int | None = None, bundle: tuple[str, bytes] | None = None,
                 on_output: OnOutput | None = None) -> None:
        self.link = link
        self.id = session_id if session_id is not None else secrets.randbits(63)
        self.temporary_err = tuple(temporary_err)
        self.temporary_attempts = temporary_attempts
        self.worker_retries = worker_retries
        self.connect = connect
        self.reconnect_grace = reconnect_grace
        self.bundle = bundle
        self.default_output = on_output
        self._next = 0
        self._fns: dict[int, _Function] = {}          # id(fn) -> its definition
        self._fn_of: dict[int, _Function] = {}        # fid -> the same
        self._idle: dict[int, None] = {}              # fids with no job in flight, oldest first
        self._idle_bytes = 0
        self._jobs: dict[int, _Job] = {}
        self._wires: dict[bytes, Any] = {}
        self._closed: str | None = None
        self._acks: list[int] = []    # results received, not yet acknowledged (``_ack``)
        self.reconnects = 0
        self._leaving = False           # said goodbye: a closed link is the executor's answer
        self._gone = trio.Event()       # ... which ``goodbye`` waits for
        self.connected = trio.Event()
        self.connected.set()
        if bundle is not None:
            link.send(m.ProjectBundle(bundle[0]), bundle[1])

    def __len__(self) -> int:
        return len(self._jobs)

    # -- submitting ----------------------------------------------------------------------
    def _function(self, fn: Any) -> _Function:
        f = self._fns.get(id(fn))
        if f is not None and f.fn is fn:
            if self._idle.pop(f.fid, 0) is None:
                self._idle_bytes -= len(f.data)
            return f
        data = pl.dumps(fn, f"the job function {getattr(fn, '__qualname__', fn)!r}")
        self._next += 1
        f = _Function(fn, self._next, data)   # holds fn, so its id() is not reused
        self._fns[id(fn)] = f
        self._fn_of[f.fid] = f
        self._send(m.DefineFunction(f.fid), data)
        return f

    def _release_function(self, f: _Function) -> None:
        f.jobs -= 1
        if f.jobs > 0:
            return
        # No job of it in flight. Keep it defined for a while (the next job of the same
        # function costs nothing), but not without bound: a program that makes functions
        # on the fly must not pile them up here or remotely. The least recently idle go.
        self._idle[f.fid] = None
        self._idle_bytes += len(f.data)
        while self._idle and (self._idle_bytes > IDLE_FUNCTION_BYTES
                              or len(self._idle) > IDLE_FUNCTIONS):
            fid = next(iter(self._idle))
            self._forget(self._fn_of[fid])

    def _forget(self, f: _Function) -> None:
        if self._idle.pop(f.fid, 0) is None:
            self._idle_bytes -= len(f.data)
        self._fn_of.pop(f.fid, None)
        if self._fns.get(id(f.fn)) is f:
            del self._fns[id(f.fn)]
        self._send(m.ForgetFunction(f.fid))

    def _wire(self, request: Resource) -> Any:
        """The request's wire form, checked as the executor will check it (so a bad
        request fails at the call), shared by every job asking the same."""
        wire = to_wire(request)
        key = wire_key(wire)
        shared = self._wires.get(key)
        if shared is None:
            try:
                request_from_wire(wire)
            except (InvalidResource, UnknownResourceKind) as e:
                if isinstance(e, UnknownResourceKind):
                    shared = wire    # the executor may know kinds this process does not
                else:
                    raise errors.InvalidRequest(f"invalid resource request {request}: {e}"
                                                ) from None
            if len(self._wires) > 4096:
                self._wires.clear()
            shared = self._wires[key] = wire
        return shared

    def submit(self, request: Resource, fn: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any], on_end: OnEnd, *, name: str | None = None,
               on_start: OnStart | None = None, on_output: OnOutput | None = None) -> int:
        """Queue a job; returns its id. Raises ``SerializationError`` at once when the
        function or an argument cannot be pickled, ``ExecutorLost`` when the session has
        given up on the executor."""
        if self._closed is not None:
            raise errors.ExecutorLost(f"not connected to the executor: {self._closed}")
        qualname = getattr(fn, "__qualname__", None) or repr(fn)
        what = f"job {qualname}"
        wire = self._wire(request)
        data = pl.dumps((args, kwargs), f"an argument of {what}")
        f = self._function(fn)
        f.jobs += 1
        self._next += 1
        cid = self._next
        job = _Job(on_end, wire, f.fid, data, what, name or qualname,
                   on_start, on_output)
        self._jobs[cid] = job
        self._send(m.Submit(cid, job.request_wire, f.fid, self.worker_retries, job.name),
                   data)
        return cid

    def cancel(self, cid: int) -> None:
        """Stop caring about a job: drop it from the queue or kill it where it runs,
        whatever attempt it is on."""
        job = self._jobs.pop(cid, None)
        if job is not None:
            self._send(m.Cancel(cid))
            f = self._fn_of.get(job.fid)
            if f is not None:
                self._release_function(f)

    def _send(self, msg: Any, payload: bytes = b"") -> None:
        """Queue a message; while reconnecting, messages are dropped (the resubmission
        after reconnecting carries everything that matters). Pending acknowledgements go
        first, in the same frame."""
        try:
            if self._acks and type(msg) is not m.Ack:
                with handling():
                    self.link.send(m.Ack(self._take_acks()))
                    self.link.send(msg, payload)
            else:
                self.link.send(msg, payload)
        except LinkClosed:
            pass

    def _take_acks(self) -> list[int]:
        acks, self._acks = self._acks, []
        return acks

    # -- receiving -----------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver results; reconnect when the link is lost (within the grace); fail what
        is pending when giving up."""
        while True:
            try:
                while True:
                    acks: list[int] = []
                    if self._acks:
                        # acknowledgements ride on the next message this session sends,
                        # or go alone after ACK_DELAY without one
                        with trio.move_on_after(ACK_DELAY) as idle:
                            batch = await self.link.receive()
                        if idle.cancelled_caught:
                            self._send(m.Ack(self._take_acks()))
                            continue
                    else:
                        batch = await self.link.receive()
                    with handling():   # what this sends goes out at the end, one frame
                        for h, data in batch:
                            t = type(h)
                            if t is m.Result:
                                acks.append(h.cid)
                                self._on_result(h, data, acks)
                            elif t is m.Started:
                                self._on_started(h)
                            elif t is m.Output:
                                self._on_output(h, data)
                        self._acks += acks
                    del batch
            except LinkClosed as e:
                if self._closed is not None or self._leaving:
                    self._gone.set()
                    return
                reason = f"connection to the executor lost: {e}"
                if self.connect is None or self.reconnect_grace <= 0:
                    self.close(reason)
                    return
                if not await self._reconnect(reason):
                    return

    def _on_started(self, h: m.Started) -> None:
        job = self._jobs.get(h.cid)
        if job is not None:
            job.worker = h.worker
            if job.on_start is not None:
                job.on_start(h.worker)

    def _on_output(self, h: m.Output, data: bytes) -> None:
        job = self._jobs.get(h.cid)
        sink = (job.on_output if job is not None else None) or self.default_output
        if sink is not None:
            sink(h.stream, data, h.dropped)

    def _on_result(self, h: m.Result, data: bytes, acks: list[int]) -> None:
        job = self._jobs.pop(h.cid, None)
        if job is None:
            return  # cancelled by us, or a duplicate: nobody waits for it
        end = End(h.end) if h.end <= _LAST_END else End.CRASHED
        if end == End.OK:
            self._release(job)
            try:
                value = pl.loads(data)
            except Exception as e:  # noqa: BLE001
                job.on_end(False, errors.SerializationError(
                    f"{job.what}: its result cannot be unpickled here: {e!r}"))
                return
            job.on_end(True, value)
            return
        exc = decode_error(end, h.message, data, job.what)
        if (end == End.RAISED and self.temporary_err and isinstance(exc, self.temporary_err)
                and job.attempts < self.temporary_attempts):
            log.warning("%s failed with %r (temporary error); retrying (attempt %d of %d)",
                        job.what, exc, job.attempts + 1, self.temporary_attempts)
            job.attempts += 1
            job.worker = None
            self._jobs[h.cid] = job          # same id: cancelling still reaches it
            self._send(m.Ack([h.cid]))       # the executor must see the ack first
            acks.remove(h.cid)
            self._send(m.Submit(h.cid, job.request_wire, job.fid, self.worker_retries,
                                job.name), job.payload)
            return
        self._release(job)
        job.on_end(False, exc)

    def _release(self, job: _Job) -> None:
        f = self._fn_of.get(job.fid)
        if f is not None:
            self._release_function(f)

    # -- reconnecting --------------------------------------------------------------------
    async def _reconnect(self, reason: str) -> bool:
        """Redial until connected (True) or the grace is over (False, jobs failed)."""
        assert self.connect is not None
        self.connected = trio.Event()
        log.warning("%s; reconnecting (for up to %.0fs)", reason, self.reconnect_grace)
        delay = config.BACKOFF_FIRST
        last: BaseException | None = None
        with trio.move_on_after(self.reconnect_grace):
            while True:
                try:
                    link = await self.connect(self.id, True)
                except (OSError, errors.GrainError, trio.TooSlowError,
                        trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    if isinstance(e, errors.AuthenticationError):
                        self.close(f"{reason}; reconnecting was refused: {e}")
                        return False
                    last = e
                    await trio.sleep(delay)
                    delay = min(delay * 2, config.BACKOFF_MAX)
                    continue
                self._resume(link)
                log.warning("reconnected to the executor; %d jobs resumed", len(self._jobs))
                return True
        self.close(f"{reason}; no executor within {self.reconnect_grace:g}s"
                   + (f" (last attempt: {last})" if last else ""))
        return False

    def _resume(self, link: Link) -> None:
        """Tell a (possibly new) executor everything this session still waits for."""
        self.link = link
        self.reconnects += 1
        if self.bundle is not None:
            self._send(m.ProjectBundle(self.bundle[0]), self.bundle[1])
        for f in self._fn_of.values():
            self._send(m.DefineFunction(f.fid), f.data)
        for cid in sorted(self._jobs):
            job = self._jobs[cid]
            self._send(m.Submit(cid, job.request_wire, job.fid, self.worker_retries,
                                job.name, job.worker), job.payload)
        self._send(m.ResumeDone())
        self.connected.set()

    def close(self, reason: str = "session closed") -> None:
        """Fail every pending job with ``ExecutorLost`` and refuse new ones."""
        if self._closed is None:
            self._closed = reason
        pending, self._jobs = self._jobs, {}
        for job in pending.values():
            job.on_end(False, errors.ExecutorLost(f"{job.what}: {reason}"))
        self.connected.set()
        self.link.close(reason)

    async def goodbye(self, wait: float = 2.0) -> None:
        """The program is done: tell the executor, so that it ends the session at once
        instead of keeping it for the reconnect grace, and wait (at most ``wait`` seconds,
        even when cancelled) for the executor to close the link: then the goodbye has
        arrived and not been lost with this process."""
        self.say_goodbye()
        with trio.CancelScope(shield=True), trio.move_on_after(wait):
            await self._gone.wait()

    def say_goodbye(self) -> None:
        """Send the goodbye without waiting for it to arrive (see ``goodbye``)."""
        self._leaving = True
        self._send(m.Bye("the program finished"))


async def run_local(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a ``ZERO`` job in the client itself (async functions awaited, plain called)."""
    JOB_VARS["res"].set(ZERO)
    value = fn(*args, **kwargs)
    if hasattr(value, "__await__"):
        value = await value
    return value
