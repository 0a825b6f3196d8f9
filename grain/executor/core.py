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
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import trio

from .. import config
from ..auth import UserPolicy
from ..net.link import Link, LinkClosed
from ..protocol import messages as m
from ..protocol.messages import End
from ..resource import (
    InvalidResource,
    Resource,
    UnknownResourceKind,
    request_from_wire,
    to_wire,
)
from .ledger import JobRecord, JobState, Ledger
from .placement import Placement, shape_of
from .recovery import RecoveryMixin
from .sessions import ClientSession, FunctionEntry, HeldResult, UserAccount, WorkerSession

log = logging.getLogger("grain.executor")


def limits_for(request: Resource) -> tuple[float | None, int | None]:
    """(time limit in s or None, memory limit in bytes or None) for a request."""
    kinds = request.kinds()
    wt = kinds.get("WTime")
    mem = kinds.get("Memory")
    return (float(wt.T) if wt is not None else None,  # type: ignore[attr-defined]
            int(mem.m * 1024 ** 3) if mem is not None and mem.m > 0  # type: ignore[attr-defined]
            else None)


def _send(link: Link | None, msg: Any, payload: bytes = b"") -> None:
    if link is not None:
        try:
            link.send(msg, payload)
        except LinkClosed:
            pass   # the peer's own task notices and cleans up


