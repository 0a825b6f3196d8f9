"""The executor's side of client sessions: opening and resuming them, the messages a
client sends (functions, jobs, cancellations, acknowledgements), and the end of a session.

A session is named by its client and outlives its connection for the client's grace; see
``recovery`` for how a reconnecting client's jobs are matched with what workers report.
Part of ``Executor`` (``core``), as a mixin.
"""

from __future__ import annotations

import logging
import secrets
import sys
from typing import Any

import trio

from .. import config
from ..net.link import Link
from ..protocol import messages as m
from ..protocol.messages import End
from ..resource import InvalidResource, UnknownResourceKind
from .host import ExecutorHost
from .host import send as _send
from .jobtable import JobTable
from .ledger import JobRecord, JobState
from .sessions import ClientSession, FunctionEntry

log = logging.getLogger("grain.executor")

ENDED_KEPT = 100_000
"""Ended sessions remembered (ids, users, reasons: a few MB at most)."""



class ClientsMixin:
    """Client sessions (mixed into ``Executor``)."""

    async def serve_client(self: ExecutorHost, link: Link, user: str, info: dict[str, Any],
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

    def _open_session(self: ExecutorHost, link: Link, user: str, info: dict[str, Any]) -> ClientSession:
        sess = info.get("session")
        if type(sess) is not int or not 0 <= sess < 2 ** 63:
            sess = self._fresh_session_id()
        name = str(info.get("name") or link.peer)[:256]
        now = self.clock()
        ended = self.ended_sessions.get(sess) if info.get("resume") else None
        s = self.sessions.get(sess)
        if s is not None and (s.user != user or s.closing):
            # another user's session id (or one being torn down): never theirs to resume
            sess = self._fresh_session_id()
            s = None
        self._know_user(user)
        if s is None:
            # a resuming client unknown here (this executor restarted): until it says it
            # has resubmitted everything, what workers report for it may be claimed
            s = ClientSession(sess, user, name, link, connected_at=now, created_at=now,
                              resumed=not info.get("resume"))
            if ended is not None and ended[0] == user:
                # back after this executor ended its session (its grace ran out): its jobs
                # were stopped, so what it resubmits fails, saying so
                s.expired = ended[1]
            self.sessions[sess] = s
            return s
        if s.link is not None and s.link is not link:
            s.link.close("the client reconnected on a new connection")
        s.link, s.name, s.disconnected_at, s.connected_at = link, name, None, now
        if info.get("resume"):
            s.resumed = False   # until its ResumeDone: reports from workers may be claimed
            s.unclaimed = set(s.jobs)
        return s

    def _fresh_session_id(self: ExecutorHost) -> int:
        while True:
            sess = secrets.randbits(63)
            if sess not in self.sessions:
                return sess

    def _client_link_gone(self: ExecutorHost, s: ClientSession, link: Link) -> None:
        if s.link is not link:
            return    # replaced by a newer connection
        s.link = None
        if s.said_bye or self.client_grace <= 0:
            self.end_session(s, "the client left")
        else:
            s.disconnected_at = self.clock()
            log.info("client %s lost; its jobs are kept for %.0fs", s.name, self.client_grace)
        self._pump()

    def _on_client_message(self: ExecutorHost, s: ClientSession, msg: Any, payload: bytes) -> None:
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

    def _define(self: ExecutorHost, s: ClientSession, fid: int, data: bytes) -> None:
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

    def _free_function(self: ExecutorHost, s: ClientSession, fid: int) -> None:
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

    def _submit(self: ExecutorHost, s: ClientSession, msg: m.Submit, payload: bytes) -> None:
        if s.expired is not None:
            self._reply(s, msg.cid, End.EXECUTOR_LOST,
                        f"the executor had ended this session ({s.expired}): its jobs were "
                        f"stopped and their results dropped")
            return
        rec = s.jobs.get(msg.cid)
        if rec is not None:
            self.claim(s, rec, msg, payload)   # resubmitted by a reconnecting client
            return
        if msg.cid in s.unacked:
            return    # its result is on its way to the client already
        held = s.held.pop(msg.cid, None)
        if held is not None and msg.started_on is not None and held.worker \
                and held.worker != msg.started_on and not held.dispatched:
            # the client saw the job start on another worker, and this result came from a
            # worker's report after a restart: a stale copy's, not this one's to answer
            # (one this executor ran there itself, after the first worker was lost or
            # handed the job back, is the job's)
            log.warning("a result for job %s came from worker %s, but it started on %s: "
                        "dropped", (s.sess, msg.cid), held.worker, msg.started_on)
            if held.wid is not None and held.wid in self.workers:   # it may forget it
                _send(self.workers[held.wid].link, m.Release(s.sess, [msg.cid]))
            held = None
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
        self._know_user(s.user)
        if self.placement.queue_full(s.user):
            self._reply(s, msg.cid, End.REFUSED,
                        f"user {s.user} already has {self.policy(s.user).max_queued} jobs "
                        f"queued, the limit (max-queued in the client tokens file)")
            return
        retries = self.retries if msg.retries is None else min(msg.retries, 10)
        # the job's name is the same string for most of a session's jobs: one copy of it,
        # not one per queued job (~56 bytes each; interned strings are freed when unused)
        rec = self.ledger.submit(s.sess, msg.cid, s.user, request, shape, msg.fid, payload,
                                 retries, sys.intern(msg.name), self.clock())
        s.jobs[msg.cid] = rec
        fn.refs += 1
        if msg.started_on is not None:
            self.park_resubmitted(rec, msg.started_on)
            return
        if not self._could_ever_fit(request, shape) and not self._may_wait(request):
            self._end(rec, End.UNSCHEDULABLE, self._unfit_message(request))
            return
        self._enqueue(rec, resumed=not s.resumed)

    def _know_user(self: ExecutorHost, user: str) -> None:
        """Tell placement a user's weight and limits (again, when the tokens changed)."""
        if user not in self._known_users or self._policy_changed:
            policy = self.policy(user)
            self.placement.set_user(user, weight=policy.weight, max_cores=policy.max_cores,
                                    max_queued=policy.max_queued)
            self._known_users.add(user)

    _policy_changed = False

    def policies_changed(self: ExecutorHost) -> None:
        """The user policies changed (tokens file re-read): apply them again."""
        self._policy_changed = True
        for user in list(self._known_users):
            self._know_user(user)
        self._policy_changed = False

    def _cancel(self: ExecutorHost, rec: JobRecord) -> None:
        if rec.state is JobState.QUEUED:
            self._unqueue(rec)
            self.undefer(rec)
            self._end(rec, End.CANCELLED, "cancelled")
        elif rec.state is JobState.PARKED:
            self.unpark(rec)
            self._end(rec, End.CANCELLED, "cancelled")
        else:
            # its end comes from the worker; should the worker hand it back or be lost
            # meanwhile, it ends there and then instead of running again
            rec.cancelled = True
            w = self.workers.get(rec.worker) if rec.worker is not None else None
            if w is not None:
                _send(w.link, m.Kill(rec.sess, rec.cid))

    def _ack(self: ExecutorHost, s: ClientSession, cids: list[int]) -> None:
        by_worker: dict[int, list[int]] = {}
        for cid in cids:
            wid = s.unacked.pop(cid, None)
            if wid is not None:
                by_worker.setdefault(wid, []).append(cid)
        for wid, done in by_worker.items():
            w = self.workers.get(wid)
            if w is not None:
                _send(w.link, m.Release(s.sess, done))

    def end_session(self: ExecutorHost, s: ClientSession, why: str) -> None:
        """A session is over for good: drop its queue, kill its jobs, free its code."""
        s.closing = True
        log.info("session of %s (user %s) ends: %s", s.name, s.user, why)
        self.ended_sessions[s.sess] = (s.user, why, self.clock())
        if len(self.ended_sessions) > ENDED_KEPT:
            del self.ended_sessions[next(iter(self.ended_sessions))]
        # Every worker is told: one that reconnected (or this executor, restarted) does not
        # know every session that ran there, and a worker keeps a session's idle runners
        # and held results until told. One small message per worker per session.
        notify = set(self.workers)
        for wid in notify:
            w = self.workers[wid]
            w.sessions.discard(s.sess)
            _send(w.link, m.EndSession(s.sess))   # kills its running jobs there
        # Its queued and parked jobs end, in steps when there are many (a million queued
        # jobs must not stall everyone else); none of them starts meanwhile (``_dispatch``
        # checks). A running job on a worker not told yet (re-attached) has it told then.
        self.end_later(s.jobs.key_chunks(), End.CANCELLED, why, s, notify)
        # a million results a client never acknowledged take a while to free: in steps
        self.free_later(s.held)
        self.free_later(s.unacked)
        s.held, s.unacked = JobTable(), JobTable()
        s.bundle = None
        for fid in list(s.fns):
            if not s.fns[fid].refs:
                self._free_function(s, fid)
        self._forget_if_done(s)

    def _forget_if_done(self: ExecutorHost, s: ClientSession) -> None:
        if s.closing and not s.jobs and s.link is None:
            for fid in list(s.fns):
                self._free_function(s, fid)
            self.sessions.pop(s.sess, None)
