"""The job ledger: every job's state machine, and the guarantee that each job ends once.

Pure code, no I/O. The executor's server feeds it events; it answers what happened::

    QUEUED --start--> RUNNING --end--> (removed: OK | failed | cancelled)
       ^                 |
       +---- requeue ----+   (worker lost, retries left)
    QUEUED --end--> (removed)   (cancelled, unschedulable, client gone)

``end`` returns the record only the first time; any later report about the same job (a
late result after a kill, a duplicate after a retry) returns ``None`` and is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..resource import Resource


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"


@dataclass(slots=True)
class JobRecord:
    """One job, from submission to its end."""

    gid: int
    client: int
    cid: int
    request: Resource
    gfn: int
    payload: bytes
    retries: int
    state: JobState = JobState.QUEUED
    worker: int | None = None
    alloc: Resource | None = None
    alloc_wire: Any = None
    attempts: int = 0
    lost_on: list[str] = field(default_factory=list)
    submitted_at: float = 0.0
    started_at: float = 0.0


class Ledger:
    """All jobs that have not ended, by global id, with counters for metrics."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self._next = 1
        self.submitted = 0
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        self.retried = 0

    def submit(self, client: int, cid: int, request: Resource, gfn: int,
               payload: bytes, retries: int) -> JobRecord:
        gid = self._next
        self._next += 1
        rec = JobRecord(gid, client, cid, request, gfn, payload, retries,
                        submitted_at=time.monotonic())
        self.jobs[gid] = rec
        self.submitted += 1
        return rec

    def start(self, gid: int, worker: int, alloc: Resource, alloc_wire: Any) -> JobRecord:
        rec = self.jobs[gid]
        if rec.state is not JobState.QUEUED:
            raise ValueError(f"job {gid} started twice")
        rec.state, rec.worker, rec.alloc, rec.alloc_wire = JobState.RUNNING, worker, alloc, alloc_wire
        rec.attempts += 1
        rec.started_at = time.monotonic()
        self.started += 1
        return rec

    def requeue(self, gid: int, worker_name: str) -> JobRecord | None:
        """The job's worker was lost. Returns the record when it may run again (retries
        left), else ``None``: the caller then ends it as lost."""
        rec = self.jobs.get(gid)
        if rec is None or rec.state is not JobState.RUNNING:
            return None
        rec.lost_on.append(worker_name)
        if rec.attempts > rec.retries:
            return None
        rec.state, rec.worker, rec.alloc, rec.alloc_wire = JobState.QUEUED, None, None, None
        self.retried += 1
        return rec

    def end(self, gid: int, ok: bool = True, cancelled: bool = False) -> JobRecord | None:
        """The job ended. Returns its record the first time, ``None`` ever after."""
        rec = self.jobs.pop(gid, None)
        if rec is None:
            return None
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

    def running_count(self) -> int:
        return sum(1 for r in self.jobs.values() if r.state is JobState.RUNNING)
