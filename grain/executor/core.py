"""The executor's heart: client sessions and workers feed the ledger and placement.

Each connected client and worker is served by one task reading batches from its ``Link``.
Handlers only change in-memory state and queue outgoing messages (``Link.send`` never
blocks), so no locks are needed; placement runs once per received batch, not per message.
The executor never unpickles a job's function, arguments or result: they are opaque bytes.
Every field a peer sends was type-checked when its frame was decoded (``messages``);
values with meaning (resource requests, ids that must exist) are checked here, and a bad
one fails that job (``End.INVALID``) or ends that peer's connection, never the process.

Nothing is kept on disk, and nothing needs to be: the state can be rebuilt from the peers
(see ``recovery``). Client sessions outlive their connections for the client's grace;
workers that come back report the jobs they run.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .. import config
from ..auth import UserPolicy
from ..net.link import Link, LinkClosed, handling
from ..protocol import messages as m
from ..protocol.frames import wire_key
from ..protocol.messages import End
from ..resource import (
    Resource,
    request_from_wire,
)
from .clients import ClientsMixin
from .grant import Grant
from .host import send as _send
from .jobtable import JobTable
from .ledger import JobRecord, JobState, Ledger
from .loopwatch import LoopWatch, Polls
from .placement import Placement, shape_of
from .recovery import RecoveryMixin
from .sessions import ClientSession, HeldResult, WorkerSession

log = logging.getLogger("grain.executor")


def limits_for(request: Resource) -> tuple[float | None, int | None]:
    """(time limit in s or None, memory limit in bytes or None) for a request."""
    kinds = request.kinds()
    wt = kinds.get("WTime")
    mem = kinds.get("Memory")
    return (float(wt.T) if wt is not None else None,
            int(mem.m * 1024 ** 3) if mem is not None and mem.m > 0 else None)


_KEY_MAX = 256
"""Requests whose msgpack form is longer are not remembered (``_request_for``)."""


@dataclass(slots=True)
class _Bulk:
    """Jobs to end as ``end`` (``Executor.end_later``): the executor's ids, or
    ``session``'s client ids, in chunks (``ids`` the current one, from ``pos`` on).
    ``ended_on``: the workers told that the session ended (its running jobs end there)."""

    chunks: Iterator[Sequence[int]]
    end: End
    message: str
    session: ClientSession | None = None
    ended_on: set[int] | None = None
    ids: Sequence[int] = ()
    pos: int = 0


class Executor(ClientsMixin, RecoveryMixin):
    """Routes jobs from clients to workers. Transport-agnostic: give it ``Link`` s."""

    def __init__(self, *, retries: int = config.RETRIES,
                 wait_for_workers: float = config.WAIT_FOR_WORKERS,
                 name: str = "executor", chain_short: float = config.CHAIN_SHORT_SECONDS,
                 chain_depth: int = config.CHAIN_DEPTH,
                 client_grace: float = config.CLIENT_GRACE,
                 worker_grace: float = config.WORKER_GRACE,
                 settle: float = config.RECOVERY_SETTLE,
                 policy: Callable[[str], UserPolicy] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retries = retries
        self.wait_for_workers = wait_for_workers
        self.client_grace = client_grace
        self.worker_grace = worker_grace
        self.settle = settle
        self.policy = policy or (lambda user: UserPolicy())
        self.clock = clock
        self.ledger = Ledger()
        self.placement = Placement(chain_depth=chain_depth if chain_short > 0 else 0)
        self.sessions: dict[int, ClientSession] = {}
        self.workers: dict[int, WorkerSession] = {}
        self._known_users: set[str] = set()
        self._pump_more = trio.Event()
        # placement's budget per stretch of the event loop without an I/O poll (see
        # ``_pump``): the stretch counted (``Polls``: None until ``run``), the seconds
        # that peers' messages and placement took in it
        self._polls: Polls | None = None
        self._stretch = -1
        self._handled = 0.0
        self._pump_spent = 0.0
        self.started_at = time.time()
        self.started_mono = clock()
        self.placement_seconds_sum = 0.0
        self.placement_count = 0
        self.loop_watch: LoopWatch | None = None   # set by ``grain executor`` (/metrics)
        self.worker_changed = trio.Event()
        self.chain_short = chain_short
        self.chained = 0
        self._fn_runtime: dict[tuple[int, int], list[float]] = {}   # (sess, fid) -> stats
        self._requests: dict[bytes, tuple[Resource, Any]] = {}
        self._fits: dict[Any, bool] = {}     # shape -> could some worker ever run it
        self._first_unfit: dict[Any, float] = {}
        self._ids = 0
        self.observers: list[Any] = []       # objects with on_start(rec) / on_end(rec, ..)
        self._bulk: deque[_Bulk] = deque()   # jobs being ended in steps (``end_later``)
        self._shed: deque[JobTable[Any]] = deque()   # tables being freed in steps
        self._last_internal_error = -1e9
        RecoveryMixin.__init__(self)

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    def _enqueue(self, rec: JobRecord, resumed: bool = False) -> None:
        """Queue a job (or, just after a restart, hold a resubmitted one back until its
        worker had a chance to report it running). A job of a session that has ended
        (it was running when its client left, and comes back: handed back by a draining
        worker, or its worker lost) ends here as cancelled: ``end_session`` ended the
        session's queued jobs already, and nobody would end this one (with no worker to
        start it, it would stay queued for ever)."""
        s = self.sessions.get(rec.sess)
        if s is not None and s.closing:
            self._end(rec, End.CANCELLED, "the client left")
            return
        if resumed and self.clock() < self.started_mono + self.settle:
            self.defer(rec)
            return
        self.placement.enqueue(rec.gid, rec.request, rec.shape, user=rec.user)

    def _unqueue(self, rec: JobRecord) -> None:
        """A queued job leaves the queue without starting."""
        self.placement.dequeue(rec.gid)

    def _request_for(self, req_wire: Any) -> tuple[Resource, Any]:
        """The checked request and its shape, shared by every job asking the same (requests
        are only read): saves the checking per job and most of a queued job's memory.
        Only small requests are remembered: a request may carry a list of 65,536 core ids
        (ignored: jobs ask for a count), and a cache keyed by such lists grew by half a
        megabyte per distinct list, for ever."""
        key = wire_key(req_wire)
        if len(key) > _KEY_MAX:
            request = request_from_wire(req_wire)
            return request, shape_of(request)
        hit = self._requests.get(key)
        if hit is None:
            request = request_from_wire(req_wire)
            hit = (request, shape_of(request))
            if len(self._requests) >= 10_000:
                self._requests.clear()   # bounded: a client sending endless shapes
            self._requests[key] = hit
        return hit

    def _could_ever_fit(self, request: Resource, shape: Any) -> bool:
        """Cached per shape until the workers change (not for WTime requests: workers'
        remaining lifetimes shrink)."""
        fits = self._fits.get(shape)
        if fits is None:
            fits = self.placement.could_ever_fit(request)
            if "WTime" not in request.kinds():
                if len(self._fits) > 10_000:
                    self._fits.clear()
                self._fits[shape] = fits
        return fits

    def _may_wait(self, request: Resource) -> bool:
        """Wait for capacity when allowed and some worker that could run it may come:
        none is registered yet, one is still registering, one that could was seen lately,
        or this executor started only a moment ago (after a restart it cannot know which
        workers are on their way back)."""
        if self.wait_for_workers <= 0:
            return False
        return (not self.placement.workers
                or any(not w.attached for w in self.workers.values())
                or self.clock() < self.started_mono + max(self.settle, self.worker_grace)
                or self.recently_seen_fit(request))

    def _unfit_message(self, request: Resource) -> str:
        if not self.workers:
            return (f"no worker is registered, so {request} cannot run: start workers "
                    f"(grain worker --executor ...) or let the executor wait for them")
        caps = "; ".join(f"{w.name}: {w.capacity}" for w in list(self.workers.values())[:5])
        return f"no registered worker could ever satisfy {request} (workers: {caps})"

    # -- workers ---------------------------------------------------------------------
    async def serve_worker(self, link: Link, info: dict[str, Any], capacity: Resource,
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one worker connection until it closes; then wait for it or re-run its
        jobs. It gets jobs only once its ``Attach`` (the jobs it runs) has arrived."""
        w = WorkerSession(self._new_id(), str(info.get("name") or link.peer)[:256], link,
                          info, capacity, connected_at=self.clock())
        self.workers[w.wid] = w
        log.info("worker %s connected with %s", w.name, capacity)
        task_status.started(w.wid)
        try:
            await self._serve_link(link, f"worker {w.name}",
                                   lambda h, p: self._on_worker_message(w, h, p),
                                   gone="lost", gone_level=logging.WARNING)
        finally:
            self.worker_gone(w)

    async def _serve_link(self, link: Link, who: str, on_message: Any, gone: str = "gone",
                          gone_level: int = logging.INFO) -> None:
        """Feed a peer's batches to ``on_message``, then place what can start, until the
        link closes. Anything a handler raises drops this peer, never the executor."""
        step = config.STEP_SECONDS
        clock = time.perf_counter
        try:
            while True:
                batch = await link.receive()
                # A batch may hold many thousands of messages (a socket read of tiny
                # submissions): serve it in steps of ``STEP_SECONDS``, the other peers
                # (and /healthz) in between.
                i, n = 0, len(batch)
                while i < n:
                    deadline = clock() + step
                    # what the step sends goes out at its end: one frame per peer,
                    # written from this task (no writer task woken; see ``handling``)
                    with handling():
                        while i < n:
                            header, payload = batch[i]
                            i += 1
                            on_message(header, payload)
                            if clock() > deadline:
                                break
                        self._stretch_work(clock() - deadline + step)
                        self._pump()
                    # a busy peer must not starve the others. (Yielding only when more
                    # was waiting, as a plain relay does, gained nothing measurable.)
                    await trio.lowlevel.checkpoint()
                del batch, header, payload   # not kept alive while waiting for the next
        except LinkClosed as e:
            log.log(gone_level, "%s %s: %s", who, gone, e)
        except Exception as e:
            log.warning("dropping %s after a bad message: %r", who, e)
            link.close(f"bad message: {e!r}")

    def _on_worker_message(self, w: WorkerSession, msg: Any, payload: bytes) -> None:
        t = type(msg)
        if t is m.Done:
            self.on_done(w, msg, payload)
        elif t is m.JobOutput:
            s = self.sessions.get(msg.sess)
            rec = s.jobs.get(msg.cid) if s is not None else None
            if s is not None and rec is not None and rec.worker == w.wid:
                _send(s.link, m.Output(msg.cid, msg.stream, msg.dropped), payload)
        elif t is m.Attach:
            self.on_attach(w, msg)
        elif t is m.Draining:
            if not w.draining:
                w.draining = True
                log.info("worker %s is draining: %s", w.name, msg.reason)
                if w.attached:
                    self.placement.cordon(w.wid)
                    self._worker_changed()
        elif t is m.StatusRequest:
            _send(w.link, m.Status(self.status()))
        elif t is m.Bye:
            w.said_bye = True
            w.link.close("worker said goodbye")
        else:
            raise ValueError(f"unexpected {t.__name__} from a worker")

    def _worker_changed(self) -> None:
        self._fits.clear()
        self.worker_changed.set()
        self.worker_changed = trio.Event()

    # -- placement and endings --------------------------------------------------------
    def _pump(self) -> None:
        """Start what can start: placement passes of at most ``SCHEDULE_BATCH`` jobs, each
        dispatched at once, within a budget per stretch of the event loop (``_stretch_work``);
        the rest in the next stretch (``run``), so no message waits behind a long pass. (A
        count alone bounded nothing: 256 placements with their ``Run`` messages were a
        step of 2-10 ms, and every peer's step in a stretch made its own.)"""
        pl = self.placement
        if not len(pl):
            return
        # A budget per stretch, not per call: many peers' steps may run in one stretch (a
        # thousand workers registering at once), each calling this. Placement may take
        # twice as long as the messages did, STEP_SECONDS at least: under load the two
        # share the loop (a fixed 1 ms per stretch cut dispatch to 1,000 workers).
        budget = self._stretch_work(0.0)
        if budget <= 0:
            self._pump_more.set()           # in the next stretch (``_pumper``)
            return
        now = self.clock()
        start = time.perf_counter()
        try:
            while True:
                for gid, wid, alloc in pl.schedule(config.SCHEDULE_BATCH):
                    self._dispatch(gid, wid, alloc, None, now)
                if not pl.more:
                    break
                if time.perf_counter() - start > budget:
                    self._pump_more.set()
                    return
        finally:
            self._pump_spent += time.perf_counter() - start
        if self.placement.chain_depth and len(self.placement):
            for gid, wid, alloc, after in self.placement.chain(self._chain_depth_for):
                self.chained += 1
                self._dispatch(gid, wid, alloc, after, now)

    def _stretch_work(self, handled: float) -> float:
        """Count ``handled`` seconds of peers' messages in this stretch of the event loop;
        returns what placement may still spend in it."""
        polls = self._polls
        if polls is None:
            return config.STEP_SECONDS
        if polls.count != self._stretch:
            self._stretch, self._handled, self._pump_spent = polls.count, 0.0, 0.0
        self._handled += handled
        return max(config.STEP_SECONDS, 2.0 * self._handled) - self._pump_spent

    def _dispatch(self, gid: int, wid: int, alloc: Grant, after: int | None,
                  now: float) -> None:
        rec = self.ledger.jobs[gid]
        w = self.workers[wid]
        s = self.sessions.get(rec.sess)
        if s is None or s.closing:
            # its session ended while its queue is still being emptied (in steps, see
            # ``end_later``): it must not start now
            self.placement.release(wid, gid, alloc)
            self._end(rec, End.CANCELLED, "the client left")
            return
        self.ledger.start(gid, wid, alloc, now)
        self.placement_seconds_sum += now - rec.submitted_at
        self.placement_count += 1
        link = w.link
        if rec.sess not in w.sessions:
            w.sessions.add(rec.sess)
            if s.bundle is not None:
                _send(link, m.SessionBundle(rec.sess, s.bundle[0]), s.bundle[1])
        key = (rec.sess, rec.fid)
        if key not in w.fns:
            w.fns.add(key)
            _send(link, m.Function(rec.sess, rec.fid), s.fns[rec.fid].data)
        alloc_wire = alloc.wire()
        tl, ml = limits_for(rec.request)
        after_rec = self.ledger.jobs.get(after) if after is not None else None
        _send(link, m.Run(rec.sess, rec.cid, rec.fid, alloc_wire, rec.user, tl, ml,
                          after_rec.cid if after_rec is not None else None, rec.name),
              rec.payload)
        if s.link is not None:
            # not urgent: it goes with the client's next message (a short job's Result)
            # or 20 ms later, saving both ends a write and a wake-up per job
            try:
                s.link.send_later(m.Started(rec.cid, w.name, alloc_wire))
            except LinkClosed:
                pass
        for ob in self.observers:
            ob.on_start(rec, w.name)

    def _chain_depth_for(self, head: int, tail: int) -> int:
        """How many jobs may wait on one allocation: only jobs of one function whose jobs
        are known to be short, and only as many as take about ``chain_short`` seconds
        together (a chained job waits for those ahead of it even if another core frees)."""
        h, t = self.ledger.get(head), self.ledger.get(tail)
        if h is None or t is None or h.fid != t.fid or h.sess != t.sess:
            return 0
        stats = self._fn_runtime.get((h.sess, h.fid))
        if stats is None or stats[0] < config.CHAIN_MIN_SAMPLES or stats[1] >= self.chain_short:
            return 0
        return max(1, int(self.chain_short / max(stats[1], 1e-6)))

    def release_running(self, rec: JobRecord) -> None:
        """Give a running job's allocation back (or pass it down its chain)."""
        if rec.state is not JobState.RUNNING or rec.worker is None or rec.alloc is None:
            return
        succ = self.placement.release(rec.worker, rec.gid, rec.alloc)
        if succ is not None:  # the job chained behind it starts now
            nxt = self.ledger.get(succ)
            if nxt is not None:
                nxt.started_at = self.clock()

    def _end(self, rec: JobRecord, end: End, message: str = "", payload: bytes = b"",
             wid: int | None = None) -> None:
        """The job ended: free what it held, tell its client (or keep the result for it)."""
        worker = self.workers[rec.worker].name if rec.worker in self.workers else ""
        if rec.state is JobState.RUNNING:
            if end in (End.OK, End.RAISED) and not rec.orphan:
                # a moving average of the function's job run time, for chaining
                stats = self._fn_runtime.setdefault((rec.sess, rec.fid), [0, 0.0])
                took = self.clock() - rec.started_at
                stats[1] = took if not stats[0] else 0.8 * stats[1] + 0.2 * took
                stats[0] += 1
            self.release_running(rec)
        if self.ledger.end(rec.gid, ok=end == End.OK, cancelled=end == End.CANCELLED) is None:
            return
        for ob in self.observers:
            ob.on_end(rec, end, message, worker)
        s = self.sessions.get(rec.sess)
        if s is None:
            return
        if s.jobs.get(rec.cid) is rec:
            del s.jobs[rec.cid]
        fn = s.fns.get(rec.fid)
        if fn is not None and not rec.orphan:
            fn.refs -= 1
            if fn.forgotten and not fn.refs:
                self._free_function(s, rec.fid)
        if s.closing:
            self._forget_if_done(s)
            return
        if rec.orphan and end == End.CANCELLED:
            # a stale job, killed because nobody claimed it: the result its worker holds
            # is nobody's
            if wid is not None and wid in self.workers:
                _send(self.workers[wid].link, m.Release(rec.sess, [rec.cid]))
            return
        self._deliver(s, rec.cid, int(end), worker, message, payload, wid,
                      dispatched=not rec.orphan)

    def _deliver(self, s: ClientSession, cid: int, end: int, worker: str, message: str,
                 payload: bytes, wid: int | None, dispatched: bool = False) -> None:
        """Send a result to its client, or keep it until the client comes back."""
        if s.link is None:
            s.held[cid] = HeldResult(wid, end, worker, message, payload, dispatched)
            return
        # until the client acks, a resubmission of this job is a duplicate, and the worker
        # (if any) keeps a copy of the result
        s.unacked[cid] = wid if wid is not None else -1
        _send(s.link, m.Result(cid, end, worker, message), payload)

    def _reply(self, s: ClientSession, cid: int, end: End, message: str) -> None:
        _send(s.link, m.Result(cid, int(end), "", message))

    # -- the periodic sweep ----------------------------------------------------------
    def sweep_unschedulable(self) -> None:
        """Fail queued jobs that no current (or recently seen) worker could ever run,
        once they have waited ``wait_for_workers``. O(shapes) unless some fail (those
        end in steps: ``end_later``)."""
        now = self.clock()
        for key, request in self.placement.requests():
            if self.placement.could_ever_fit(request):
                self._first_unfit.pop(key, None)
                continue
            since = self._first_unfit.setdefault(key, now)
            if now - since < self.wait_for_workers or (
                    self.wait_for_workers > 0 and self.recently_seen_fit(request)):
                continue
            self._first_unfit.pop(key, None)
            self.end_later([array("q", self.placement.queued_of(key))],
                           End.UNSCHEDULABLE, self._unfit_message(request))

    def end_later(self, chunks: Iterable[Sequence[int]], end: End, message: str,
                  session: ClientSession | None = None,
                  ended_on: set[int] | None = None) -> None:
        """End these jobs (the executor's ids, or ``session``'s client ids; those still
        queued or parked when their turn comes) as ``end``: a few now, the rest in steps
        between other peers' messages, so that ending a million jobs never stalls the
        event loop. With ``ended_on`` (the workers told that the session ended), a
        running job on any other worker has its worker told too.

        The ids come in chunks, taken one at a time (``JobTable.key_chunks``: a copy of a
        million ids at once was itself a 50 ms stall); none holds a reference that would
        keep an ended job alive."""
        self._bulk.append(_Bulk(iter(chunks), end, message, session, ended_on))
        if not self._end_bulk_step():
                self._pump_more.set()

    def free_later(self, table: JobTable[Any]) -> None:
        """Free a table a block at a time, between other peers' messages (the caller
        forgets it)."""
        if table:
            self._shed.append(table)
            self._pump_more.set()

    def _end_bulk_step(self) -> bool:
        """End up to ``ENDINGS_PER_STEP`` jobs of ``end_later`` (and free as many entries
        of tables given to ``free_later``); True when all are done."""
        budget = config.ENDINGS_PER_STEP
        while self._shed and budget > 0:
            budget -= self._shed[0].drop_some(budget)
            if not self._shed[0]:
                self._shed.popleft()
        budget = config.ENDINGS_PER_STEP
        while self._bulk and budget > 0:
            b = self._bulk[0]
            if b.pos >= len(b.ids):
                nxt = next(b.chunks, None)
                if nxt is None:
                    self._bulk.popleft()
                    continue
                b.ids, b.pos = nxt, 0
            jobs = b.session.jobs if b.session is not None else self.ledger.jobs
            pos = b.pos
            stop = min(len(b.ids), pos + budget)
            budget -= stop - pos
            b.pos = stop       # first: a step that fails is not retried for ever
            for i in b.ids[pos:stop]:
                rec = jobs.get(i)
                if rec is None:
                    continue
                if rec.state is JobState.QUEUED:
                    self._unqueue(rec)
                    self.undefer(rec)
                elif rec.state is JobState.PARKED:
                    self.unpark(rec)
                else:
                    # it runs: it ends when its worker says so
                    if b.ended_on is not None and rec.worker is not None \
                            and rec.worker not in b.ended_on and rec.worker in self.workers:
                        b.ended_on.add(rec.worker)
                        _send(self.workers[rec.worker].link, m.EndSession(rec.sess))
                    continue
                self._end(rec, b.end, b.message)
        return not self._bulk and not self._shed

    def sweep(self) -> None:
        """Everything that happens with time: graces, parked jobs, deferred jobs."""
        self.sweep_recovery()
        self.sweep_unschedulable()
        if not self._pump_more.is_set():   # else ``_pumper`` is on it: not twice a stretch
            self._end_bulk_step()
        self._pump()

    async def run(self, interval: float = 1.0,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The executor's own tasks: ``sweep`` every ``interval`` seconds, and placement
        passes continued between other peers' messages."""
        self._polls = Polls()
        trio.lowlevel.add_instrument(self._polls)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._sweeper, interval)
                n.start_soon(self._pumper)
                task_status.started()
        finally:
            trio.lowlevel.remove_instrument(self._polls)
            self._polls = None

    async def _sweeper(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self._guarded(self.sweep)

    async def _pumper(self) -> None:
        while True:
            await self._pump_more.wait()
            self._pump_more = trio.Event()
            await trio.lowlevel.checkpoint()
            if not self._guarded(self._end_bulk_step):
                self._pump_more.set()     # more to end: after the others had a turn
            self._guarded(self._pump)

    def _guarded(self, step: Callable[[], Any]) -> Any:
        """Run one of the executor's own steps: a bug in it is logged (at most once per
        minute), never the end of the process and of every peer's jobs."""
        try:
            with handling():
                return step()
        except Exception:
            now = self.clock()
            if now - self._last_internal_error >= 60:
                self._last_internal_error = now
                log.exception("internal error in the executor's %s (the executor goes on)",
                              getattr(step, "__name__", step))
            return True

    # -- observation -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The JSON document served at /status (see docs/interfaces.md)."""
        from .status import build_status
        return build_status(self)
