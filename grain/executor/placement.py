"""Placement: which queued job starts on which worker, now. Pure code, no I/O.

Policy (EASY backfilling without run-time estimates):

- Jobs are considered in submission order (their global id). The first job that fits
  nowhere is the *head*; it gets a *reservation* on the worker where it will fit soonest
  (the one with the most of its request already free among those big enough).
- Later jobs may start before the head ("backfill") only on other workers: nothing new
  starts on the reserved worker, which therefore only drains until the head fits. The head
  is never starved.
- Jobs with the same request are interchangeable, so the queue is kept per request shape:
  a pass costs O(shapes + placements), not O(queue), even with a million queued jobs.
- Among workers where a job fits, the first registered wins (first fit), which packs jobs
  and leaves whole workers free for big requests.

Chaining (``chain``): when nothing more fits, the head of the queue may be queued *behind*
a running job of the same request on that job's allocation, to start on the same cores the
moment it ends, without a round trip through the executor. Only the head is ever chained
(so order is kept and nobody is delayed but the chained job itself), at most one job per
allocation, and only where the caller's ``can_chain`` agrees (the executor allows it for
jobs of a function whose jobs are observed to be short).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..resource import Resource, to_wire


def shape_of(request: Resource) -> Any:
    """A hashable key: equal for requests that are interchangeable for placement."""
    return repr(to_wire(request))


@dataclass(slots=True)
class Pending:
    """A queued job as placement sees it."""

    gid: int
    request: Resource
    shape: Any


@dataclass(slots=True, eq=False)
class _Chain:
    """Jobs sharing one allocation: the first runs, the others wait behind it."""

    wid: int
    alloc: Resource
    shape: Any
    jobs: deque[int]


@dataclass(slots=True)
class WorkerState:
    """A registered worker's capacity: ``total`` is never mutated, ``free`` is."""

    wid: int
    name: str
    total: Resource
    free: Resource
    running: set[int] = field(default_factory=set)


