"""Wait groups and ``exec1``: structured concurrency whose children run on the cluster.

A wait group is a trio nursery: ``submit`` adds a job (run on a worker, or in the client
for ``ZERO``), ``start_subtask`` adds a child task in the client, ``map`` adds a job per
item of an iterable (submitted a window at a time), and leaving the block waits for all of
them; ``wg.results`` then holds their values in submission order. ``as_completed()``
yields ``(index, value)`` as children end.

The first failure cancels the rest (queued jobs are dropped, running ones killed on their
workers) and is raised, like a nursery; a lone exception is raised as itself (as the
original grain did), several as an ``ExceptionGroup``. With
``open_waitgroup(return_exceptions=True)`` a failing child does not cancel its siblings:
its exception takes its place in ``wg.results``. Whatever ended the block, ``wg.finished``
maps the index of every child that did end to its value, and an exception leaving the
block carries the same mapping as ``exc.grain_finished``.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from inspect import signature
from typing import Any

import trio

from .. import config
from ..resource import ZERO, Resource
from . import display
from .display import STREAM_NAMES, KeptOutput, current_view
from .progress import GroupProgress
from .session import Session, run_local

_RUNTIME: ContextVar[Session] = ContextVar("grain_session")
_GROUP: ContextVar[WaitGroup | None] = ContextVar("grain_waitgroup", default=None)
_PENDING: Any = object()    # a slot whose child has not ended; never handed to users

MAP_WINDOW = config.MAP_WINDOW
"""Jobs of a wait group a ``map`` keeps submitted but not ended, by default."""
_FEED_BATCH = 64            # submissions between checkpoints: the first jobs go out early

# A queued submission: (request, or None for a subtask; function; args; kwargs).
_Item = tuple[Resource | None, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def current_session() -> Session:
    """The session of the ``run_combine`` (or ``combine``) this task runs under."""
    try:
        return _RUNTIME.get()
    except LookupError:
        raise RuntimeError("Grain's open_waitgroup/exec1 are only valid inside "
                           "grain.run_combine(...) or `await grain.combine(...)`") from None


def collapse(eg: BaseExceptionGroup) -> BaseException:
    """The exception a program should see for a group of them: the only one that is not
    a ``trio.Cancelled`` when there is one, else the group without the cancellations."""
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


_collapse = collapse


def _name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class _Child:
    """One job of a wait group, as the session calls back about it (the object itself is
    the job's ``on_end``: one bound method fewer per queued job)."""

    __slots__ = ("wg", "slot", "fn_name", "worker", "cid")

    def __init__(self, wg: WaitGroup, slot: int, fn_name: str) -> None:
        self.wg = wg
        self.slot = slot
        self.fn_name = fn_name
        self.worker: str | None = None
        self.cid = 0

    def __call__(self, ok: bool, value: Any) -> None:
        self.wg._job_ended(self, ok, value)

    def start(self, worker: str) -> None:
        # Started comes again after a retry or a reconnect: count the job running once.
        first = self.worker is None
        self.worker = worker
        if first and self.wg._progress is not None:
            self.wg._progress.started()

    def output(self, stream: int, data: bytes, dropped: int) -> None:
        self.wg._job_output(self, stream, data, dropped)


class _Completed:
    """``async for i, value in wg.as_completed()``: children in the order they end."""

    def __init__(self, wg: WaitGroup) -> None:
        self._wg = wg
        self._next = 0

    def __aiter__(self) -> _Completed:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        wg = self._wg
        while self._next >= len(wg._order):
            if wg._all_ended():
                raise StopAsyncIteration
            if wg._changed is None:
                wg._changed = trio.Event()
            await wg._changed.wait()
        slot = wg._order[self._next]
        self._next += 1
        await trio.lowlevel.checkpoint()
        return slot, wg._slots[slot]


class WaitGroup:
    """Returned by ``open_waitgroup()``; use as ``async with open_waitgroup() as wg:``.

    Add children with ``submit``, ``start_subtask`` and ``map``; read ``results`` (after
    the block), ``finished`` and ``output(i)`` (any time), ``as_completed()`` (as they
    end); stop early with ``cancel()``. docs/api.md has the whole reference."""

    def __init__(self, session: Session, *, return_exceptions: bool = False,
                 name: str | None = None) -> None:
        self._session = session
        self.return_exceptions = return_exceptions
        self.name = name
        self.results: list[Any] = []
        """The children's results in submission order, once the block has ended with every
        child ended (``[]`` before, and after a failure or cancellation: see ``finished``)."""
        self._slots: list[Any] = []
        self._order = array("q")         # slots with a result, in the order they ended
        self._ended = 0                  # children ended, with a result or not
        self._children: dict[int, _Child] = {}
        self._outstanding = 0            # jobs on the cluster not ended yet
        self._feeds: deque[tuple[Iterator[_Item], int]] = deque()
        self._wake = trio.Event()
        self._changed: trio.Event | None = None    # as_completed waits on it
        self._freed: trio.Event | None = None      # a map waits on it for room
        self._errors: list[BaseException] = []
        self._kept: dict[int, KeptOutput] = {}     # by slot, oldest first
        self._kept_bytes = 0
        self._let_go: set[int] = set()             # slots whose kept output was dropped
        self._closing = False
        self._over = False               # the block has ended
        self._nursery: trio.Nursery | None = None
        self._view = current_view()
        self._progress: GroupProgress | None = None

    # -- the block -----------------------------------------------------------------------
    async def __aenter__(self) -> WaitGroup:
        if self._nursery is not None or self._closing:
            raise RuntimeError("a wait group can be entered once: open a new one instead")
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        self._nursery.start_soon(self._watch_jobs)
        parent = _GROUP.get()          # the group whose block (or child) opens this one
        if self._view.board is not None:
            self._progress = self._view.board.group(
                self.name or "", parent._progress if parent is not None else None)
        self._group_token = _GROUP.set(self)
        return self

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        _GROUP.reset(self._group_token)
        self._closing = True
        self._wake.set()
        try:
            suppressed = bool(await self._cm.__aexit__(etype, exc, tb))
        except BaseExceptionGroup as eg:
            self._finish()
            collapsed = collapse(eg)
            self._mark(collapsed)
            if collapsed is exc:
                return False
            raise collapsed from collapsed.__cause__
        except BaseException as e:
            self._finish()
            self._mark(e)
            raise
        self._finish()
        if exc is not None and not suppressed:
            self._mark(exc)
        return suppressed

    def _finish(self) -> None:
        # results only when every child ended and nothing more was to come: not after
        # ``cancel()``, even when each job submitted so far had ended (a map's remaining
        # items were dropped, not run)
        assert self._nursery is not None   # _finish ends a block that was entered
        complete = not self._feeds and not self._nursery.cancel_scope.cancel_called
        for child in self._children.values():
            self._session.cancel(child.cid)
        self._children.clear()
        self._outstanding = 0
        self._feeds.clear()
        self._over = True
        if complete and len(self._order) == len(self._slots):
            self.results = self._slots
        if self._progress is not None:
            self._progress.close()
        self._notify()

    def _mark(self, exc: BaseException) -> None:
        """Let the exception leaving the block carry what did finish (the group nearest
        to where it arose sets it)."""
        if isinstance(exc, trio.Cancelled) or hasattr(exc, "grain_finished"):
            return
        try:
            # an attribute of our own on any exception type: what the group finished
            exc.grain_finished = self.finished  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass

    def cancel(self) -> None:
        """Stop the group: queued jobs are dropped, running ones killed; the block ends
        without an error, ``wg.finished`` holding what had ended."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- adding children -----------------------------------------------------------------
    def _check_open(self) -> trio.Nursery:
        if self._nursery is None or self._closing:
            raise RuntimeError("submit/start_subtask/map only inside "
                               "`async with open_waitgroup() as wg:`")
        return self._nursery

    def submit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` as a job needing ``res`` (``ZERO``: in the client).
        Raises ``SerializationError`` at once when ``fn`` or an argument cannot be
        pickled (while a ``map`` is still submitting, the call waits its turn instead)."""
        self._check_open()
        if self._feeds:
            self._feeds.append((iter([(res, fn, args, kwargs)]), MAP_WINDOW))
            return
        self._submit(res, fn, args, kwargs)

    async def asubmit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """``submit`` for code that awaits it (the original's async form)."""
        self.submit(res, fn, *args, **kwargs)
        await trio.lowlevel.checkpoint()

    def start_subtask(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run the async ``fn(*args, **kwargs)`` in the client as a child of this group."""
        self._check_open()
        if self._feeds:
            self._feeds.append((iter([(None, fn, args, kwargs)]), MAP_WINDOW))
            return
        self._start_subtask(fn, args, kwargs)

    def map(self, res: Resource, fn: Any, *iterables: Iterable[Any],
            window: int = MAP_WINDOW) -> None:
        """A job ``fn(x)`` per item of ``iterable`` (``fn(x, y)`` for two iterables, as
        the builtin ``map``), each needing ``res``, taking the next places in
        ``wg.results``. Returns at once: items are read and submitted in the background,
        keeping at most ``window`` of this group's children unfinished, so a million items
        are neither pickled nor held before the first jobs run. Calls of ``submit``,
        ``start_subtask`` and ``map`` made while it is still submitting come after it."""
        nursery = self._check_open()
        if not iterables:
            raise TypeError("wg.map(res, fn, iterable) needs at least one iterable")
        if window < 1:
            raise ValueError(f"window={window}: it must be at least 1")
        items: Iterator[_Item] = ((res, fn, args, {}) for args in zip(*iterables, strict=False))
        self._feeds.append((items, window))
        if len(self._feeds) == 1:
            nursery.start_soon(self._feed)

    def load_cache_or_submit(self, res: Resource, fn: Any, *args: Any, **kwargs: Any) -> None:
        """The original's cache-aware submit (see ``load_cache_or_exec1``)."""
        self.start_subtask(load_cache_or_exec1, res, fn, *args, **kwargs)

    def _new_slot(self, fn: Any) -> int:
        self._slots.append(_PENDING)
        if self._progress is not None:
            self._progress.added()
            if not self._progress.name:
                self._progress.name = _name_of(fn)
        return len(self._slots) - 1

    def _submit(self, res: Resource, fn: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> None:
        nursery = self._nursery
        assert nursery is not None
        if not res.kinds():
            slot = self._new_slot(fn)
            nursery.start_soon(self._run_child, slot, run_local, (fn, args, kwargs), {})
            return
        child = _Child(self, len(self._slots), _name_of(fn))
        child.cid = self._session.submit(res, fn, args, kwargs, child,
                                         on_start=child.start, on_output=child.output)
        self._new_slot(fn)
        self._children[child.slot] = child
        self._outstanding += 1

    def _start_subtask(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self._nursery is not None
        slot = self._new_slot(fn)
        self._nursery.start_soon(self._run_child, slot, fn, args, kwargs)

    async def _feed(self) -> None:
        """Submit the queued items in order, a window at a time."""
        n = 0
        while self._feeds:
            items, window = self._feeds[0]
            for res, fn, args, kwargs in items:
                while len(self._slots) - self._ended >= window:
                    self._freed = trio.Event()
                    await self._freed.wait()
                if res is None:
                    self._start_subtask(fn, args, kwargs)
                else:
                    self._submit(res, fn, args, kwargs)
                n += 1
                if n % _FEED_BATCH == 0:
                    await trio.lowlevel.checkpoint()
            self._feeds.popleft()
        self._wake.set()
        self._notify()

    # -- children ending -----------------------------------------------------------------
    async def _run_child(self, slot: int, fn: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> None:
        """A subtask (or a ``ZERO`` job, through ``run_local``) in the client."""
        if self._progress is not None:
            self._progress.started()
        try:
            value = await fn(*args, **kwargs)
        except Exception as e:
            if not self.return_exceptions:
                self._ended += 1
                if self._progress is not None:
                    self._progress.ended(False, True)
                raise
            self._complete(slot, e, False, True)
            return
        self._complete(slot, value, True, True)

    def _complete(self, slot: int, value: Any, ok: bool, was_running: bool) -> None:
        self._slots[slot] = value
        self._order.append(slot)
        self._ended += 1
        if self._progress is not None:
            self._progress.ended(ok, was_running)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def _job_ended(self, child: _Child, ok: bool, value: Any) -> None:
        if self._children.pop(child.slot, None) is None:
            return
        self._outstanding -= 1
        if ok or self.return_exceptions:
            self._complete(child.slot, value, ok, child.worker is not None)
            if self._closing and not self._outstanding:
                self._wake.set()
        else:
            self._ended += 1
            if self._progress is not None:
                self._progress.ended(False, child.worker is not None)
            self._errors.append(value)
            self._wake.set()
            self._notify()

    def _job_output(self, child: _Child, stream: int, data: bytes, dropped: int) -> None:
        kept = self._kept.get(child.slot)
        if kept is None:
            kept = self._kept[child.slot] = KeptOutput()
        before = kept.size
        kept.add(stream, data, dropped)
        self._kept_bytes += kept.size - before
        while self._kept_bytes > display.KEEP_PER_GROUP and len(self._kept) > 1:
            slot, old = next(iter(self._kept.items()))   # the job that printed first
            del self._kept[slot]
            self._kept_bytes -= old.size
            self._let_go.add(slot)
        self._view.emit(f"{self.name or child.fn_name}#{child.slot}", child.worker or "?",
                        stream, data, dropped)

    async def _watch_jobs(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._errors:
                raise self._errors[0]
            if self._closing and not self._outstanding and not self._feeds:
                return

    def _all_ended(self) -> bool:
        return self._over or (self._ended == len(self._slots) and not self._feeds)

    # -- reading -------------------------------------------------------------------------
    def as_completed(self) -> _Completed:
        """``async for i, value in wg.as_completed():`` each child's index (its place in
        ``wg.results``) and value as it ends, earliest first; children that ended before
        the loop began come first. The loop ends once every child submitted so far has
        ended and no ``map`` is still submitting. With ``return_exceptions=True`` a failed
        child yields its exception; otherwise a failure ends the block with that error."""
        return _Completed(self)

    @property
    def finished(self) -> dict[int, Any]:
        """``{index: value}`` of every child that has ended with a result (with
        ``return_exceptions=True``, failed ones with their exception), by index. Readable
        at any time; after a failure, a cancellation, Ctrl-C or a lost connection it holds
        exactly what did finish."""
        slots = self._slots
        return {i: slots[i] for i in sorted(self._order)}

    def output(self, index: int, stream: str | None = None) -> str:
        """What child ``index`` (a job) printed, as text: its last
        ``config.OUTPUT_KEEP_PER_JOB`` bytes, ``stream="stdout"`` or ``"stderr"`` alone,
        ``""`` if it printed nothing (a subtask's or ``ZERO`` job's prints go straight to
        the program's own output). A group keeps ``display.KEEP_PER_GROUP`` bytes in all:
        past that, the jobs that printed first lose theirs (the text then says so)."""
        if not -len(self._slots) <= index < len(self._slots):
            raise IndexError(f"wait group has {len(self._slots)} children, no index {index}")
        index %= len(self._slots)
        code = None
        if stream is not None:
            codes = {v: k for k, v in STREAM_NAMES.items()}
            if stream not in codes:
                raise ValueError(f"stream={stream!r}: expected 'stdout', 'stderr' or None")
            code = codes[stream]
        kept = self._kept.get(index)
        head = display.LET_GO if index in self._let_go else ""
        return head + (kept.text(code) if kept is not None else "")

    def __len__(self) -> int:
        """Children added so far."""
        return len(self._slots)


def open_waitgroup(*, return_exceptions: bool = False, name: str | None = None
                   ) -> WaitGroup:
    """A new wait group of the running ``run_combine``. ``return_exceptions=True``: a
    failing child's exception takes its place in ``wg.results`` instead of cancelling its
    siblings. ``name`` labels its progress row and its jobs' output lines."""
    return WaitGroup(current_session(), return_exceptions=return_exceptions, name=name)


async def exec1(res: Resource, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one job and return its value (raise its error). Cancelling this call
    cancels the job, whatever attempt it is on."""
    session = current_session()
    if not res.kinds():
        return await run_local(fn, args, kwargs)
    done = trio.Event()
    box: list[tuple[bool, Any]] = []
    view = current_view()
    label = _name_of(fn)
    where = ["?"]

    def on_end(ok: bool, value: Any) -> None:
        box.append((ok, value))
        done.set()

    def on_start(worker: str) -> None:
        where[0] = worker

    def on_output(stream: int, data: bytes, dropped: int) -> None:
        view.emit(label, where[0], stream, data, dropped)
    cid = session.submit(res, fn, args, kwargs, on_end, on_start=on_start,
                         on_output=on_output)
    try:
        await done.wait()
    except BaseException:
        session.cancel(cid)
        raise
    ok, value = box[0]
    if ok:
        return value
    raise value


async def load_cache_or_exec1(res: Resource, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The original's cache-aware ``exec1``: run ``fn.cache_fn`` (with the subset of
    arguments its signature names) first; return its value when it reports ``(True,
    value)``, else run ``fn`` as a job. ``fn.cache_res`` is the cache function's request."""
    sig_c = list(signature(fn.cache_fn).parameters)
    kwargs_c = {}
    while sig_c and sig_c[-1] in kwargs:
        k = sig_c.pop()
        kwargs_c[k] = kwargs[k]
    sig = list(signature(fn).parameters)
    args_c, i = [], 0
    for k in sig_c:
        while i < len(args) and sig[i] != k:
            i += 1
        if i == len(args):
            raise ValueError(f"Cannot find a positional arg for parameter {k}")
        args_c.append(args[i])
    if fn.cache_res is ZERO or not fn.cache_res.kinds():
        try:
            ok, r = await fn.cache_fn(*args_c, **kwargs_c)
        except Exception:  # noqa: BLE001 - a failing cache means "not cached"
            ok = False
    else:
        ok, r = await exec1(fn.cache_res, fn.cache_fn, *args_c, **kwargs_c)
    if ok:
        return r
    return await exec1(res, fn, *args, **kwargs)
