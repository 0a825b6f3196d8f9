"""The job ledger: every job's state machine, and the guarantee that each job ends once.

Pure code, no I/O. The executor feeds it events; it answers what happened::

    QUEUED --start--> RUNNING --end--> (removed: OK | failed | cancelled)
       ^                 |  \\
       +---- requeue ----+   +--park--> PARKED --attach--> RUNNING
       |                                  |   (its worker came back and reports it)
       +------------ lost ----------------+   (the worker did not come back in time)
    QUEUED --end--> (removed)   (cancelled, unschedulable, client gone)

A job is known by its client's session and the client's id for it (``key``); ``gid`` is
the executor's own number, which orders jobs by submission. ``end`` returns the record
only the first time; any later report about the same job (a late result after a kill, a
duplicate after a re-attach) returns ``None`` and is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from enum import Enum

import msgspec

from ..resource import Resource
from .grant import Grant
from .jobtable import JobTable


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PARKED = "parked"    # its worker is away; waiting for it to come back and report


class JobRecord(msgspec.Struct, gc=False, eq=False):
    """One job, from submission to its end. Kept small: a million may be queued.

    Not tracked by Python's cyclic garbage collector (``gc=False``): a record refers to
    no other record and nothing it refers to refers back, and a million tracked records
    made every full collection stall the event loop for a second."""

    gid: int
    sess: int
    cid: int
    user: str
    request: Resource          # shared by every job of the same request
    shape: Hashable
    fid: int
    payload: bytes
    retries: int
    name: str = ""
    state: JobState = JobState.QUEUED
    worker: int | None = None       # the worker it runs (RUNNING) on
    alloc: Grant | None = None
    attempts: int = 0
    lost_on: list[str] | None = None
    parked_on: str | None = None    # PARKED: the name of the worker it waits for
    deadline: float = 0.0           # PARKED: when to give up on that worker
    submitted_at: float = 0.0
    started_at: float = 0.0
    orphan: bool = False            # reported by a worker before its client came back
    cancelled: bool = False         # its client cancelled it while it ran: never re-run it

    @property
    def key(self) -> tuple[int, int]:
        return self.sess, self.cid


class Ledger:
    """All jobs that have not ended, by executor id, with counters for metrics."""

    def __init__(self) -> None:
        self.jobs: JobTable[JobRecord] = JobTable()   # a dict that grows in small steps
        self._next = 1
        self.submitted = 0
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        self.retried = 0
        self.handed_back = 0
        self.reattached = 0
        self.orphans = 0        # adopted jobs whose client has not claimed them yet

    def new_gid(self) -> int:
        gid = self._next
        self._next += 1
        return gid

    def submit(self, sess: int, cid: int, user: str, request: Resource, shape: Hashable,
               fid: int, payload: bytes, retries: int, name: str = "",
               now: float | None = None) -> JobRecord:
        rec = JobRecord(self.new_gid(), sess, cid, user, request, shape, fid, payload,
                        retries, name,
                        submitted_at=time.monotonic() if now is None else now)
        self.jobs[rec.gid] = rec
        self.submitted += 1
        return rec

    def adopt(self, sess: int, cid: int, user: str, fid: int, worker: int, alloc: Grant,
              request: Resource, shape: Hashable, name: str, started_at: float) -> JobRecord:
        """A job a worker reports running that this executor did not know (after a
        restart): RUNNING at once, an orphan until its client claims it."""
        rec = JobRecord(self.new_gid(), sess, cid, user, request, shape, fid, b"", 0, name,
                        JobState.RUNNING, worker, alloc, attempts=1,
                        submitted_at=started_at, started_at=started_at, orphan=True)
        self.jobs[rec.gid] = rec
        self.submitted += 1     # a job this executor now answers for
        self.reattached += 1
        self.orphans += 1
        return rec

    def claimed(self, rec: JobRecord) -> None:
        """An adopted job's client claimed it: it is an ordinary job from now on."""
        if rec.orphan:
            rec.orphan = False
            self.orphans -= 1

    def start(self, gid: int, worker: int, alloc: Grant,
              now: float | None = None) -> JobRecord:
        rec = self.jobs[gid]
        if rec.state is not JobState.QUEUED:
            raise ValueError(f"job {gid} started twice")
        rec.state, rec.worker, rec.alloc = JobState.RUNNING, worker, alloc
        rec.attempts += 1
        rec.started_at = time.monotonic() if now is None else now
        self.started += 1
        return rec

    def park(self, gid: int, worker_name: str, deadline: float) -> JobRecord | None:
        """The job's worker went away: wait until ``deadline`` for it to come back."""
        rec = self.jobs.get(gid)
        if rec is None or rec.state is not JobState.RUNNING:
            return None
        rec.state, rec.worker, rec.alloc = JobState.PARKED, None, None
        rec.parked_on, rec.deadline = worker_name, deadline
        return rec

    def attach(self, gid: int, worker: int, alloc: Grant) -> JobRecord:
        """A parked (or queued, or resubmitted) job was found running on ``worker``."""
        rec = self.jobs[gid]
        rec.state, rec.worker, rec.alloc = JobState.RUNNING, worker, alloc
        rec.parked_on = None
        self.reattached += 1
        return rec

    def requeue(self, gid: int, worker_name: str, count: bool = True) -> JobRecord | None:
        """The job's worker was lost (``count``) or handed it back (not counted). Returns
        the record when it may run again, else ``None``: the caller then ends it as lost."""
        rec = self.jobs.get(gid)
        if rec is None or rec.state is JobState.QUEUED:
            return None
        if count:
            if rec.lost_on is None:
                rec.lost_on = []
            rec.lost_on.append(worker_name)
            if len(rec.lost_on) > rec.retries:
                return None
            self.retried += 1
        else:
            rec.attempts = max(0, rec.attempts - 1)
            self.handed_back += 1
        rec.state, rec.worker, rec.alloc, rec.parked_on = JobState.QUEUED, None, None, None
        return rec

    def end(self, gid: int, ok: bool = True, cancelled: bool = False) -> JobRecord | None:
        """The job ended. Returns its record the first time, ``None`` ever after."""
        rec = self.jobs.pop(gid, None)
        if rec is None:
            return None
        if rec.orphan:
            self.orphans -= 1
        rec.payload = b""
        if cancelled:
            self.cancelled += 1
        elif ok:
            self.finished += 1
        else:
            self.failed += 1
        return rec

    def get(self, gid: int) -> JobRecord | None:
        return self.jobs.get(gid)

