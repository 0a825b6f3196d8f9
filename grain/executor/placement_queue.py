"""Queued jobs for ``grain.executor.placement``: per user, per request shape. Pure code.

A queued job is a machine integer in an ``array('q')``: with a million queued jobs, what
placement holds per job is 8 bytes of array and one entry in the map of queued ids
(``where``: job id -> queue number, both ints), about 50 bytes in all, instead of an object
per job. The request object is held once per shape. Both structures are invisible to the
garbage collector: a dict of ints to ints is not tracked and an array is traversed in O(1),
where a dict of ints to queue objects and a deque of a million ints cost 20-30 ms in every
full collection, a stall of the executor's event loop.

The ids are stored in segments of at most ``SEGMENT`` entries: ``main``, the front one,
consumed from ``head``, and ``rest``, the ones behind it. One array of a million ids grew
by reallocation, and once glibc served an array that size from its heap (its threshold
for mapping a block on its own rises as big blocks come and go), each growth copied it
into fresh memory: an 8 MB copy, page fault by page fault, of 17-28 ms in one step
(``bench/stall.py``, resubmitting a million jobs). A segment's growth copies at most
512 KB.

Order within a queue is by job id (submission order). New jobs have the largest id so far
and are appended; a retried job keeps its original id and goes to a small heap (``late``)
beside the array, so re-queueing costs O(log retries), not an O(n) insertion. The head of
a queue is the smaller of the two fronts. The array is consumed from a moving ``head``
index and its consumed prefix is cut off once it is more than half the array (amortised
O(1) per job, as a deque).

Cancellation is lazy: ``where`` says which entries are alive; a cancelled id is only
removed from it (O(1)) and its entry becomes a tombstone, skipped when it reaches the
front. Cancelling from either end trims the array at once (cancelling a sweep back to front
is O(1) per job, not O(n) as ``deque.remove`` was), and a queue whose tombstones outnumber
its live jobs is compacted, which keeps memory bounded and the cost amortised O(1) per
cancellation (the compaction itself is linear in that one queue: about 50 ms per million
entries, once per that many cancellations).
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .grant import Grant
    from .jobtable import JobTable
    from .placement_index import Shape

#: tie-breaker for heap entries, so queue objects are never compared (and a queue's
#: valid entry is the one with its latest number)
SEQ = count()
_seq = SEQ

#: below this many tombstones a queue is never compacted
COMPACT_MIN = 256
#: the consumed prefix of a queue's array is cut off past this many entries (and half)
TRIM_MIN = 4096
#: the most ids one array of a queue holds (see the module docstring)
SEGMENT = 1 << 16


class JobQueue:
    """The queued job ids of one user with one request shape, in id order."""

    __slots__ = ("qid", "user", "shape", "where", "main", "rest", "head", "late", "live",
                 "dead", "key", "seq")

    def __init__(self, qid: int, user: User, shape: Shape, where: JobTable[int]) -> None:
        self.qid = qid              # this queue's number, the value in ``where``
        self.user = user
        self.shape = shape
        self.where = where          # the placement's map of queued ids (shared)
        self.main = array("q")      # ids in order; main[head:] is still queued
        self.rest: deque[array[int]] = deque()   # the segments behind ``main``, in order
        self.head = 0
        self.late: list[int] = []   # re-queued ids older than the array's tail (a heap)
        self.live = 0
        self.dead = 0               # tombstones still stored (approximate, for compaction)
        self.key = -1               # the head id this queue is filed under in its user's heap
        self.seq = -1               # the sequence of its valid entry there (-1: none)

    def push(self, gid: int) -> None:
        rest = self.rest
        tail = rest[-1] if rest else self.main
        if (not rest and len(tail) == self.head) or gid > tail[-1]:
            if len(tail) >= SEGMENT:
                tail = array("q")
                rest.append(tail)
            tail.append(gid)
        else:
            heapq.heappush(self.late, gid)
        self.live += 1

    def _next_segment(self) -> bool:
        """The front segment is used up: the next one becomes ``main``. False when there
        is none."""
        if not self.rest:
            return False
        self.main = self.rest.popleft()
        self.head = 0
        return True

    def peek(self) -> int | None:
        """The oldest live id, dropping tombstones on the way; None when empty."""
        where, me = self.where, self.qid
        while True:
            main, h = self.main, self.head
            n = len(main)
            while h < n and where.get(main[h]) != me:
                h += 1
                self.dead -= 1
            self.head = h
            if h < n or not self._next_segment():
                break
        late = self.late
        while late and where.get(late[0]) != me:
            heapq.heappop(late)
            self.dead -= 1
        if h < n:
            g = main[h]
            return late[0] if late and late[0] < g else g
        if late:
            return late[0]
        if n:
            self._reset()
        return None

    def pop(self, gid: int) -> None:
        """Remove ``gid``, which ``peek`` just returned (the caller updates ``where``)."""
        main, h = self.main, self.head
        if h < len(main) and main[h] == gid:
            h += 1
            if h > TRIM_MIN and 2 * h > len(main):
                del main[:h]
                h = 0
            self.head = h
            if h == len(main):
                self._next_segment()
        else:
            heapq.heappop(self.late)
        self.live -= 1

    def advance(self, gid: int) -> int | None:
        """``pop(gid)`` then ``peek()``, in one call (the placement loop's hot path)."""
        main, h, late = self.main, self.head, self.late
        n = len(main)
        if h < n and main[h] == gid:
            h += 1
        else:
            heapq.heappop(late)
        self.live -= 1
        where, me = self.where, self.qid
        while True:
            while h < n and where.get(main[h]) != me:
                h += 1
                self.dead -= 1
            if h < n or not self.rest:
                break
            main = self.main = self.rest.popleft()
            h, n = 0, len(main)
        if h > TRIM_MIN and 2 * h > n:
            del main[:h]
            n -= h
            h = 0
        self.head = h
        if late:
            while late and where.get(late[0]) != me:
                heapq.heappop(late)
                self.dead -= 1
            if late and (h == n or late[0] < main[h]):
                return late[0]
        if h < n:
            return main[h]
        if n:
            self._reset()
        return None

    def forget(self, gid: int) -> None:
        """``gid`` was cancelled (already removed from ``where``): trim or tombstone it."""
        self.live -= 1
        if not self.live:
            self._reset()   # nothing left: drop the tombstones too
            return
        main, rest, where, me = self.main, self.rest, self.where, self.qid
        tail = rest[-1] if rest else main
        if len(tail) > (0 if rest else self.head) and tail[-1] == gid:
            tail.pop()
            while True:   # earlier tombstones now at the end, in this segment or before
                low = 0 if rest else self.head
                while len(tail) > low and where.get(tail[-1]) != me:
                    tail.pop()
                    self.dead -= 1
                if len(tail) > low or not rest:
                    break
                rest.pop()
                tail = rest[-1] if rest else main
        elif len(main) > self.head and main[self.head] == gid:
            self.head += 1
        else:
            self.dead += 1
            if self.dead > COMPACT_MIN and self.dead > self.live:
                self.compact()

    def _reset(self) -> None:
        self.main = array("q")
        self.rest = deque()
        self.head = 0
        self.late = []
        self.dead = 0

    def compact(self) -> None:
        """Drop every tombstone (linear in this queue; amortised over the cancellations)."""
        where, me = self.where, self.qid
        live = [g for seg in self._segments() for g in seg if where.get(g) == me]
        self.main = array("q", live[:SEGMENT])
        self.rest = deque(array("q", live[i:i + SEGMENT])
                          for i in range(SEGMENT, len(live), SEGMENT))
        self.head = 0
        self.late = [g for g in self.late if where.get(g) == me]
        heapq.heapify(self.late)
        self.dead = len(live) + len(self.late) - self.live

    def _segments(self) -> list[array[int]]:
        """The stored ids, segment by segment (the front one from ``head``)."""
        return [self.main[self.head:], *self.rest]

    def ids(self) -> list[int]:
        """The live ids, oldest first."""
        where, me = self.where, self.qid
        return sorted({g for seg in (*self._segments(), self.late) for g in seg
                       if where.get(g) == me})


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
                 "running", "cores", "mem", "parked", "blocked_head", "last", "fq")

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
        self.last = 0                      # when it was last served (0: never)
        self.fq: JobQueue                  # its front when placement last ordered it (set
        #                                    for every user in placement's order)

    def file(self, q: JobQueue, head: int) -> None:
        """(Re-)file ``q`` in the heap under ``head``; any older entry becomes stale."""
        q.key = head
        q.seq = next(_seq)
        heapq.heappush(self.heap, (head, q.seq, q))

    def refile_front(self, q: JobQueue, head: int) -> None:
        """``q``, the front, now has ``head`` as its oldest job."""
        q.key = head
        q.seq = next(_seq)
        heapq.heapreplace(self.heap, (head, q.seq, q))

    def front(self) -> JobQueue | None:
        """The queue holding this user's oldest live job (among queues not parked), with
        ``q.key`` equal to that job's id; None when there is none."""
        h = self.heap
        while h:
            k, seq, q = h[0]
            if seq == q.seq and not q.late:     # the usual case: a live head in the array
                main, i = q.main, q.head
                if i < len(main) and main[i] == k and q.where.get(k) == q.qid:
                    return q
            if seq != q.seq:
                heapq.heappop(h)
                continue
            g = q.peek()
            if g is None:
                heapq.heappop(h)
                q.seq = -1
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
            self.file(q, q.key)
        self.parked.clear()
        self.blocked_head = False

    def key(self, inv_cores: float, inv_mem: float) -> float:
        """The weighted dominant share: lowest goes first."""
        c = self.cores * inv_cores
        m = self.mem * inv_mem
        return (c if c > m else m) / self.weight


class Chain(msgspec.Struct, gc=False, eq=False):
    """Jobs sharing one allocation: the first runs, the others wait behind it.

    Every running job has one while chaining is on (it is where later jobs may chain),
    so it is kept out of the garbage collector's sight like the grant (``gc=False``: no
    chain refers to another, nothing it refers to refers back) and its jobs are a tuple
    (of ints: untracked too), replaced when it changes; it is at most ``chain_depth + 1``
    long."""

    wid: int
    alloc: Grant
    queue: JobQueue          # whose (user) and what (shape) the allocation is
    jobs: tuple[int, ...]
