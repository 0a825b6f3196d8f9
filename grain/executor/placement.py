"""Placement: which queued job starts on which worker, now. Pure code: no I/O, no clock.

Policy, within one user (as before users existed): EASY backfilling without run-time
estimates.

- A user's jobs are considered in submission order (their global id). The first one that
  fits nowhere is the user's *head*; it may get a *reservation* on the worker where it will
  fit soonest (among those big enough for it, the one with the most free cores, then
  memory). Nothing else starts on a reserved worker, which therefore only drains until the
  head fits: the head is never starved by later jobs.
- Later jobs may start before the head ("backfill"), only on other workers.
- Jobs with the same request are interchangeable, so a user's queue is kept per request
  shape; a job id is all that is stored per queued job.

Between users: dominant-resource fairness (DRF) over cores and memory, weighted. A user's
*dominant share* is the larger of (cores it holds / cluster cores) and (memory it holds /
cluster memory); divided by the user's weight (default 1) it orders the users, lowest
first: the next job placed is the next job of the user with the lowest weighted share, and
shares are updated after every placement, so users interleave in proportion to their
weights and a user alone takes the whole cluster. A user that asks little goes first:
when Alice's thousands of jobs fill the cluster and Bob submits one, Bob's share is 0, so
his job takes the very next capacity released that fits it. DRF (rather than weighted fair
queueing by job count) is used because jobs differ in size: a user of whole-node jobs and
a user of one-core jobs get equal parts of the cluster, not equal numbers of jobs, and
memory-heavy jobs are charged for the memory they keep others from using.

How EASY works across users (the reasoning is in docs/scaling.md, "Placement"):

- The reservation goes to the blocked head of the *most deserving* user: in a pass users
  are visited in DRF order (among equal shares, the user served least recently first,
  then the one with the older job), so the first head found blocked belongs to the user
  with the lowest weighted share among those whose head cannot start. ``max_reservations`` (default
  1) heads get one, in that order; once made, a reservation holds for the rest of the pass
  against every user (a user visited later, even with a lower share by then, backfills
  elsewhere). Reservations are recomputed each pass, like the order.
- A user whose head is blocked and gets no reservation (all taken by more deserving users,
  or its head is held back by its own ``max_cores``) places nothing more in that pass: its
  later, smaller jobs would take exactly the room its head waits for, and raise its share
  so that it would never become the most deserving. Its share then falls as its jobs end,
  until its head is the most deserving one and gets the reservation: nobody starves.
- A job that no registered worker could ever run (or that exceeds its user's ``max_cores``)
  does not hold its user up; the executor's sweep fails it.

Work per call is bounded: ``schedule(max_placements=N)`` stops after N placements and sets
``more``, so the caller can yield to its event loop between batches. A call costs
O(placements · (log workers + log shapes + log users)), O(1) per user whose figures changed
since the last call, a copy of the users' order (C speed), and for a blocked shape one look
at the index per pass (``placement_index``: the index, and the fallback for other kinds);
a user whose head is known to fit nowhere, once no reservation is left, is a heap pop.

Chaining (``chain``): when nothing more fits, the head of the most deserving user may be
queued *behind* a running job of the same user and request, on that job's allocation, to
start on the same cores the moment it ends, without a round trip through the executor.
Only that head is ever chained (so order and fairness are kept), never on a worker
reserved for another user's head, and only as deep as both limits allow: at most
``chain_depth`` jobs wait behind the running one on an allocation (the executor passes
``grain.config.CHAIN_DEPTH``), and at most ``depth_for(head, tail)`` (the executor's
``Executor._chain_depth_for``: jobs of one function observed to be short, as many as take
about ``CHAIN_SHORT_SECONDS`` together, else 0). An allocation is charged to its user once,
however many jobs share it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from itertools import count, islice
from typing import NamedTuple

from ..resource import Resource
from . import placement_queue
from .grant import Grant
from .jobtable import JobTable
from .placement_attach import AttachMixin
from .placement_index import CapacityIndex, Shape, WorkerState, shape_of
from .placement_queue import TRIM_MIN, Chain, JobQueue, User, UserStats
from .placement_views import ViewsMixin

__all__ = ["Placement", "Reservation", "UserStats", "WorkerState", "shape_of"]


class Reservation(NamedTuple):
    """A worker held for a blocked head during the last ``schedule`` call: nothing placed
    after ``at`` (an index into that call's result) went to ``wid``."""

    gid: int
    wid: int
    user: str
    at: int


Placed = tuple[int, int, Grant]


class Placement(AttachMixin, ViewsMixin):
    """The executor's queue, its users and the workers' free resources."""

    _skip_blocked = True    # pop users whose head is known blocked (off: tests' oracle)

    def __init__(self, chain_depth: int = 0, max_reservations: int = 1) -> None:
        self.index = CapacityIndex()
        self.workers: dict[int, WorkerState] = {}
        self.chain_depth = chain_depth
        self.max_reservations = max(1, max_reservations)
        #: (head id, worker id) of the first reservation of the last ``schedule`` call
        self.reserved_for: tuple[int, int] | None = None
        #: every reservation of the last ``schedule`` call, most deserving first
        self.reservations: list[Reservation] = []
        #: the last ``schedule`` call stopped at ``max_placements``: call again
        self.more = False
        # ints to ints only, so that the garbage collector never looks at them (a dict of
        # a million ids to objects adds ~20 ms to every full collection)
        self._where: JobTable[int] = JobTable()   # queued id -> its queue's number
        self._run: dict[int, int] = {}            # placed id -> the queue it came from
        self._queues: list[JobQueue] = []         # by number; never dropped (small)
        # shapes and (user, shape) queues are kept once seen: there are as many as
        # distinct requests (the executor caps those), and jobs in flight refer to them
        self._shapes: dict[Hashable, Shape] = {}
        self._users: dict[str, User] = {}
        self._chain_of: dict[int, Chain] = {}
        self._open: dict[tuple[str, Hashable], dict[Chain, None]] = {}
        self._pass = 0
        self._served = 0      # counts users' turns, to order equals by last service
        self._total_cores = 0
        self._total_mem = 0.0
        self._inv_cores = 0.0
        self._inv_mem = 0.0
        self._seq = count()   # tie-breakers in heaps, so users are never compared
        # The users with queued jobs in fair-share order, kept between passes: a pass
        # heapifies a copy (C speed) instead of visiting every user in Python, which at
        # 1,000 users cost ~4 ms per call. An entry is recomputed only when its user's
        # figures changed (``_dirty``: a placement, a release, a submission, ...).
        self._entries: dict[User, tuple[float, int, int, int, User]] = {}
        self._dirty: dict[User, None] = {}
        self._live_shapes = 0     # shapes with queued jobs (all blocked: a pass may end)

    # -- workers -------------------------------------------------------------------
    def add_worker(self, wid: int, name: str, total: Resource, free: Resource) -> None:
        """Register a worker; ``total`` and ``free`` must be distinct objects. Placement
        then owns ``free`` (it allocates from it and gives allocations back)."""
        if wid in self.workers:
            self.remove_worker(wid)
        self.workers[wid] = self.index.add(wid, name, total, free)
        self._account_capacity(total, +1)

    def remove_worker(self, wid: int) -> set[int]:
        """Forget a worker; returns the ids of the jobs that were running on it (chained
        ones included). They are no longer charged to their users."""
        w = self.workers.pop(wid, None)
        if w is None:
            return set()
        self.index.remove(w)
        self._account_capacity(w.total, -1)
        charged: set[int] = set()
        for gid in w.running:
            qn = self._run.pop(gid, None)
            if qn is None:
                continue
            q = self._queues[qn]
            q.user.running -= 1
            ch = self._chain_of.pop(gid, None)
            if ch is None:
                self._charge(q, -1)
            elif id(ch) not in charged:
                charged.add(id(ch))
                self._charge(ch.queue, -1)
                self._open.get((ch.queue.user.name, ch.queue.shape.key), {}).pop(ch, None)
        return set(w.running)

    def _account_capacity(self, total: Resource, sign: int) -> None:
        kinds = total.kinds()
        self._total_cores += sign * int(getattr(kinds.get("Cores"), "N", 0) or 0)
        self._total_mem += sign * float(getattr(kinds.get("Memory"), "M", 0.0) or 0.0)
        self._inv_cores = 1.0 / self._total_cores if self._total_cores > 0 else 0.0
        self._inv_mem = 1.0 / self._total_mem if self._total_mem > 1e-9 else 0.0
        self._dirty = dict.fromkeys(self._users.values())   # every share changed

    def could_ever_fit(self, request: Resource, user: str | None = None) -> bool:
        """True when some registered worker, empty, could run ``request`` (and, with
        ``user``, the request is within that user's ``max_cores``). O(workers): the
        executor caches it per shape until the workers change."""
        u = self._users.get(user) if user is not None else None
        if u is not None and u.max_cores is not None:
            if int(getattr(request.kinds().get("Cores"), "N", 0) or 0) > u.max_cores:
                return False
        return any(w.total.request(request) for w in self.workers.values()
                   if w.group is not None)   # not a cordoned (draining) worker

    # -- users -----------------------------------------------------------------------
    def set_user(self, user: str, *, weight: float = 1.0, max_cores: int | None = None,
                 max_queued: int | None = None) -> None:
        """Set a user's fair-share weight (> 0; a user of weight 2 gets twice the share of
        a user of weight 1 when both have work queued) and limits: at most ``max_cores``
        cores in use (a user at its limit is skipped, its jobs stay queued) and at most
        ``max_queued`` queued jobs (see ``queue_full``; placement never refuses a job).
        None: no limit. Every call sets all three."""
        if not weight > 0:
            raise ValueError(f"weight must be > 0, not {weight!r}")
        u = self._user(user)
        u.weight = float(weight)
        self._dirty[u] = None
        u.max_cores = max_cores
        u.max_queued = max_queued

    def queue_full(self, user: str) -> bool:
        """True when ``user`` has ``max_queued`` jobs queued or more: the executor refuses
        new submissions then (re-queued retries are still accepted)."""
        u = self._users.get(user)
        return u is not None and u.max_queued is not None and u.queued >= u.max_queued

    def user_stats(self) -> dict[str, UserStats]:
        """Per user: running jobs, queued jobs, cores and memory in use, dominant share and
        weighted share (see ``UserStats``), weight and limits. O(users)."""
        return {name: self._stats(u) for name, u in self._users.items()}

    def _stats(self, u: User) -> UserStats:
        share = max(u.cores * self._inv_cores, u.mem * self._inv_mem)
        return UserStats(u.running, u.queued, u.cores, max(0.0, u.mem), share,
                         share / u.weight, u.weight, u.max_cores, u.max_queued)

    def _user(self, name: str) -> User:
        u = self._users.get(name)
        if u is None:
            u = self._users[name] = User(name)
        return u

    def _charge(self, q: JobQueue, sign: int) -> None:
        u, s = q.user, q.shape
        self._dirty[u] = None
        u.cores += sign * s.cores
        u.mem += sign * s.mem
        if not u.running:
            u.mem = 0.0   # no float residue once a user holds nothing

    # -- queue -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._where)

    def enqueue(self, gid: int, request: Resource, shape: Hashable | None = None, *,
                user: str = "") -> None:
        """Queue job ``gid`` of ``user`` asking ``request`` (``shape``: ``shape_of(request)``
        if the caller has it; requests of one shape should be one shared object). A
        re-queued (retried) job keeps its place by its original id. O(1), O(log retries)
        for a retried one. A job already queued is left as it is."""
        if gid in self._where:
            return
        key = shape_of(request) if shape is None else shape
        s = self._shapes.get(key)
        if s is None:
            s = self._shapes[key] = Shape(key, request)
        u = self._user(user)
        q = u.queues.get(key)
        if q is None:
            q = u.queues[key] = JobQueue(len(self._queues), u, s, self._where)
            self._queues.append(q)
            s.queues[q] = None
        q.push(gid)
        self._where[gid] = q.qid
        u.queued += 1
        s.nlive += 1
        self._live_shapes += s.nlive == 1
        self._dirty[u] = None
        if q.seq < 0 or gid < q.key:
            u.file(q, gid)

    def dequeue(self, gid: int) -> bool:
        """Remove a queued job (cancelled). False when it is not queued. O(1) amortised
        (see ``placement_queue``)."""
        qn = self._where.pop(gid, None)
        if qn is None:
            return False
        q = self._queues[qn]
        q.user.queued -= 1
        q.shape.nlive -= 1
        self._live_shapes -= not q.shape.nlive
        self._dirty[q.user] = None
        q.forget(gid)
        return True

    def is_queued(self, gid: int) -> bool:
        return gid in self._where

    # -- running ---------------------------------------------------------------------
    def release(self, wid: int, gid: int, alloc: Grant) -> int | None:
        """A job ended. When jobs are chained behind it, the allocation passes on and the
        id of the job that now runs on it is returned; otherwise the allocation goes back
        to its worker (if the worker is still there) and its user is charged no more."""
        w = self.workers.get(wid)
        ch = self._chain_of.pop(gid, None)
        if w is None or gid not in w.running:
            return None
        w.running.discard(gid)
        qn = self._run.pop(gid, None)
        q = self._queues[qn] if qn is not None else None
        if q is not None:
            q.user.running -= 1
        if ch is None:
            self.index.give(w, alloc)
            if q is not None:
                u, sh = q.user, q.shape
                self._dirty[u] = None
                u.cores -= sh.cores
                u.mem -= sh.mem
                if not u.running:
                    u.mem = 0.0   # no float residue once a user holds nothing
            return None
        was_current = ch.jobs[0] == gid
        ch.jobs = tuple(j for j in ch.jobs if j != gid)   # at most chain_depth + 1 long
        key = (ch.queue.user.name, ch.queue.shape.key)
        if ch.jobs:
            if len(ch.jobs) <= self.chain_depth:
                self._open.setdefault(key, {})[ch] = None
            return ch.jobs[0] if was_current else None
        self._open.get(key, {}).pop(ch, None)
        self.index.give(w, ch.alloc)
        self._charge(ch.queue, -1)
        return None

    def chain(self, depth_for: Callable[[int, int], int], tries: int = 4
              ) -> list[tuple[int, int, Grant, int]]:
        """Queue the most deserving user's head behind a running job of the same user and
        shape: (job, worker, allocation, the job it waits behind). ``depth_for(head,
        tail)`` says how many jobs may wait on one allocation for this pair (0: none),
        capped by ``chain_depth``. Call after ``schedule``."""
        out: list[tuple[int, int, Grant, int]] = []
        if not self.chain_depth or not self._where:
            return out
        # a reserved worker takes chained jobs of its head's user only (the head being
        # chained is what the reservation is for; anybody else would keep it from draining)
        reserved = {r.wid: r.user for r in self.reservations}
        u = self._most_deserving()
        while u is not None:
            q = u.front()
            if q is None:
                break
            head = q.key
            opens = self._open.get((u.name, q.shape.key))
            found = None
            for ch in islice(opens or (), tries):
                if reserved.get(ch.wid, u.name) != u.name \
                        or self.workers[ch.wid].group is None:   # cordoned
                    continue
                if len(ch.jobs) <= min(depth_for(head, ch.jobs[-1]), self.chain_depth):
                    found = ch
                    break
            if found is None or opens is None:
                break
            tail = found.jobs[-1]
            found.jobs += (head,)
            if len(found.jobs) > self.chain_depth:
                del opens[found]
            q.pop(head)
            del self._where[head]
            u.queued -= 1
            q.shape.nlive -= 1
            self._live_shapes -= not q.shape.nlive
            self._dirty[u] = None
            u.running += 1
            self._run[head] = q.qid
            self._chain_of[head] = found
            self.workers[found.wid].running.add(head)
            out.append((head, found.wid, found.alloc, tail))
        return out

    def _most_deserving(self) -> User | None:
        e = min(self._order().values(), default=None)
        return None if e is None else e[4]

    def _order(self) -> dict[User, tuple[float, int, int, int, User]]:
        """Per user with queued jobs: (weighted share, last served, oldest job,
        tie-breaker, user), the users' order in a pass, lowest first. Among equal shares
        the user served least recently goes first (then the oldest job), so that equals
        take turns even when there are more users than cores."""
        if self._dirty:
            ic, im, entries, seq = self._inv_cores, self._inv_mem, self._entries, self._seq
            for u in self._dirty:
                q = u.front() if u.queued else None
                if q is None:
                    entries.pop(u, None)
                else:
                    entries[u] = (u.key(ic, im), u.last, q.key, next(seq), u)
                    u.fq = q    # its front while it is not dirty (see ``_pass_over``)
            self._dirty.clear()
        return self._entries

    # -- the pass ----------------------------------------------------------------------
    def schedule(self, max_placements: int | None = None) -> list[Placed]:
        """Start what can start now: a list of (job id, worker id, allocation), in the
        order decided. At most ``max_placements`` (None: no bound); ``more`` then says
        whether the call stopped at the bound (call again, after yielding, to go on)."""
        self.more = False
        self.reservations = []
        self.reserved_for = None
        out: list[Placed] = []
        if not self._where or not self.workers:
            return out
        self._pass += 1
        budget = max_placements if max_placements is not None else len(self._where)
        if budget <= 0:
            self.more = True
            return out
        uheap = list(self._order().values())
        heapq.heapify(uheap)
        turns: dict[User, None] = {}    # the users whose turn came: only they changed
        try:
            self._pass_over(uheap, out, budget, turns)
        finally:
            for u in turns:
                u.unpark()
            self._dirty.update(turns)
        self.reserved_for = (self.reservations[0][:2] if self.reservations else None)
        return out

    def _pass_over(self, uheap: list[tuple[float, int, int, int, User]], out: list[Placed],
                   budget: int, turns: dict[User, None]) -> None:
        index, where, run = self.index, self._where, self._run
        pno = self._pass
        chaining = self.chain_depth > 0
        reserved: dict[int, int] = {}       # worker id -> head id, this pass
        ic, im = self._inv_cores, self._inv_mem
        seq = self._seq
        queue_seq = placement_queue.SEQ
        blocked = 0                         # shapes found to fit nowhere, this pass
        maxr, skip = self.max_reservations, self._skip_blocked
        while uheap:
            if blocked >= self._live_shapes and len(reserved) >= self.max_reservations:
                # nothing queued fits anywhere (and that stays so for this pass: room
                # only shrinks), no reservation is left to give: the other users' turns
                # would each end at once, at O(users) for a full cluster
                return
            # the most deserving user's turn: it places jobs until another user is more
            # deserving (its entry at the root keeps its old key meanwhile: it is only
            # compared with the root's children, which are exact)
            u = uheap[0][4]
            fs = u.fq.shape
            if (fs.blocked == pno and len(reserved) >= maxr and u not in turns and skip
                    and fs.holdable_at == index.version and fs.holdable
                    and (u.max_cores is None or u.cores + fs.cores <= u.max_cores)):
                # a user not seen yet this pass whose head fits nowhere, no reservation
                # left: its turn would end at once, changing nothing. The users who wait
                # longest are the most deserving, so a full cluster puts all of them
                # first in every pass: a pop (C speed) each instead of a visit
                heapq.heappop(uheap)
                continue
            turns[u] = None
            if len(uheap) > 1:
                nkey = uheap[1][0] if len(uheap) < 3 or uheap[1] < uheap[2] else uheap[2][0]
            else:
                nkey = math.inf
            weight, limit = u.weight, u.max_cores
            key = -1.0
            while True:
                q = u.front()
                if q is None:
                    heapq.heappop(uheap)    # nothing more of this user fits this pass
                    break
                s = q.shape
                gid = q.key
                if limit is not None and u.cores + s.cores > limit:
                    if s.cores > limit or u.blocked_head:
                        u.park(q)           # never fits this user / a later job: skip
                        continue
                    heapq.heappop(uheap)    # the head waits for the user's own jobs
                    break
                if s.blocked == pno:
                    w = None
                else:
                    # where this shape went last in this pass is still the best fit if it
                    # still fits (it only lost room): saves a search per switch
                    w = s.hint
                    if (w is None or s.hint_pass != pno or w.wid in reserved
                            or not index.fits(w, s)):
                        w = index.find(s, reserved)
                if w is None:
                    blocked += s.blocked != pno
                    s.blocked = pno
                    if self._blocked(u, q, reserved, len(out)):
                        continue
                    heapq.heappop(uheap)    # unprotected head: the user waits this pass
                    break
                # place jobs of this queue while they stay first in line (the user's
                # oldest job, the user the most deserving, room on a worker)
                sc, sm, qn = s.cores, s.mem, q.qid
                h = u.heap
                rival = (h[1][0] if len(h) < 3 or h[1][0] < h[2][0] else h[2][0]
                         ) if len(h) > 1 else None
                simple = not s.extras and not w.generic
                nxt: int | None
                while True:
                    del where[gid]          # first: ``advance`` looks for the next live id
                    # the usual case inline: no re-queued ids, the next id in the array
                    # alive, no trimming due (else ``advance`` does it all)
                    main, i = q.main, q.head + 1
                    if (not q.late and i < len(main) and where.get(main[i]) == qn
                            and (i <= TRIM_MIN or 2 * i <= len(main))):
                        q.head = i
                        q.live -= 1
                        nxt = main[i]
                    else:
                        nxt = q.advance(gid)
                    alloc = index.take(w, s)
                    w.running.add(gid)
                    run[gid] = qn
                    u.queued -= 1
                    s.nlive -= 1
                    u.running += 1
                    u.cores += sc
                    u.mem += sm
                    if chaining:
                        ch = self._chain_of[gid] = Chain(w.wid, alloc, q, (gid,))
                        self._open.setdefault((u.name, s.key), {})[ch] = None
                    out.append((gid, w.wid, alloc))
                    c, m = u.cores * ic, u.mem * im
                    key = (c if c > m else m) / weight
                    if len(out) >= budget:
                        self.more = True
                        self._live_shapes -= not s.nlive
                        s.hint, s.hint_pass = w, pno
                        self._served += 1
                        u.last = self._served
                        return
                    if nxt is None or (rival is not None and nxt > rival):
                        break
                    if key >= nkey or (limit is not None and u.cores + sc > limit):
                        break
                    gid = nxt
                    if not (w.cores >= sc and w.mem >= sm if simple else index.fits(w, s)):
                        w = index.find(s, reserved)
                        if w is None:
                            s.blocked = pno
                            blocked += 1
                            break
                        simple = not s.extras and not w.generic
                self._live_shapes -= not s.nlive
                if w is not None:
                    s.hint, s.hint_pass = w, pno
                if nxt is not None:         # re-file the queue under its new head
                    q.key = nxt
                    q.seq = next(queue_seq)
                    heapq.heapreplace(h, (nxt, q.seq, q))
                if key >= nkey:             # another user is now the most deserving (or
                    self._served += 1       # as deserving and served less recently)
                    u.last = self._served
                    head = h[0][0] if h else 0
                    heapq.heapreplace(uheap, (key, u.last, head, next(seq), u))
                    break

    def _blocked(self, u: User, q: JobQueue, reserved: dict[int, int], at: int) -> bool:
        """``q``'s oldest job (``q.key``) fits on no worker that is not reserved. True:
        the user goes on with its other queues; False: the user is done for this pass."""
        s = q.shape
        if u.blocked_head:                # a later job: skip its shape (backfill goes on)
            u.park(q)
            return True
        if not self.index.holdable(s):    # no worker could ever run it: not a head
            u.park(q)
            return True
        u.blocked_head = True
        if len(reserved) < self.max_reservations:
            w = self.index.pick_reservation(s, reserved)
            if w is not None:
                reserved[w.wid] = q.key
                self.reservations.append(Reservation(q.key, w.wid, u.name, at))
                u.park(q)                 # its later jobs may backfill elsewhere
                return True
        return False                      # an unprotected head: the user waits