class Executor(RecoveryMixin):
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
        self.users: defaultdict[str, UserAccount] = defaultdict(UserAccount)
        self.started_at = time.time()
        self.started_mono = clock()
        self.placement_seconds_sum = 0.0
        self.placement_count = 0
        self.worker_changed = trio.Event()
        self.chain_short = chain_short
        self.chained = 0
        self._fn_runtime: dict[tuple[int, int], list[float]] = {}   # (sess, fid) -> stats
        self._requests: dict[str, tuple[Resource, Any]] = {}
        self._fits: dict[Any, bool] = {}     # shape -> could some worker ever run it
        self._first_unfit: dict[Any, float] = {}
        self._ids = 0
        self.observers: list[Any] = []       # objects with on_start(rec) / on_end(rec, ..)
        RecoveryMixin.__init__(self)

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- clients ---------------------------------------------------------------------
    async def serve_client(self, link: Link, user: str, info: dict[str, Any],
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one client connection until it closes. The session outlives it for the
        client's grace (unless the client said goodbye)."""
        s = self._open_session(link, user, info)
        log.info("client %s (user %s) connected%s", s.name, user,
                 " and resumes its session" if info.get("resume") else "")
        task_status.started(s.sess)
        try:
            await self._serve_link(link, f"client {s.name}",
                                   lambda h, p: self._on_client_message(s, h, p))
        finally:
            self._client_link_gone(s, link)

    def _open_session(self, link: Link, user: str, info: dict[str, Any]) -> ClientSession:
        sess = info.get("session")
        if type(sess) is not int or not 0 <= sess < 2 ** 63:
            sess = self._fresh_session_id()
        name = str(info.get("name") or link.peer)[:256]
        now = self.clock()
        s = self.sessions.get(sess)
        if s is not None and (s.user != user or s.closing):
            # another user's session id (or one being torn down): never theirs to resume
            sess = self._fresh_session_id()
            s = None
        if s is None:
            s = ClientSession(sess, user, name, link, connected_at=now, created_at=now)
            self.sessions[sess] = s
            return s
        if s.link is not None and s.link is not link:
            s.link.close("the client reconnected on a new connection")
        s.link, s.name, s.disconnected_at, s.connected_at = link, name, None, now
        if info.get("resume"):
            s.resumed = False   # until its ResumeDone: reports from workers may be claimed
            s.unclaimed = set(s.jobs)
        return s

    def _fresh_session_id(self) -> int:
        import secrets
        while True:
            sess = secrets.randbits(63)
            if sess not in self.sessions:
                return sess

    def _client_link_gone(self, s: ClientSession, link: Link) -> None:
        if s.link is not link:
            return    # replaced by a newer connection
        s.link = None
        if s.said_bye or self.client_grace <= 0:
            self.end_session(s, "the client left")
        else:
            s.disconnected_at = self.clock()
            log.info("client %s lost; its jobs are kept for %.0fs", s.name, self.client_grace)
        self._pump()

    def _on_client_message(self, s: ClientSession, msg: Any, payload: bytes) -> None:
        t = type(msg)
        if t is m.Submit:
            self._submit(s, msg, payload)
        elif t is m.DefineFunction:
            self._define(s, msg.fid, payload)
        elif t is m.Cancel:
            rec = s.jobs.get(msg.cid)
            if rec is not None:
                self._cancel(rec)
        elif t is m.Ack:
            self._ack(s, msg.cids)
        elif t is m.ForgetFunction:
            fn = s.fns.get(msg.fid)
            if fn is not None:
                fn.forgotten = True
                if not fn.refs:
                    self._free_function(s, msg.fid)
        elif t is m.ResumeDone:
            self.resume_done(s)
        elif t is m.ProjectBundle:
            if len(payload) > config.MAX_BUNDLE_BYTES:
                raise ValueError(f"project bundle of {len(payload)} bytes is over the limit "
                                 f"of {config.MAX_BUNDLE_BYTES}")
            s.bundle = (msg.digest, payload)
        elif t is m.StatusRequest:
            _send(s.link, m.Status(self.status()))
        elif t is m.Bye:
            s.said_bye = True
            if s.link is not None:
                s.link.close("client said goodbye")
        else:
            raise ValueError(f"unexpected {t.__name__} from a client")

    def _define(self, s: ClientSession, fid: int, data: bytes) -> None:
        old = s.fns.get(fid)
        size = s.fn_bytes - (len(old.data) if old is not None else 0) + len(data)
        if size > config.MAX_FUNCTION_BYTES_PER_SESSION:
            raise ValueError(f"the session's functions would take {size} bytes, over the "
                             f"limit of {config.MAX_FUNCTION_BYTES_PER_SESSION}")
        s.fn_bytes = size
        if old is not None:       # resent after a reconnect: same function, same id
            old.data, old.forgotten = data, False
        else:
            s.fns[fid] = FunctionEntry(data)

    def _free_function(self, s: ClientSession, fid: int) -> None:
        fn = s.fns.pop(fid, None)
        if fn is None:
            return
        s.fn_bytes -= len(fn.data)
        key = (s.sess, fid)
        self._fn_runtime.pop(key, None)
        for w in self.workers.values():
            if key in w.fns:
                w.fns.discard(key)
                _send(w.link, m.DropFunction(s.sess, fid))

    def _submit(self, s: ClientSession, msg: m.Submit, payload: bytes) -> None:
        rec = s.jobs.get(msg.cid)
        if rec is not None:
            self.claim(s, rec, msg, payload)   # resubmitted by a reconnecting client
            return
        if msg.cid in s.unacked:
            return    # its result is on its way to the client already
        held = s.held.pop(msg.cid, None)
        if held is not None:                   # it ended while the client was away
            self._deliver(s, msg.cid, held.end, held.worker, held.message, held.payload,
                          held.wid)
            return
        fn = s.fns.get(msg.fid)
        if fn is None:
            self._reply(s, msg.cid, End.SERIALIZATION, f"unknown function id {msg.fid}")
            return
        try:
            request, shape = self._request_for(msg.request)
        except UnknownResourceKind as e:
            self._reply(s, msg.cid, End.UNSCHEDULABLE, str(e))
            return
        except InvalidResource as e:
            self._reply(s, msg.cid, End.INVALID, f"invalid resource request: {e}")
            return
        acct = self.users[s.user]
        policy = self.policy(s.user)
        if acct.queued >= policy.max_queued:
            self._reply(s, msg.cid, End.REFUSED,
                        f"user {s.user} already has {acct.queued} jobs queued, the limit "
                        f"(max-queued={policy.max_queued})")
            return
        retries = self.retries if msg.retries is None else min(msg.retries, 10)
        rec = self.ledger.submit(s.sess, msg.cid, s.user, request, shape, msg.fid, payload,
                                 retries, msg.name, self.clock())
        s.jobs[msg.cid] = rec
        fn.refs += 1
        if msg.started_on is not None:
            self.park_resubmitted(rec, msg.started_on)
            return
        if not self._could_ever_fit(request, shape) and not self._may_wait(request):
            self._end(rec, End.UNSCHEDULABLE, self._unfit_message(request))
            return
        self._enqueue(rec, resumed=not s.resumed)

    def _enqueue(self, rec: JobRecord, resumed: bool = False) -> None:
        """Queue a job (or, just after a restart, hold a resubmitted one back until its
        worker had a chance to report it running)."""
        if resumed and self.clock() < self.started_mono + self.settle:
            self.defer(rec)
            return
        self.users[rec.user].queued += 1
        self.placement.enqueue(rec.gid, rec.request, rec.shape)

    def _unqueue(self, rec: JobRecord) -> None:
        """A queued job leaves the queue without starting."""
        if self.placement.dequeue(rec.gid):
            self.users[rec.user].queued -= 1

    def _request_for(self, req_wire: Any) -> tuple[Resource, Any]:
        """The checked request and its shape, shared by every job asking the same (requests
        are only read): saves the checking per job and most of a queued job's memory."""
        key = repr(req_wire)
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
        none is registered yet, or one that could was seen lately."""
        if self.wait_for_workers <= 0:
            return False
        return not self.workers or self.recently_seen_fit(request)

    def _unfit_message(self, request: Resource) -> str:
        if not self.workers:
            return (f"no worker is registered, so {request} cannot run: start workers "
                    f"(grain worker --executor ...) or let the executor wait for them")
        caps = "; ".join(f"{w.name}: {w.capacity}" for w in list(self.workers.values())[:5])
        return f"no registered worker could ever satisfy {request} (workers: {caps})"

    def _cancel(self, rec: JobRecord) -> None:
        if rec.state is JobState.QUEUED:
            self._unqueue(rec)
            self.undefer(rec)
            self._end(rec, End.CANCELLED, "cancelled")
        elif rec.state is JobState.PARKED:
            self.unpark(rec)
            self._end(rec, End.CANCELLED, "cancelled")
        else:
            w = self.workers.get(rec.worker) if rec.worker is not None else None
            if w is not None:
                _send(w.link, m.Kill(rec.sess, rec.cid))

    def _ack(self, s: ClientSession, cids: list[int]) -> None:
        by_worker: dict[int, list[int]] = {}
        for cid in cids:
            wid = s.unacked.pop(cid, None)
            if wid is not None:
                by_worker.setdefault(wid, []).append(cid)
        for wid, done in by_worker.items():
            w = self.workers.get(wid)
            if w is not None:
                _send(w.link, m.Release(s.sess, done))

    def end_session(self, s: ClientSession, why: str) -> None:
        """A session is over for good: drop its queue, kill its jobs, free its code."""
        s.closing = True
        log.info("session of %s (user %s) ends: %s", s.name, s.user, why)
        notify = {w.wid for w in self.workers.values() if s.sess in w.sessions}
        notify |= {r.worker for r in s.jobs.values() if r.worker is not None}
        for rec in list(s.jobs.values()):
            if rec.state is JobState.RUNNING:
                continue   # killed by EndSession below; its Done ends it
            if rec.state is JobState.QUEUED:
                self._unqueue(rec)
                self.undefer(rec)
            elif rec.state is JobState.PARKED:
                self.unpark(rec)
            self._end(rec, End.CANCELLED, why)
        for wid in notify:
            w = self.workers.get(wid)
            if w is not None:
                w.sessions.discard(s.sess)
                _send(w.link, m.EndSession(s.sess))
        s.held.clear()
        s.unacked.clear()
        s.bundle = None
        for fid in list(s.fns):
            if not s.fns[fid].refs:
                self._free_function(s, fid)
        self._forget_if_done(s)

    def _forget_if_done(self, s: ClientSession) -> None:
        if s.closing and not s.jobs and s.link is None:
            for fid in list(s.fns):
                self._free_function(s, fid)
            self.sessions.pop(s.sess, None)

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
        try:
            while True:
                for header, payload in await link.receive():
                    on_message(header, payload)
                self._pump()
                await trio.lowlevel.checkpoint()   # a busy peer must not starve the others
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
            w.link.close("worker said goodbye")
        else:
            raise ValueError(f"unexpected {t.__name__} from a worker")

    def _worker_changed(self) -> None:
        self._fits.clear()
        self.worker_changed.set()
        self.worker_changed = trio.Event()

    # -- placement and endings --------------------------------------------------------
    def _pump(self) -> None:
        if not len(self.placement):
            return
        now = self.clock()
        for gid, wid, alloc in self.placement.schedule():
            self._dispatch(gid, wid, alloc, None, now)
        if self.placement.chain_depth and len(self.placement):
            for gid, wid, alloc, after in self.placement.chain(self._chain_depth_for):
                self.chained += 1
                self._dispatch(gid, wid, alloc, after, now)

    def _dispatch(self, gid: int, wid: int, alloc: Resource, after: int | None,
                  now: float) -> None:
        rec = self.ledger.jobs[gid]
        w = self.workers[wid]
        s = self.sessions[rec.sess]
        self.users[rec.user].queued -= 1
        self.users[rec.user].running += 1
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
        alloc_wire = to_wire(alloc)
        tl, ml = limits_for(rec.request)
        after_rec = self.ledger.jobs.get(after) if after is not None else None
        _send(link, m.Run(rec.sess, rec.cid, rec.fid, alloc_wire, rec.user, tl, ml,
                          after_rec.cid if after_rec is not None else None, rec.name),
              rec.payload)
        _send(s.link, m.Started(rec.cid, w.name, alloc_wire))
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
        if rec.state is not JobState.RUNNING or rec.worker is None:
            return
        self.users[rec.user].running -= 1
        if rec.alloc is None:
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
            return
        self._deliver(s, rec.cid, int(end), worker, message, payload, wid)

    def _deliver(self, s: ClientSession, cid: int, end: int, worker: str, message: str,
                 payload: bytes, wid: int | None) -> None:
        """Send a result to its client, or keep it until the client comes back."""
        if s.link is None:
            s.held[cid] = HeldResult(wid, end, worker, message, payload)
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
        once they have waited ``wait_for_workers``."""
        now = self.clock()
        for request, gids in self.placement.shapes():
            key = shape_of(request)
            if self.placement.could_ever_fit(request):
                self._first_unfit.pop(key, None)
                continue
            since = self._first_unfit.setdefault(key, now)
            if now - since < self.wait_for_workers or (
                    self.wait_for_workers > 0 and self.recently_seen_fit(request)):
                continue
            self._first_unfit.pop(key, None)
            msg = self._unfit_message(request)
            for gid in gids:
                rec = self.ledger.get(gid)
                if rec is not None:
                    self._unqueue(rec)
                    self._end(rec, End.UNSCHEDULABLE, msg)

    def sweep(self) -> None:
        """Everything that happens with time: graces, parked jobs, deferred jobs."""
        self.sweep_recovery()
        self.sweep_unschedulable()
        self._pump()

    async def sweeper(self, interval: float = 1.0) -> None:
        """Run ``sweep`` every ``interval`` seconds."""
        while True:
            await trio.sleep(interval)
            self.sweep()

    # -- observation -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The JSON document served at /status (see docs/interfaces.md)."""
        from .status import build_status
        return build_status(self)
