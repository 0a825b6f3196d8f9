"""Wait groups and ``exec1``: structured concurrency whose children run on the cluster.

A wait group is a trio nursery: ``submit`` adds a job (run on a worker, or in the client
for ``ZERO``), ``start_subtask`` adds a child task in the client, and leaving the block
waits for all of them; ``wg.results`` then holds their values in submission order. The
first failure cancels the rest (queued jobs are dropped, running ones killed on their
workers) and is raised, like a nursery. A lone exception is raised as itself (as the
original grain did), several as an ``ExceptionGroup``.
"""

from __future__ import annotations

from contextvars import ContextVar
from functools import partial
from typing import Any

import trio

from ..resource import Resource
from .session import Session, run_local

_RUNTIME: ContextVar[Session] = ContextVar("grain_session")
_PENDING = object()


def current_session() -> Session:
    """The session of the ``run_combine`` this task runs under."""
    try:
        return _RUNTIME.get()
    except LookupError:
        raise RuntimeError("Grain's open_waitgroup/exec1 are only valid inside "
                           "grain.run_combine(...)") from None


def _collapse(eg: BaseExceptionGroup) -> BaseException:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for x in e.exceptions:
                walk(x)
        else:
            leaves.append(e)
    walk(eg)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real:
        return leaves[0]
    rest = eg.split(trio.Cancelled)[1]
    return rest if rest is not None else eg


class WaitGroup:
    """Returned by ``open_waitgroup()``; use as ``async with open_waitgroup() as wg:``."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.results: list[Any] = []
        self._slots: list[Any] = []
        self._jobs: dict[int, int] = {}
        self._outstanding = 0
        self._wake = trio.Event()
        self._errors: list[BaseException] = []
        self._closing = False
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> WaitGroup:
        if self._nursery is not None or self._closing:
            raise RuntimeError("a wait group can be entered once: open a new one instead")
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        self._nursery.start_soon(self._watch_jobs)
        return self

    def _new_slot(self) -> int:
        if self._nursery is None or self._closing:
            raise RuntimeError("submit/start_subtask only inside `async with open_waitgroup()`")
        self._slots.append(_PENDING)
        return len(self._slots) - 1

    def submit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` as a job needing ``res`` (``ZERO``: in the client)."""
        slot = self._new_slot()
        if not res.kinds():
            self._nursery.start_soon(self._run_local, slot, fn, args, kwargs)
            return
        try:
            cid = self._session.submit(res, fn, args, kwargs, partial(self._job_ended, slot))
        except BaseException:
            self._slots.pop()
            raise
        self._jobs[slot] = cid
        self._outstanding += 1

    async def asubmit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """``submit`` for code that awaits it (the original's async form)."""
        self.submit(res, fn, *args, **kwargs)
        await trio.lowlevel.checkpoint()

    def start_subtask(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run the async ``fn(*args, **kwargs)`` in the client as a child of this group."""
        slot = self._new_slot()
        self._nursery.start_soon(self._run_subtask, slot, fn, args, kwargs)

    def load_cache_or_submit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """The original's cache-aware submit (see ``load_cache_or_exec1``)."""
        from .api import load_cache_or_exec1
        self.start_subtask(load_cache_or_exec1, res, fn, *args, **kwargs)

    async def _run_local(self, slot: int, fn: Any, args: tuple, kwargs: dict) -> None:
        self._slots[slot] = await run_local(fn, args, kwargs)

    async def _run_subtask(self, slot: int, fn: Any, args: tuple, kwargs: dict) -> None:
        self._slots[slot] = await fn(*args, **kwargs)

    def _job_ended(self, slot: int, ok: bool, value: Any) -> None:
        self._jobs.pop(slot, None)
        self._outstanding -= 1
        if ok:
            self._slots[slot] = value
            if self._closing and not self._outstanding:
                self._wake.set()
        else:
            self._errors.append(value)
            self._wake.set()

    async def _watch_jobs(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._errors:
                raise self._errors[0]
            if self._closing and not self._outstanding:
                return

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        self._closing = True
        self._wake.set()
        try:
            return await self._cm.__aexit__(etype, exc, tb)
        except BaseExceptionGroup as eg:
            collapsed = _collapse(eg)
            if collapsed is exc:
                return False
            raise collapsed from collapsed.__cause__
        finally:
            for cid in self._jobs.values():
                self._session.cancel(cid)
            self._jobs.clear()
            self.results = self._slots


def open_waitgroup() -> WaitGroup:
    """A new wait group of the running ``run_combine``."""
    return WaitGroup(current_session())


async def exec1(res: Resource, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one job and return its value (raise its error). Cancelling this call
    cancels the job."""
    session = current_session()
    if not res.kinds():
        return await run_local(fn, args, kwargs)
    done = trio.Event()
    box: list[tuple[bool, Any]] = []

    def on_end(ok: bool, value: Any) -> None:
        box.append((ok, value))
        done.set()
    cid = session.submit(res, fn, args, kwargs, on_end)
    try:
        await done.wait()
    except BaseException:
        session.cancel(cid)
        raise
    ok, value = box[0]
    if ok:
        return value
    raise value
