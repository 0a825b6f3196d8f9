"""The executor's heart: sessions of clients and workers feed the ledger and placement.

Each connected client and worker is served by one task reading batches from its ``Link``.
Handlers only change in-memory state and queue outgoing messages (``Link.send`` never
blocks), so no locks are needed; placement runs once per received batch, not per message.
The executor never unpickles a job's function, arguments or result: they are opaque bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .._version import __version__
from ..net.link import Link, LinkClosed
from ..protocol.messages import End, Msg
from ..resource import Resource, UnknownResourceKind, from_wire, to_wire
from .ledger import JobRecord, JobState, Ledger
from .placement import Placement, shape_of

log = logging.getLogger("grain.executor")

DEFAULT_RETRIES = 2
CHAIN_SHORT_SECONDS = 0.01   # chain jobs of functions whose jobs take less than this
CHAIN_MIN_SAMPLES = 5
CHAIN_DEPTH = 16             # at most this many jobs wait behind a running one


@dataclass
class ClientSession:
    sid: int
    name: str
    link: Link
    fns: dict[int, int] = field(default_factory=dict)      # client fn id -> global fn id
    jobs: dict[int, int] = field(default_factory=dict)     # client job id -> global job id
    connected_at: float = field(default_factory=time.time)


@dataclass
class WorkerSession:
    wid: int
    name: str
    link: Link
    info: dict[str, Any]
    fns: set[int] = field(default_factory=set)             # global fn ids it holds
    connected_at: float = field(default_factory=time.time)


def limits_for(request: Resource) -> list[Any]:
    """[time limit in s or None, memory limit in bytes or None] for a request."""
    kinds = request.kinds()
    wt = kinds.get("WTime")
    mem = kinds.get("Memory")
    return [float(wt.T) if wt is not None else None,
            int(mem.m * 1024 ** 3) if mem is not None and mem.m > 0 else None]


class Executor:
    """Routes jobs from clients to workers. Transport-agnostic: give it ``Link`` s."""

    def __init__(self, *, retries: int = DEFAULT_RETRIES, wait_for_workers: float = 0.0,
                 name: str = "executor", chain_short: float = CHAIN_SHORT_SECONDS,
                 chain_depth: int = CHAIN_DEPTH) -> None:
        self.name = name
        self.retries = retries
        self.wait_for_workers = wait_for_workers
        self.ledger = Ledger()
        self.placement = Placement(chain_depth=chain_depth if chain_short > 0 else 0)
        self.clients: dict[int, ClientSession] = {}
        self.workers: dict[int, WorkerSession] = {}
        self.fn_bytes: dict[int, bytes] = {}
        self._fn_owner: dict[int, int] = {}
        self._ids = 0
        self.started_at = time.time()
        self.placement_seconds_sum = 0.0
        self.placement_count = 0
        self.worker_changed = trio.Event()
        self._first_unfit: dict[Any, float] = {}
        self.chain_short = chain_short
        self._fn_runtime: dict[int, list[float]] = {}   # gfn -> [jobs, total seconds]
        self.chained = 0
        self._requests: dict[str, tuple[Resource, Any]] = {}
        self._fits: dict[Any, bool] = {}     # shape -> could some worker ever run it

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- clients ---------------------------------------------------------------------
    async def serve_client(self, link: Link, info: dict[str, Any] | None = None,
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one client until its link closes; then drop what it left behind."""
        s = ClientSession(self._new_id(), str((info or {}).get("name") or link.peer), link)
        self.clients[s.sid] = s
        log.info("client %s connected", s.name)
        task_status.started(s.sid)
        try:
            await self._serve_link(link, f"client {s.name}",
                                   lambda h, p: self._on_client_message(s, h, p))
        finally:
            self._drop_client(s)

    def _on_client_message(self, s: ClientSession, h: Any, payload: bytes) -> None:
        t = h[0]
        if t == Msg.SUBMIT:
            self._submit(s, int(h[1]), h[2], int(h[3]), payload, h[4] if len(h) > 4 else None)
        elif t == Msg.DEFINE_FN:
            gfn = self._new_id()
            s.fns[int(h[1])] = gfn
            self.fn_bytes[gfn] = payload
            self._fn_owner[gfn] = s.sid
        elif t == Msg.CANCEL:
            gid = s.jobs.get(int(h[1]))
            if gid is not None:
                self._cancel(gid)
        elif t == Msg.STATUS_REQ:
            _try_send(s.link, [Msg.STATUS, self.status()])
        elif t == Msg.BYE:
            s.link.close("client said goodbye")
        else:
            raise ValueError(f"unexpected message type {t!r} from a client")

    def _submit(self, s: ClientSession, cid: int, req_wire: Any, fn_id: int, payload: bytes,
                retries: Any) -> None:
        gfn = s.fns.get(fn_id)
        if gfn is None:
            self._reply(s, cid, End.SERIALIZATION, f"unknown function id {fn_id}")
            return
        try:
            request, shape = self._request_for(req_wire)
        except UnknownResourceKind as e:
            self._reply(s, cid, End.UNSCHEDULABLE, str(e))
            return
        except Exception as e:  # noqa: BLE001 - a bad request is the client's problem
            self._reply(s, cid, End.UNSCHEDULABLE, f"malformed resource request: {e!r}")
            return
        rec = self.ledger.submit(s.sid, cid, request, gfn, payload,
                                 self.retries if retries is None else int(retries))
        s.jobs[cid] = rec.gid
        if not self._could_ever_fit(request, shape) and not self._may_wait():
            self._end(rec, End.UNSCHEDULABLE, self._unfit_message(request))
            return
        self.placement.enqueue(rec.gid, request, shape)

    def _request_for(self, req_wire: Any) -> tuple[Resource, Any]:
        """The request object and its shape, shared by all jobs asking the same (requests
        are only read): saves the decoding per job and most of a queued job's memory."""
        key = repr(req_wire)
        hit = self._requests.get(key)
        if hit is None:
            request = from_wire(req_wire)
            hit = (request, shape_of(request))
            if len(self._requests) < 10_000:
                self._requests[key] = hit
        return hit

    def _could_ever_fit(self, request: Resource, shape: Any) -> bool:
        """Cached per shape until the workers change (not for WTime requests: workers'
        remaining lifetimes shrink)."""
        fits = self._fits.get(shape)
        if fits is None:
            fits = self.placement.could_ever_fit(request)
            if "WTime" not in request.kinds():
                self._fits[shape] = fits
        return fits

    def _may_wait(self) -> bool:
        return self.wait_for_workers > 0

    def _unfit_message(self, request: Resource) -> str:
        if not self.workers:
            return (f"no worker is registered, so {request} cannot run: start workers "
                    f"(grain worker --executor ...) or let the executor wait for them")
        caps = "; ".join(f"{w.name}: {self.placement.workers[w.wid].total}"
                         for w in list(self.workers.values())[:5])
        return f"no registered worker could ever satisfy {request} (workers: {caps})"

    def _cancel(self, gid: int) -> None:
        rec = self.ledger.get(gid)
        if rec is None:
            return
        if rec.state is JobState.QUEUED:
            self.placement.dequeue(gid)
            self._end(rec, End.CANCELLED, "cancelled")
        else:
            w = self.workers.get(rec.worker)
            if w is not None:
                _try_send(w.link, [Msg.KILL, gid])

    def _drop_client(self, s: ClientSession) -> None:
        self.clients.pop(s.sid, None)
        for gid in list(s.jobs.values()):
            self._cancel(gid)
        for gfn in s.fns.values():
            self.fn_bytes.pop(gfn, None)
            self._fn_runtime.pop(gfn, None)
            self._fn_owner.pop(gfn, None)
            for w in self.workers.values():
                if gfn in w.fns:
                    w.fns.discard(gfn)
                    _try_send(w.link, [Msg.FORGET_FN, gfn])
        self._pump()

    # -- workers ---------------------------------------------------------------------
    async def serve_worker(self, link: Link, info: dict[str, Any],
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one worker until its link closes; then retry or fail its jobs."""
        total = from_wire(info["capacity"])
        free = from_wire(info["capacity"])
        w = WorkerSession(self._new_id(), str(info.get("name") or link.peer), link, info)
        self.workers[w.wid] = w
        self.placement.add_worker(w.wid, w.name, total, free)
        log.info("worker %s joined with %s", w.name, total)
        self._worker_changed()
        self._pump()
        task_status.started(w.wid)
        try:
            await self._serve_link(link, f"worker {w.name}",
                                   lambda h, p: self._on_worker_message(w, h, p),
                                   gone="lost", gone_level=logging.WARNING)
        finally:
            self._drop_worker(w)

    async def _serve_link(self, link: Link, who: str, on_message: Any, gone: str = "gone",
                          gone_level: int = logging.INFO) -> None:
        """Feed a peer's batches to ``on_message``, then place what can start, until the
        link closes. A malformed message drops this peer, never the executor."""
        try:
            while True:
                for header, payload in await link.receive():
                    on_message(header, payload)
                self._pump()
        except LinkClosed as e:
            log.log(gone_level, "%s %s: %s", who, gone, e)
        except Exception as e:
            log.warning("dropping %s after a bad message: %r", who, e)
            link.close(f"bad message: {e!r}")

    def _on_worker_message(self, w: WorkerSession, h: Any, payload: bytes) -> None:
        t = h[0]
        if t == Msg.DONE:
            gid, end = int(h[1]), End(h[2])
            rec = self.ledger.get(gid)
            if rec is None or rec.worker != w.wid:
                return  # a late report about a job that already ended: dropped
            self._end(rec, end, h[3] if len(h) > 3 else "", payload)
        elif t == Msg.STATUS_REQ:
            _try_send(w.link, [Msg.STATUS, self.status()])
        elif t == Msg.BYE:
            w.link.close("worker said goodbye")
        else:
            raise ValueError(f"unexpected message type {t!r} from a worker")

    def _drop_worker(self, w: WorkerSession) -> None:
        self.workers.pop(w.wid, None)
        running = self.placement.remove_worker(w.wid)
        for gid in sorted(running):
            rec = self.ledger.requeue(gid, w.name)
            if rec is not None:
                log.info("job %d requeued after losing worker %s", gid, w.name)
                self.placement.enqueue(gid, rec.request)
            else:
                rec = self.ledger.get(gid)
                if rec is not None:
                    self._end(rec, End.WORKER_LOST,
                              f"worker {w.name} was lost while running the job "
                              f"(tried on: {', '.join(rec.lost_on) or w.name})")
        self._worker_changed()
        self.sweep_unschedulable()
        self._pump()

    def _worker_changed(self) -> None:
        self._fits.clear()
        self.worker_changed.set()
        self.worker_changed = trio.Event()

    # -- placement and endings --------------------------------------------------------
    def _pump(self) -> None:
        if not len(self.placement):
            return
        now = time.monotonic()
        for gid, wid, alloc in self.placement.schedule():
            self._dispatch(gid, wid, alloc, None, now)
        if self.placement.chain_depth and len(self.placement):
            for gid, wid, alloc, after in self.placement.chain(self._chain_depth_for):
                self.chained += 1
                self._dispatch(gid, wid, alloc, after, now)

    def _dispatch(self, gid: int, wid: int, alloc: Resource, after: int | None,
                  now: float) -> None:
        rec = self.ledger.get(gid)
        w = self.workers[wid]
        alloc_wire = to_wire(alloc)
        self.ledger.start(gid, wid, alloc, alloc_wire)
        self.placement_seconds_sum += now - rec.submitted_at
        self.placement_count += 1
        if rec.gfn not in w.fns:
            w.fns.add(rec.gfn)
            _try_send(w.link, [Msg.FUNCTION, rec.gfn], self.fn_bytes[rec.gfn])
        # a worker whose link just closed is dropped by its own task, which re-queues this
        _try_send(w.link, [Msg.RUN, gid, alloc_wire, rec.gfn, limits_for(rec.request),
                     self.clients[rec.client].name if rec.client in self.clients else "",
                     after], rec.payload)

    def _chain_depth_for(self, head: int, tail: int) -> int:
        """How many jobs may wait on one allocation: only jobs of one function whose jobs
        are known to be short, and only as many as take about ``chain_short`` seconds
        together (a chained job waits for those ahead of it even if another core frees)."""
        h, t = self.ledger.get(head), self.ledger.get(tail)
        if h is None or t is None or h.gfn != t.gfn:
            return 0
        stats = self._fn_runtime.get(h.gfn)
        if stats is None or stats[0] < CHAIN_MIN_SAMPLES or stats[1] >= self.chain_short:
            return 0
        return max(1, int(self.chain_short / max(stats[1], 1e-6)))

    def _end(self, rec: JobRecord, end: End, message: str = "", payload: bytes = b"") -> None:
        alloc_wire, worker = rec.alloc_wire, rec.worker
        if rec.state is JobState.RUNNING and rec.worker is not None:
            now = time.monotonic()
            succ = self.placement.release(rec.worker, rec.gid, rec.alloc)
            if succ is not None:  # the job chained behind it starts now
                nxt = self.ledger.get(succ)
                if nxt is not None:
                    nxt.started_at = now
            if end in (End.OK, End.RAISED):
                # a moving average of the function's job run time, for chaining
                stats = self._fn_runtime.setdefault(rec.gfn, [0, 0.0])
                took = now - rec.started_at
                stats[1] = took if not stats[0] else 0.8 * stats[1] + 0.2 * took
                stats[0] += 1
        if self.ledger.end(rec.gid, ok=end == End.OK, cancelled=end == End.CANCELLED) is None:
            return
        s = self.clients.get(rec.client)
        if s is None:
            return
        s.jobs.pop(rec.cid, None)
        wname = self.workers[worker].name if worker in self.workers else ""
        _try_send(s.link, [Msg.RESULT, rec.cid, int(end), alloc_wire, wname, message], payload)

    def _reply(self, s: ClientSession, cid: int, end: End, message: str) -> None:
        _try_send(s.link, [Msg.RESULT, cid, int(end), None, "", message])

    def sweep_unschedulable(self) -> None:
        """Fail queued jobs that no current worker could ever run (after the wait)."""
        now = time.monotonic()
        for request, gids in self.placement.shapes():
            key = shape_of(request)
            if self.placement.could_ever_fit(request):
                self._first_unfit.pop(key, None)
                continue
            since = self._first_unfit.setdefault(key, now)
            if now - since < self.wait_for_workers:
                continue
            self._first_unfit.pop(key, None)
            msg = self._unfit_message(request)
            for gid in gids:
                self.placement.dequeue(gid)
                rec = self.ledger.get(gid)
                if rec is not None:
                    self._end(rec, End.UNSCHEDULABLE, msg)

    async def sweeper(self, interval: float = 1.0) -> None:
        """Periodic unschedulable sweep (for clusters that wait for workers)."""
        while True:
            await trio.sleep(interval)
            self.sweep_unschedulable()

    # -- observation -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The JSON document served at /status (see docs/interfaces.md)."""
        workers = []
        tc = fc = 0
        tm = fm = 0.0
        for w in self.workers.values():
            st = self.placement.workers.get(w.wid)
            if st is None:
                continue
            cfree, ctot = st.free.stat().get("Cores", (0, 0))
            mfree, mtot = st.free.stat().get("Memory", (0, 0))
            tc, fc, tm, fm = tc + ctot, fc + cfree, tm + mtot, fm + mfree
            workers.append({
                "name": w.name, "address": w.link.peer,
                "cores_total": ctot, "cores_free": cfree,
                "memory_total_gb": mtot, "memory_free_gb": round(mfree, 3),
                "running_jobs": len(st.running),
                "cpuset": w.info.get("cpuset", []),
                "exclusive_cpuset": bool(w.info.get("exclusive_cpuset", False)),
                "gpus": w.info.get("gpus", []),
                "capacity": repr(st.total),
            })
        led = self.ledger
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "queue_length": len(self.placement),
            "clients": len(self.clients),
            "running_jobs": sum(len(s.running) for s in self.placement.workers.values()),
            "cores": {"total": tc, "free": fc},
            "memory_gb": {"total": tm, "free": round(fm, 3)},
            "jobs": {"submitted": led.submitted, "started": led.started,
                     "finished": led.finished, "failed": led.failed,
                     "cancelled": led.cancelled, "retried": led.retried},
            "workers": workers,
        }


def _try_send(link: Link, header: list[Any], payload: bytes = b"") -> None:
    try:
        link.send(header, payload)
    except LinkClosed:
        pass
