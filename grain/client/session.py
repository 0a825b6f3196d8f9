"""A client session: one link to an executor, the jobs in flight on it, their endings.

``submit`` pickles now (so an unpicklable function or argument fails at the call, naming
the object) and queues the message; a function goes over the link once, then by id.
Each job's ``on_end(ok, value_or_exception)`` is called exactly once: with its value, its
exception (remote traceback attached), or an error saying why it has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..net.link import Link, LinkClosed
from ..protocol import payload as pl
from ..protocol.messages import End, Msg
from ..resource import ZERO, Resource, to_wire
from .gvar import _VARS

log = logging.getLogger("grain.client")

OnEnd = Callable[[bool, Any], None]
DEFAULT_TEMPORARY_ATTEMPTS = 3

_END_ERRORS: dict[End, type[errors.GrainError]] = {
    End.CRASHED: errors.RunnerCrashed,
    End.TIMEOUT: errors.JobTimeout,
    End.MEMORY: errors.MemoryLimitExceeded,
    End.CANCELLED: errors.JobCancelled,
    End.WORKER_LOST: errors.WorkerLost,
    End.UNSCHEDULABLE: errors.Unschedulable,
    End.SERIALIZATION: errors.SerializationError,
    End.EXECUTOR_LOST: errors.ExecutorLost,
}


@dataclass(slots=True)
class _InFlight:
    on_end: OnEnd
    request_wire: Any
    fn_id: int
    payload: bytes
    what: str
    attempts: int = 1


def decode_error(end: End, message: str, data: bytes, what: str) -> BaseException:
    """The exception a client sees for a job that ended without a value."""
    if end == End.RAISED:
        try:
            exc, tb = pl.loads(data)
        except Exception as e:  # noqa: BLE001
            return errors.RemoteError(f"{what} raised {message} (and the exception could not "
                                      f"be unpickled here: {e!r})")
        exc.__cause__ = errors.RemoteTraceback(tb)
        return exc
    cls = _END_ERRORS.get(end, errors.JobError)
    return cls(f"{what}: {message}" if message else what)


class Session:
    """Jobs submitted over one executor link."""

    def __init__(self, link: Link, *, temporary_err: tuple[type[BaseException], ...] = (),
                 temporary_attempts: int = DEFAULT_TEMPORARY_ATTEMPTS,
                 worker_retries: int | None = None) -> None:
        self.link = link
        self.temporary_err = tuple(temporary_err)
        self.temporary_attempts = temporary_attempts
        self.worker_retries = worker_retries
        self._next = 0
        self._fn_ids: dict[int, tuple[int, Any]] = {}
        self._inflight: dict[int, _InFlight] = {}
        self._closed: str | None = None

    def __len__(self) -> int:
        return len(self._inflight)

    def _fn_id(self, fn: Any) -> int:
        entry = self._fn_ids.get(id(fn))
        if entry is not None and entry[1] is fn:
            return entry[0]
        data = pl.dumps(fn, f"the job function {getattr(fn, '__qualname__', fn)!r}")
        self._next += 1
        fid = self._next
        self._fn_ids[id(fn)] = (fid, fn)  # holds fn so its id() is not reused
        self.link.send([Msg.DEFINE_FN, fid], data)
        return fid

    def submit(self, request: Resource, fn: Any, args: tuple, kwargs: dict,
               on_end: OnEnd) -> int:
        """Queue a job; returns its id. Raises ``SerializationError`` at once when the
        function or an argument cannot be pickled."""
        if self._closed is not None:
            raise errors.ExecutorLost(f"not connected to the executor: {self._closed}")
        what = f"job {getattr(fn, '__qualname__', repr(fn))}"
        data = pl.dumps((args, kwargs), f"an argument of {what}")
        fid = self._fn_id(fn)
        wire = to_wire(request)
        self._next += 1
        cid = self._next
        self._inflight[cid] = _InFlight(on_end, wire, fid, data, what)
        self.link.send([Msg.SUBMIT, cid, wire, fid, self.worker_retries], data)
        return cid

    def cancel(self, cid: int) -> None:
        """Stop caring about a job: drop it from the queue or kill it where it runs."""
        if self._inflight.pop(cid, None) is not None and self._closed is None:
            try:
                self.link.send([Msg.CANCEL, cid])
            except LinkClosed:
                pass

    async def receive_loop(self) -> None:
        """Deliver results until the link closes; then fail whatever is still pending."""
        try:
            while True:
                for h, data in await self.link.receive():
                    if h[0] == Msg.RESULT:
                        self._on_result(h, data)
        except LinkClosed as e:
            self.close(f"connection to the executor lost: {e}")

    def _on_result(self, h: Any, data: bytes) -> None:
        cid, end = h[1], End(h[2])
        job = self._inflight.pop(cid, None)
        if job is None:
            return  # cancelled by us: nobody waits for it
        if end == End.OK:
            try:
                value = pl.loads(data)
            except Exception as e:  # noqa: BLE001
                job.on_end(False, errors.SerializationError(
                    f"{job.what}: its result cannot be unpickled here: {e!r}"))
                return
            job.on_end(True, value)
            return
        exc = decode_error(end, h[5] if len(h) > 5 else "", data, job.what)
        if (end == End.RAISED and self.temporary_err and isinstance(exc, self.temporary_err)
                and job.attempts < self.temporary_attempts):
            log.warning("%s failed with %r (temporary error); retrying (attempt %d of %d)",
                        job.what, exc, job.attempts + 1, self.temporary_attempts)
            self._next += 1
            job.attempts += 1
            self._inflight[self._next] = job
            self.link.send([Msg.SUBMIT, self._next, job.request_wire, job.fn_id,
                            self.worker_retries], job.payload)
            return
        job.on_end(False, exc)

    def close(self, reason: str = "session closed") -> None:
        """Fail every pending job with ``ExecutorLost`` and refuse new ones."""
        if self._closed is None:
            self._closed = reason
        pending, self._inflight = self._inflight, {}
        for job in pending.values():
            job.on_end(False, errors.ExecutorLost(f"{job.what}: {reason}"))
        self.link.close(reason)


async def run_local(fn: Any, args: tuple, kwargs: dict) -> Any:
    """Run a ``ZERO`` job in the client itself (async functions awaited, plain called)."""
    _VARS["res"].set(ZERO)
    value = fn(*args, **kwargs)
    if hasattr(value, "__await__"):
        value = await value
    return value

