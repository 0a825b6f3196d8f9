"""Rebuilding the executor's state from its peers: nothing is lost when a peer goes away.

The executor keeps nothing on disk. After it restarts, or when a worker or a client comes
back after a network blip, the peers tell it what it needs:

- a worker (re)connects with ``Attach``: the jobs it is running (with their allocations)
  and the results it still holds (sent next, as ``Done``);
- a client reconnects with its session id and ``resume``, redefines its functions and
  resubmits every unfinished job, naming the worker where it saw a job start
  (``started_on``), then says ``ResumeDone``.

The executor matches the two: a job a worker reports is re-attached, never run again; a
job whose worker is away waits for it (*parked*) for the worker grace, and is re-run only
if the worker does not come back with it; a result is delivered once (the client acks it,
then the worker forgets its copy). Jobs and results nobody claims are stale: killed or
released. This module is the part of ``Executor`` that does the matching.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import config
from ..protocol import messages as m
from ..protocol.messages import End
from ..resource import InvalidResource, Resource, UnknownResourceKind, capacity_from_wire, to_wire
from .grant import Grant
from .host import ExecutorHost
from .host import send as _send
from .ledger import JobRecord, JobState
from .sessions import ClientSession, HeldResult, WorkerSession

log = logging.getLogger("grain.executor")



class RecoveryMixin:
    """Re-attachment, parked jobs, orphans and graces (mixed into ``Executor``)."""

    def __init__(self) -> None:
        self.parked: dict[str, set[int]] = {}          # worker name -> jobs waiting for it
        self.seen: dict[str, tuple[Resource, float]] = {}  # lost worker -> capacity, when
        self.deferred: dict[int, None] = {}             # resubmitted jobs held back
        self.worker_names: dict[str, int] = {}          # attached worker name -> id
        # sessions ended for good here (session -> user, why, when), the latest ENDED_KEPT:
        # a client back after its grace is told, rather than finding its jobs run again,
        # and so is a worker that was away when they ended
        self.ended_sessions: dict[int, tuple[str, str, float]] = {}

    # -- workers that (re)connect ------------------------------------------------------
    def on_attach(self: ExecutorHost, w: WorkerSession, msg: m.Attach) -> None:
        if w.attached:
            raise ValueError("a worker sent Attach twice")
        old = self.worker_names.get(w.name)
        if old is not None and old in self.workers:
            # the same worker on a new connection: the old one is stale
            self.workers[old].link.close("the worker reconnected on a new connection")
        self.placement.add_worker(w.wid, w.name, w.capacity,
                                  capacity_from_wire(to_wire(w.capacity)))
        w.attached, w.rejoined = True, msg.rejoined
        self.worker_names[w.name] = w.wid
        self.seen.pop(w.name, None)
        for held in msg.held:
            w.held.add((held.sess, held.cid))
            if held.sess not in self.sessions:
                self._placeholder(held.sess, held.user)
        self._adopt_kept_sessions(w, msg.sessions)
        attached: dict[tuple[int, int], int] = {}    # (sess, cid) -> gid, this Attach
        for job in msg.running:
            gid = self._attach_one(w, job, attached)
            if gid is not None:
                attached[(job.sess, job.cid)] = gid
        for gid in sorted(self.parked.get(w.name, ())):
            rec = self.ledger.get(gid)
            if rec is None or rec.state is not JobState.PARKED:
                continue
            if rec.key in w.held:
                continue                     # its result is on the way
            self.unpark(rec)
            self.missing(rec, w)
        if msg.running or msg.held:
            log.info("worker %s re-attached %d running jobs and %d held results", w.name,
                     len(msg.running), len(msg.held))
        if w.draining:
            self.placement.cordon(w.wid)
        self._worker_changed()

    def _adopt_kept_sessions(self: ExecutorHost, w: WorkerSession,
                             kept: list[m.KeptSession]) -> None:
        """Sessions the worker keeps something of. One ended here (while the worker was
        away, say: the EndSession was lost with its connection) is ended there; one
        this executor never knew (it restarted) waits for its client as a placeholder,
        which the client grace ends, on every worker, if the client never comes back."""
        for k in kept:
            w.sessions.add(k.sess)
            if k.sess in self.sessions:
                continue
            if k.sess in self.ended_sessions:
                _send(w.link, m.EndSession(k.sess))
                w.sessions.discard(k.sess)
            else:
                self._placeholder(k.sess, k.user)

    def _attach_one(self: ExecutorHost, w: WorkerSession, job: m.AttachedJob,
                    attached: dict[tuple[int, int], int]) -> int | None:
        """Take one reported job back (or kill it when it is stale); its id, or None."""
        kill = m.Kill(job.sess, job.cid)
        ahead = attached.get((job.sess, job.after)) if job.after is not None else None

        def take(gid: int, request: Resource, shape: Any) -> bool:
            if ahead is not None:    # chained: it shares the allocation of the job ahead
                return self.placement.attach_behind(w.wid, gid, ahead)
            return self.placement.attach(w.wid, gid, grant, request, shape, user=job.user)

        try:
            alloc = capacity_from_wire(job.alloc)
            grant = Grant.of(alloc)
        except (InvalidResource, UnknownResourceKind) as e:
            log.warning("worker %s reported job %s with a bad allocation (%s): killing it",
                        w.name, (job.sess, job.cid), e)
            _send(w.link, kill)
            return None
        s = self.sessions.get(job.sess)
        if s is not None and (s.user != job.user or s.closing):
            _send(w.link, kill)
            return None
        rec = s.jobs.get(job.cid) if s is not None else None
        if rec is None:
            if s is not None and s.resumed:
                log.info("worker %s reported job %s, which its session no longer has: "
                         "killing it", w.name, (job.sess, job.cid))
                _send(w.link, kill)   # the session knows all its jobs: this one is stale
                return None
            try:
                request, shape = self._request_for(job.alloc)
            except (InvalidResource, UnknownResourceKind):
                _send(w.link, kill)
                return None
            s = s or self._placeholder(job.sess, job.user)
            now = self.clock()
            rec = self.ledger.adopt(job.sess, job.cid, job.user, job.fid, w.wid, grant,
                                    request, shape, job.name, now - job.elapsed)
            self._know_user(job.user)
            if not take(rec.gid, request, shape):
                log.warning("worker %s reported job %s on %s, which is not free there: "
                            "killing it", w.name, (job.sess, job.cid), alloc)
                self.ledger.end(rec.gid, ok=False)
                _send(w.link, kill)
                return None
            s.jobs[job.cid] = rec
            return rec.gid
        if rec.state is JobState.RUNNING:
            if rec.worker == w.wid:
                return rec.gid
            other = self.workers.get(rec.worker) if rec.worker is not None else None
            if other is None or other.name != w.name:
                log.info("worker %s reported job %s, which runs on %s already: killing "
                         "this copy", w.name, (job.sess, job.cid),
                         other.name if other is not None else "?")
                _send(w.link, kill)   # it runs elsewhere already: this copy goes
                return None
            self.release_running(rec)    # the same worker's stale connection
            rec.state = JobState.QUEUED
        elif rec.state is JobState.QUEUED:
            self._unqueue(rec)
            self.undefer(rec)
        else:
            self.unpark(rec)
        if not take(rec.gid, rec.request, rec.shape):
            log.warning("worker %s reported job %s on %s, which is not free there: killing "
                        "it and queueing the job again", w.name, rec.key, alloc)
            _send(w.link, kill)
            rec.state = JobState.QUEUED
            self._enqueue(rec)
            return None
        self.ledger.attach(rec.gid, w.wid, grant)
        if rec.cancelled:
            _send(w.link, kill)   # cancelled while its worker was away: the Kill again
        _send(s.link if s is not None else None,
              m.Started(rec.cid, w.name, grant.wire()))
        return rec.gid

    def worker_gone(self: ExecutorHost, w: WorkerSession) -> None:
        """A worker connection closed: wait for it (its jobs park) or re-run its jobs."""
        self.workers.pop(w.wid, None)
        if self.worker_names.get(w.name) == w.wid:
            del self.worker_names[w.name]
        if not w.attached:
            return
        running = self.placement.remove_worker(w.wid)
        now = self.clock()
        self.seen[w.name] = (w.capacity, now)
        if w.draining and w.said_bye:
            # It drained and said goodbye: what it finished was reported before the
            # goodbye (one ordered link), and what it did not finish it handed back. A job
            # still counted here was sent after it stopped reading (a Run in flight when
            # it left): it never ran there, so it is queued again without counting.
            for gid in sorted(running):
                rec = self.ledger.get(gid)
                if rec is not None and rec.state is JobState.RUNNING and rec.worker == w.wid:
                    if rec.cancelled:    # cancelled meanwhile: it ends here, never re-run
                        self._end(rec, End.CANCELLED, "cancelled")
                        continue
                    back = self.ledger.requeue(gid, w.name, count=False)
                    if back is not None and not back.orphan:
                        self._enqueue(back)
                    elif back is not None:
                        self._end(back, End.WORKER_LOST, f"worker {w.name} left (drained)")
            self._worker_changed()
            self._pump()
            return
        # a worker that fell silent may be alive behind a broken network: wait the whole
        # grace; one whose connection closed is dead, or redials at once
        grace = self.worker_grace if w.link.silent else \
            min(self.worker_grace, config.CLOSED_WORKER_GRACE)
        for gid in sorted(running):
            rec = self.ledger.get(gid)
            if rec is None or rec.state is not JobState.RUNNING or rec.worker != w.wid:
                continue
            if grace > 0:
                self.ledger.park(gid, w.name, now + grace)
                self.parked.setdefault(w.name, set()).add(gid)
            else:
                rec.state = JobState.PARKED
                self.lost(rec, w.name, "closed its connection")
        if running and grace > 0:
            log.warning("worker %s lost with %d jobs; they wait %.0fs for it to come back",
                        w.name, len(running), grace)
        self._worker_changed()
        self.sweep_unschedulable()
        self._pump()

    def missing(self: ExecutorHost, rec: JobRecord, w: WorkerSession) -> None:
        """``w`` attached without a job it was given. Its process restarted: the run was
        lost with it (a retry, or the job fails). Its process was attached before: the
        ``Run`` never reached it (lost with a connection or with a restarted executor),
        so the job never ran there and is queued again without counting."""
        if not w.rejoined or rec.cancelled or rec.orphan:
            self.lost(rec, w.name, "came back without the job: it restarted")
            return
        back = self.ledger.requeue(rec.gid, w.name, count=False)
        if back is None:
            self.lost(rec, w.name, "came back without the job")
            return
        log.info("job %s re-queued: worker %s never received it", rec.key, w.name)
        self._enqueue(back)

    def lost(self: ExecutorHost, rec: JobRecord, worker: str, how: str) -> None:
        """The job's run is gone with its worker: re-run it (retries left) or fail it."""
        tried = ", ".join([*(rec.lost_on or []), worker])
        if rec.cancelled:
            self._end(rec, End.CANCELLED, "cancelled")
            return
        if rec.orphan:
            self._end(rec, End.WORKER_LOST,
                      f"worker {worker} was lost while running the job (it {how})")
            return
        back = self.ledger.requeue(rec.gid, worker, count=True)
        if back is not None:
            log.info("job %s re-queued: worker %s %s", rec.key, worker, how)
            self._enqueue(back)
            return
        self._end(rec, End.WORKER_LOST,
                  f"worker {worker} was lost while running the job (it {how}; tried on: "
                  f"{tried}); not retried again: a job whose workers keep dying may be "
                  f"what kills them")

    def park_resubmitted(self: ExecutorHost, rec: JobRecord, worker: str) -> None:
        """A reconnecting client resubmitted a job it saw start on ``worker``."""
        wid = self.worker_names.get(worker)
        if wid is not None:
            w = self.workers[wid]
            if rec.key in w.held:
                pass                         # its result is on the way: wait for it
            else:
                rec.state = JobState.PARKED
                self.missing(rec, w)
                return
        rec.state, rec.parked_on = JobState.PARKED, worker
        rec.deadline = self.clock() + max(self.worker_grace, self.settle)
        self.parked.setdefault(worker, set()).add(rec.gid)

    def unpark(self: ExecutorHost, rec: JobRecord) -> None:
        if rec.parked_on is not None:
            waiting = self.parked.get(rec.parked_on)
            if waiting is not None:
                waiting.discard(rec.gid)
                if not waiting:
                    del self.parked[rec.parked_on]
        rec.parked_on = None

    def recently_seen_fit(self: ExecutorHost, request: Resource) -> bool:
        """Could a worker that was lost lately (and may come back), or one draining now
        (replaced by a new one in a rolling update), run ``request``?"""
        return any(cap.request(request) for cap, _ in self.seen.values()) or any(
            w.draining and w.capacity.request(request) for w in self.workers.values())

    # -- results ------------------------------------------------------------------------
    def on_done(self: ExecutorHost, w: WorkerSession, msg: m.Done, payload: bytes) -> None:
        key = (msg.sess, msg.cid)
        announced = key in w.held      # a result it reported holding when it attached
        w.held.discard(key)
        end = End(msg.end)
        s = self.sessions.get(msg.sess)
        rec = s.jobs.get(msg.cid) if s is not None else None
        if rec is None:
            if s is None or s.closing or (s.resumed and msg.cid not in s.jobs):
                # stale: delivered before, or nobody wants it any more
                _send(w.link, m.Release(msg.sess, [msg.cid]))
            elif end is not End.HANDED_BACK:
                s.held[msg.cid] = HeldResult(w.wid, int(end), w.name, msg.message, payload)
            return
        if rec.state is JobState.RUNNING and rec.worker == w.wid:
            if end is End.HANDED_BACK:
                self.release_running(rec)
                if rec.cancelled:      # cancelled while the worker handed it back
                    self._end(rec, End.CANCELLED, "cancelled")
                    return
                back = self.ledger.requeue(rec.gid, w.name, count=False)
                if back is not None and not back.orphan:
                    self._enqueue(back)
                else:
                    self._end(rec, End.WORKER_LOST, f"worker {w.name} handed the job back")
                return
            self._end(rec, end, msg.message, payload, w.wid)
            return
        if end is End.HANDED_BACK:
            return
        if end is End.CANCELLED and not (rec.state is JobState.PARKED
                                         and rec.parked_on == w.name):
            # a stale copy, stopped because the job runs or waits elsewhere: not a result
            _send(w.link, m.Release(msg.sess, [msg.cid]))
            return
        # A result for a job that waits elsewhere (parked, re-queued, or re-run): taken
        # only from a worker that was given the job (the one it waits for, or one it was
        # given up on), never from any other: the first such result wins, other runs stop.
        # After a restart, a job resubmitted by its client waits for the workers to report
        # it (``deferred``): a result one reported holding as it attached was given to it
        # by the executor before (its client had not heard that it started), and is taken.
        ran_there = (rec.state is JobState.PARKED and rec.parked_on == w.name) or \
            w.name in (rec.lost_on or ()) or (announced and rec.gid in self.deferred)
        if not ran_there:
            log.warning("worker %s sent a result for job %s, which was never given to it: "
                        "dropped", w.name, rec.key)
            _send(w.link, m.Release(msg.sess, [msg.cid]))
            return
        if rec.state is JobState.QUEUED:
            self._unqueue(rec)
            self.undefer(rec)
        elif rec.state is JobState.PARKED:
            if rec.parked_on == w.name:
                self.ledger.reattached += 1   # its result came back with its worker
            self.unpark(rec)
        elif rec.worker is not None and rec.worker in self.workers:
            _send(self.workers[rec.worker].link, m.Kill(rec.sess, rec.cid))
        self._end(rec, end, msg.message, payload, w.wid)

    # -- clients that reconnect ----------------------------------------------------------
    def _placeholder(self: ExecutorHost, sess: int, user: str) -> ClientSession:
        """A session a worker told us about before its client came back (after a
        restart): its client has the grace to claim it."""
        now = self.clock()
        s = ClientSession(sess, user, "(waiting for its client)", None, resumed=False,
                          disconnected_at=now, created_at=now)
        self.sessions[sess] = s
        return s

    def claim(self: ExecutorHost, s: ClientSession, rec: JobRecord, msg: m.Submit,
              payload: bytes) -> None:
        """A reconnecting client resubmitted a job this executor knows."""
        s.unclaimed.discard(rec.cid)
        if rec.orphan:
            try:
                rec.request, rec.shape = self._request_for(msg.request)
            except (InvalidResource, UnknownResourceKind):
                pass     # keep what the allocation says
            rec.fid, rec.payload, rec.name = msg.fid, payload, msg.name
            rec.retries = self.retries if msg.retries is None else min(msg.retries, 10)
            self.ledger.claimed(rec)
            fn = s.fns.get(msg.fid)
            if fn is not None:
                fn.refs += 1
        if rec.state is JobState.RUNNING and rec.worker in self.workers and rec.alloc:
            _send(s.link, m.Started(rec.cid, self.workers[rec.worker].name,
                                    rec.alloc.wire()))

    def resume_done(self: ExecutorHost, s: ClientSession) -> None:
        """The client resubmitted everything it waits for; the rest is stale."""
        s.resumed = True
        s.expired = None
        if s.unclaimed:
            log.info("session of %s resumed without %d of its jobs: cancelling them",
                     s.name, len(s.unclaimed))
        for cid in sorted(s.unclaimed):
            rec = s.jobs.get(cid)
            if rec is not None:
                self._cancel(rec)
        s.unclaimed.clear()
        for rec in list(s.jobs.values()):
            if rec.orphan:
                self._cancel(rec) if rec.state is not JobState.RUNNING else \
                    _send(self.workers[rec.worker].link if rec.worker in self.workers
                          else None, m.Kill(rec.sess, rec.cid))
        for cid, held in list(s.held.items()):
            if held.wid is not None and held.wid in self.workers:
                _send(self.workers[held.wid].link, m.Release(s.sess, [cid]))
        s.held.clear()

    def defer(self: ExecutorHost, rec: JobRecord) -> None:
        self.deferred[rec.gid] = None

    def undefer(self: ExecutorHost, rec: JobRecord) -> None:
        self.deferred.pop(rec.gid, None)

    # -- time --------------------------------------------------------------------------
    def sweep_recovery(self: ExecutorHost) -> None:
        """Graces that ran out: clients that did not come back, workers that did not."""
        now = self.clock()
        for s in list(self.sessions.values()):
            if s.link is None and not s.closing and s.disconnected_at is not None \
                    and now - s.disconnected_at >= self.client_grace:
                self.end_session(s, f"its client did not come back within "
                                    f"{self.client_grace:g}s")
        for name, gids in list(self.parked.items()):
            for gid in sorted(gids):
                rec = self.ledger.get(gid)
                if rec is None or rec.state is not JobState.PARKED:
                    gids.discard(gid)
                elif rec.deadline <= now:
                    self.unpark(rec)
                    self.lost(rec, name, f"did not come back within "
                                         f"{max(self.worker_grace, self.settle):g}s")
            if not gids:
                self.parked.pop(name, None)
        if self.deferred and now >= self.started_mono + self.settle:
            deferred, self.deferred = self.deferred, {}
            for gid in deferred:
                rec = self.ledger.get(gid)
                if rec is not None and rec.state is JobState.QUEUED:
                    self._enqueue(rec)
        for name, (_, t) in list(self.seen.items()):
            if now - t > max(self.wait_for_workers, self.worker_grace):
                del self.seen[name]

    def recovery_status(self: ExecutorHost) -> dict[str, Any] | None:
        """What the executor waits for, or None when it waits for nothing."""
        orphans = self.ledger.orphans
        waiting_clients = [s.user for s in self.sessions.values()
                           if s.link is None and not s.closing]
        if not (self.parked or self.deferred or orphans or waiting_clients):
            return None
        return {
            "waiting_for_workers": {name: len(g) for name, g in self.parked.items()},
            "jobs_held_back": len(self.deferred),
            "jobs_waiting_for_their_client": orphans,
            "sessions_waiting_for_their_client": len(waiting_clients),
        }
