"""Queued jobs for ``grain.executor.placement``: per user, per request shape. Pure code.

A queued job is an int in a deque: with a million queued jobs, what placement holds per
job is one deque slot and one entry in the id -> queue map (the id int itself is shared
with the caller), about 50 bytes, instead of an object per job. The request object is
held once per shape.

Order within a queue is by job id (submission order). New jobs have the largest id so far
and are appended; a retried job keeps its original id and goes to a small heap (``late``)
beside the deque, so re-queueing costs O(log retries), not an O(n) insertion. The head of
a queue is the smaller of the two fronts.

Cancellation is lazy: the caller's map of queued ids (``where``) says which entries are
alive; a cancelled id is only removed from that map (O(1)) and its entry becomes a
tombstone, skipped when it reaches the front. Cancelling from either end trims the deque
at once (cancelling a sweep back to front is O(1) per job, not O(n) as ``deque.remove``
was), and a queue whose tombstones outnumber its live jobs is compacted, which keeps memory
bounded and the cost amortised O(1) per cancellation (the compaction itself is linear in
that one queue, at C speed: about 25 ms per million entries).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from itertools import count, filterfalse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .placement_index import Shape

#: tie-breaker for heap entries, so queue objects are never compared
_seq = count()

#: below this many tombstones a queue is never compacted
COMPACT_MIN = 256


class JobQueue:
    """The queued job ids of one user with one request shape, in id order."""

    __slots__ = ("user", "shape", "where", "main", "late", "live", "dead", "key", "seq",
                 "gone")

    def __init__(self, user: User, shape: Shape, where: dict[int, JobQueue]) -> None:
        self.user = user
        self.shape = shape
        self.where = where          # the placement's map of queued ids (shared)
        self.main: deque[int] = deque()
        self.late: list[int] = []   # re-queued ids older than the deque's tail (a heap)
        self.live = 0
        self.dead = 0               # tombstones still stored (approximate, for compaction)
        self.key = -1               # the head id this queue is filed under in its user's heap
        self.seq = -1               # the sequence of its valid entry there
        self.gone = False           # emptied and dropped by its user

    def push(self, gid: int) -> None:
        main = self.main
        if not main or gid > main[-1]:
            main.append(gid)
        else:
            heapq.heappush(self.late, gid)
        self.live += 1

    def peek(self) -> int | None:
        """The oldest live id, dropping tombstones on the way; None when empty."""
        main, late, where = self.main, self.late, self.where
        while main and where.get(main[0]) is not self:
            main.popleft()
            self.dead -= 1
        while late and where.get(late[0]) is not self:
            heapq.heappop(late)
            self.dead -= 1
        if main:
            g = main[0]
            return late[0] if late and late[0] < g else g
        return late[0] if late else None

    def pop(self, gid: int) -> None:
        """Remove ``gid``, which ``peek`` just returned (the caller updates ``where``)."""
        main = self.main
        if main and main[0] == gid:
            main.popleft()
        else:
            heapq.heappop(self.late)
        self.live -= 1

    def forget(self, gid: int) -> None:
        """``gid`` was cancelled (already removed from ``where``): trim or tombstone it."""
        self.live -= 1
        main, where = self.main, self.where
        if main and main[-1] == gid:
            main.pop()
            while main and where.get(main[-1]) is not self:   # earlier tombstones at the end
                main.pop()
                self.dead -= 1
        elif main and main[0] == gid:
            main.popleft()
        else:
            self.dead += 1
            if self.dead > COMPACT_MIN and self.dead > self.live:
                self.compact()

    def compact(self) -> None:
        """Drop every tombstone (linear in this queue; amortised over the cancellations)."""
        where = self.where
        dead = {g for g in self.main if where.get(g) is not self}
        dead.update(g for g in self.late if where.get(g) is not self)
        self.main = deque(filterfalse(dead.__contains__, self.main))
        self.late = [g for g in self.late if g not in dead]
        heapq.heapify(self.late)
        self.dead = len(self.main) + len(self.late) - self.live

    def ids(self) -> list[int]:
        """The live ids, oldest first."""
        where = self.where
        return sorted({g for g in (*self.main, *self.late) if where.get(g) is self})


@dataclass(frozen=True, slots=True)
class UserStats:
    """One user's figures, for status pages and metrics.

    ``share`` is the dominant share (the larger of cores in use / cluster cores and memory
    in use / cluster memory, 0..1); ``weighted_share`` is ``share / weight``, the figure
    placement orders users by (lowest first)."""

    running: int
    queued: int
    cores: int
    memory: float
    share: float
    weighted_share: float
    weight: float
    max_cores: int | None
    max_queued: int | None


class User:
    """A user's queues (one per shape), its limits and what it holds now."""

    __slots__ = ("name", "weight", "max_cores", "max_queued", "queues", "heap", "queued",
                 "running", "cores", "mem", "parked", "blocked_head")

    def __init__(self, name: str) -> None:
        self.name = name
        self.weight = 1.0
        self.max_cores: int | None = None
        self.max_queued: int | None = None
        self.queues: dict[object, JobQueue] = {}    # by shape key
        # (head id, seq, queue): the user's queues by their oldest job. Entries go stale
        # (a queue's head moves on); an entry is valid while its seq is the queue's seq,
        # and a valid key may be lower than the queue's head, never higher.
        self.heap: list[tuple[int, int, JobQueue]] = []
        self.queued = 0
        self.running = 0
        self.cores = 0          # held by the user's allocations (a chain counts once)
        self.mem = 0.0
        self.parked: list[JobQueue] = []   # queues set aside for the rest of a pass
        self.blocked_head = False          # this pass met the user's head, which fit nowhere

    def file(self, q: JobQueue, head: int) -> None:
        """(Re-)file ``q`` in the heap under ``head``; any older entry becomes stale."""
        q.key = head
        q.seq = next(_seq)
        heapq.heappush(self.heap, (head, q.seq, q))

    def front(self) -> JobQueue | None:
        """The queue holding this user's oldest live job (among queues not parked), with
        ``q.key`` equal to that job's id; None when there is none."""
        h = self.heap
        while h:
            k, seq, q = h[0]
            if seq != q.seq or q.gone:
                heapq.heappop(h)
                continue
            g = q.peek()
            if g is None:
                heapq.heappop(h)
                self.drop(q)
                continue
            if g != k:
                q.key = g
                q.seq = next(_seq)
                heapq.heapreplace(h, (g, q.seq, q))
                continue
            return q
        return None

    def next_key(self) -> int | None:
        """A lower bound of the oldest job of this user's *other* queues than the front
        (the root's children): the front may keep placing while its head is below it."""
        h = self.heap
        if len(h) < 2:
            return None
        return h[1][0] if len(h) < 3 or h[1][0] < h[2][0] else h[2][0]

    def park(self, q: JobQueue) -> None:
        """Set ``q`` (the front) aside for the rest of the pass."""
        heapq.heappop(self.heap)
        q.seq = -1
        self.parked.append(q)

    def unpark(self) -> None:
        for q in self.parked:
            if not q.gone:
                self.file(q, q.key)
        self.parked.clear()
        self.blocked_head = False

    def drop(self, q: JobQueue) -> None:
        """``q`` is empty: forget it (its shape too keeps no reference)."""
        if self.queues.get(q.shape.key) is q:
            del self.queues[q.shape.key]
        q.gone = True
        q.shape.queues.pop(q, None)

    def key(self, inv_cores: float, inv_mem: float) -> float:
        """The weighted dominant share: lowest goes first."""
        c = self.cores * inv_cores
        m = self.mem * inv_mem
        return (c if c > m else m) / self.weight