class Placement:
    """The executor's queue and the workers' free resources."""

    def __init__(self, chain_depth: int = 0) -> None:
        self.workers: dict[int, WorkerState] = {}
        self._shapes: dict[Any, deque[Pending]] = {}
        self._queued: dict[int, Pending] = {}
        self.reserved_for: tuple[int, int] | None = None  # (head gid, worker id) of last pass
        # chaining: the jobs sharing each allocation, and the chains with room left
        self.chain_depth = chain_depth
        self._chain_of: dict[int, _Chain] = {}
        self._open: dict[Any, dict[_Chain, None]] = {}
        self._cordoned: set[int] = set()

    # -- workers -------------------------------------------------------------------
    def add_worker(self, wid: int, name: str, total: Resource, free: Resource) -> None:
        """Register a worker; ``total`` and ``free`` must be distinct objects."""
        self.workers[wid] = WorkerState(wid, name, total, free)

    def remove_worker(self, wid: int) -> set[int]:
        """Forget a worker; returns the ids of the jobs that were running on it."""
        w = self.workers.pop(wid, None)
        self._cordoned.discard(wid)
        if w is None:
            return set()
        for gid in w.running:
            ch = self._chain_of.pop(gid, None)
            if ch is not None:
                self._open.get(ch.shape, {}).pop(ch, None)
        return set(w.running)

    def attach(self, wid: int, gid: int, alloc: Resource) -> bool:
        """Record a job found running on ``wid`` with exactly ``alloc`` (a worker that
        reconnects reports it); False when that is not free there."""
        w = self.workers.get(wid)
        if w is None:
            return False
        try:
            w.free.take(alloc)
        except ValueError:
            return False
        w.running.add(gid)
        return True

    def cordon(self, wid: int) -> None:
        """Start nothing new on ``wid`` (it is draining); its running jobs stay."""
        self._cordoned.add(wid)

    def could_ever_fit(self, request: Resource) -> bool:
        """True when some registered worker, empty, could run ``request``."""
        return any(w.total.request(request) for w in self.workers.values()
                   if w.wid not in self._cordoned)

    # -- queue -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queued)

    def enqueue(self, gid: int, request: Resource, shape: Any = None) -> None:
        """Queue a job. A re-queued (retried) job keeps its place by its original id."""
        p = Pending(gid, request, shape_of(request) if shape is None else shape)
        dq = self._shapes.get(p.shape)
        if dq is None:
            self._shapes[p.shape] = deque((p,))
        elif dq[-1].gid < gid:
            dq.append(p)
        else:
            dq.insert(bisect_left([x.gid for x in dq], gid), p)
        self._queued[gid] = p

    def dequeue(self, gid: int) -> bool:
        """Remove a queued job (cancelled). False when it is not queued."""
        p = self._queued.pop(gid, None)
        if p is None:
            return False
        dq = self._shapes[p.shape]
        dq.remove(p)
        if not dq:
            del self._shapes[p.shape]
        return True

    def is_queued(self, gid: int) -> bool:
        return gid in self._queued

    def shapes(self) -> list[tuple[Resource, list[int]]]:
        """(request, queued ids) per shape, for sweeps over what is waiting."""
        return [(dq[0].request, [p.gid for p in dq]) for dq in self._shapes.values()]

    # -- running ---------------------------------------------------------------------
    def release(self, wid: int, gid: int, alloc: Resource) -> int | None:
        """A job ended. When jobs are chained behind it, the allocation passes on and the
        id of the job that now runs on it is returned; otherwise the allocation goes back
        to its worker (if the worker is still there)."""
        w = self.workers.get(wid)
        ch = self._chain_of.pop(gid, None)
        if w is None or gid not in w.running:
            return None
        w.running.discard(gid)
        if ch is None:
            w.free.dealloc(alloc)
            return None
        was_current = ch.jobs[0] == gid
        ch.jobs.remove(gid)
        if ch.jobs:
            if len(ch.jobs) <= self.chain_depth:
                self._open.setdefault(ch.shape, {})[ch] = None
            return ch.jobs[0] if was_current else None
        self._open.get(ch.shape, {}).pop(ch, None)
        w.free.dealloc(ch.alloc)
        return None

    def chain(self, depth_for: Callable[[int, int], int], tries: int = 4
              ) -> list[tuple[int, int, Resource, int]]:
        """Queue heads behind running jobs of the same shape: (job, worker, allocation,
        the job it waits behind). ``depth_for(head, tail)`` says how many jobs may wait
        on one allocation for this pair (0: none), capped by ``chain_depth``. Call after
        ``schedule``."""
        out: list[tuple[int, int, Resource, int]] = []
        while self._shapes and self.chain_depth:
            key = min(self._shapes, key=lambda k: self._shapes[k][0].gid)
            dq = self._shapes[key]
            head = dq[0]
            opens = self._open.get(key)
            found = None
            for ch in list(opens or ())[:tries]:
                if ch.wid not in self._cordoned and len(ch.jobs) <= min(depth_for(head.gid, ch.jobs[-1]), self.chain_depth):
                    found = ch
                    break
            if found is None:
                break
            tail = found.jobs[-1]
            found.jobs.append(head.gid)
            if len(found.jobs) > self.chain_depth:
                del opens[found]
            dq.popleft()
            del self._queued[head.gid]
            if not dq:
                del self._shapes[key]
            self._chain_of[head.gid] = found
            self.workers[found.wid].running.add(head.gid)
            out.append((head.gid, found.wid, found.alloc, tail))
        return out

    def schedule(self) -> list[tuple[int, int, Resource]]:
        """Start what can start now: a list of (job id, worker id, allocation)."""
        out: list[tuple[int, int, Resource]] = []
        if not self._shapes or not self.workers:
            return out
        heads = [(dq[0].gid, key) for key, dq in self._shapes.items()]
        heapq.heapify(heads)
        reserved: int | None = None
        self.reserved_for = None
        workers = [w for w in self.workers.values() if w.wid not in self._cordoned]
        cursor: dict[Any, int] = {}
        while heads:
            _, key = heapq.heappop(heads)
            dq = self._shapes[key]
            req = dq[0].request
            blocked = False
            while dq:
                # free resources only shrink during a pass: workers that failed this
                # shape earlier in the pass need no second look
                i = self._first_fit(workers, req, reserved, cursor.get(key, 0))
                cursor[key] = i
                if i == len(workers):
                    blocked = True
                    break
                w = workers[i]
                p = dq.popleft()
                del self._queued[p.gid]
                w.running.add(p.gid)
                alloc = w.free.alloc(req)
                if self.chain_depth:
                    ch = self._chain_of[p.gid] = _Chain(w.wid, alloc, key, deque((p.gid,)))
                    self._open.setdefault(key, {})[ch] = None
                out.append((p.gid, w.wid, alloc))
                if dq and heads and dq[0].gid > heads[0][0]:
                    heapq.heappush(heads, (dq[0].gid, key))  # an older shape goes first
                    break
            if not dq:
                del self._shapes[key]
            elif blocked and reserved is None:
                # dq[0] is the oldest job that fits nowhere: the head. Hold a worker for it.
                reserved = self._reserve(workers, req)
                if reserved is not None:
                    self.reserved_for = (dq[0].gid, reserved)
        return out

    @staticmethod
    def _first_fit(workers: list[WorkerState], req: Resource, reserved: int | None,
                   start: int = 0) -> int:
        """Index of the first worker from ``start`` where ``req`` fits now, or
        ``len(workers)``."""
        for i in range(start, len(workers)):
            w = workers[i]
            if w.wid != reserved and w.free.request(req):
                return i
        return len(workers)

    @staticmethod
    def _reserve(workers: list[WorkerState], req: Resource) -> int | None:
        """The worker where ``req`` will fit soonest: big enough, most already free."""
        best, best_score = None, None
        for w in workers:
            if not w.total.request(req):
                continue
            stat = w.free.stat()
            score = sum(float(a) / float(t) if t else 1.0
                        for kind, (a, t) in stat.items() if kind in req.kinds())
            if best_score is None or score > best_score:
                best, best_score = w.wid, score
        return best
