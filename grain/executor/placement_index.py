"""Workers indexed by free capacity, for ``grain.executor.placement``. Pure code, no I/O.

Finding a worker for a request must not cost O(workers): at 1,000 workers a linear first
fit is most of a placement pass. Workers are therefore grouped by the kinds they offer
(``Cores``, ``Memory``, ``WTime``, ``GPU``, custom kinds: usually one group per cluster), and
in each group kept in *buckets by free cores*, each bucket a list sorted by (free memory,
registration order). A bit mask of the non-empty buckets answers "the fewest free cores that
are still >= N" with two integer operations, and a bisection in that bucket answers "the
least free memory that is still >= M". So the two dimensions that fair share accounts in
(cores and memory) are answered exactly, in O(buckets tried + log workers), and the choice
is *best fit*: the worker left with the least room, which packs jobs and keeps whole
workers free for whole-worker requests.

Kinds the index does not cover (GPUs, ``WTime`` lifetimes, custom kinds: the *extras* of a
request) are checked on each candidate in that order, with the kind's own ``_request``. A
candidate that fails an extra is remembered per shape together with the worker's
*version* (bumped whenever capacity returns to it), so it costs a dictionary look-up, not a
``_request`` call, until it has gained something. This fallback is O(candidates that fail
the extras) per search: exact, but linear in the number of such workers (e.g. GPU workers
whose cores are free but whose GPUs are all taken).

Allocation itself bypasses ``Resource.alloc``'s generic composition for ``Cores`` and
``Memory``: ``take`` gives a ``Grant`` (``grain.executor.grant``: the core ids, lowest
first as ``Resource.alloc`` takes them, and the memory, in one object the garbage
collector never tracks), because at 200,000 placements a second the generic path alone
(~10 us) would take twice the whole budget, and a running job's ``Resource`` graph is
objects every full collection walks. Other kinds go through their own
``_alloc``/``_dealloc`` and stay a ``Resource`` in the grant.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable
from typing import Any

from ..resource import GPU, Cores, Memory, Resource, to_wire
from .grant import Grant


def shape_of(request: Resource) -> str:
    """A hashable key: equal for requests that are interchangeable for placement."""
    return repr(to_wire(request))


GENERIC = "\0generic"   # marks the group of workers whose kinds are searched generically
_ID_KINDS: dict[type[Resource], tuple[str, str]] = {Cores: ("c", "N"), GPU: ("g", "G")}


class WorkerState:
    """A registered worker's capacity: ``total`` is never mutated, ``free`` is (by
    placement only); ``running`` holds the ids of the jobs placed on it (chained ones too).
    """

    __slots__ = ("wid", "name", "total", "free", "running", "order", "cores", "mem",
                 "version", "group", "parts", "cpool", "mpool", "generic")

    def __init__(self, wid: int, name: str, total: Resource, free: Resource,
                 order: int) -> None:
        self.wid = wid
        self.name = name
        self.total = total
        self.free = free
        self.running: set[int] = set()
        self.order = order          # registration order: ties go to the older worker
        self.parts = free.kinds()   # the pool's parts, by kind (the same objects)
        cp = self.parts.get("Cores")
        mp = self.parts.get("Memory")
        self.cpool: Cores | None = cp if type(cp) is Cores else None
        self.mpool: Memory | None = mp if type(mp) is Memory else None
        self.cores = 0              # the index key: free cores and memory, as last indexed
        self.mem = 0.0
        self.version = 0            # bumped whenever capacity comes back
        self.group: _Group | None = None
        self.generic = False        # searched and allocated through ``free`` alone

    def measure(self) -> tuple[int, float]:
        """Free (cores, memory) as the index counts them."""
        cp, mp = self.cpool, self.mpool
        return (len(cp.c) if cp is not None else 0, mp.m if mp is not None else 0.0)


class Shape:
    """What placement knows about one request shape: the shared request object and its
    figures for the index. Jobs with equal shapes are interchangeable."""

    __slots__ = ("key", "request", "cores", "mem", "kinds", "n_cores", "n_mem", "others",
                 "extras", "nofit", "groups", "groups_at", "holdable", "holdable_at",
                 "blocked", "queues", "hint", "hint_pass", "nlive")

    def __init__(self, key: Hashable, request: Resource) -> None:
        self.key = key
        self.request = request
        self.cores = 0
        self.mem = 0.0
        kinds = request.kinds()
        self.kinds = frozenset(kinds)
        self.n_cores: int | None = None     # built-in Cores and Memory, allocated inline
        self.n_mem: float | None = None
        self.others: list[tuple[str, Resource]] = []   # allocated by the kind itself
        self.extras: list[tuple[str, Resource]] = []   # checked on each candidate
        for name, part in kinds.items():
            t = type(part)
            if t is Cores and name == "Cores":
                self.cores = self.n_cores = part.N
            elif t is Memory and name == "Memory":
                self.mem = self.n_mem = part.m
            else:
                self.others.append((name, part))
                self.extras.append((name, part))
        self.nofit: dict[int, int] = {}     # worker order -> its version when an extra failed
        self.groups: list[_Group] = []      # groups offering every kind asked (cached)
        self.groups_at = -1
        self.holdable = False               # some registered worker could ever run it
        self.holdable_at = -1
        self.blocked = -1                   # the pass in which it was found to fit nowhere
        self.queues: dict[Any, None] = {}   # the per-user queues of this shape (placement's)
        self.hint: WorkerState | None = None  # where it went last, in pass ``hint_pass``
        self.hint_pass = -1
        self.nlive = 0                      # jobs of this shape queued, all users


class _Group:
    """Workers offering the same kinds, in buckets by free cores."""

    __slots__ = ("kinds", "mask", "buckets", "top", "size", "generic")

    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds
        self.generic = GENERIC in kinds                 # members checked with free.request
        self.mask = 0                                   # bit c set: bucket c is not empty
        # per count of free cores: (free memory, order, worker), sorted (the order is
        # unique, so workers are never compared)
        self.buckets: list[list[tuple[float, int, WorkerState]]] = []
        self.top = 0                                    # the most cores of any member
        self.size = 0

    def put(self, w: WorkerState) -> None:
        b = self.buckets
        while len(b) <= w.cores:
            b.append([])
        insort(b[w.cores], (w.mem, w.order, w))
        self.mask |= 1 << w.cores

    def take(self, w: WorkerState) -> None:
        lst = self.buckets[w.cores]
        del lst[bisect_left(lst, (w.mem, w.order))]
        if not lst:
            self.mask &= ~(1 << w.cores)


class CapacityIndex:
    """The workers' free capacity, searchable by request shape."""

    def __init__(self) -> None:
        self.by_order: dict[int, WorkerState] = {}
        self.groups: dict[frozenset[str], _Group] = {}
        self.version = 0        # bumped when the set of workers changes
        self._next_order = 0

    # -- membership ------------------------------------------------------------------
    def add(self, wid: int, name: str, total: Resource, free: Resource) -> WorkerState:
        w = WorkerState(wid, name, total, free, self._next_order)
        self._next_order += 1
        # a pool whose Cores/Memory are not the built-in kinds is searched generically
        # (every member checked with ``free.request``): a group of its own
        exotic = ("Cores" in w.parts and w.cpool is None) or (
            "Memory" in w.parts and w.mpool is None)
        tc = total.kinds().get("Cores")
        top = max(int(getattr(tc, "N", 0) or 0), w.measure()[0])
        key = frozenset(w.parts) | ({GENERIC} if exotic else set())
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(key)
            self.version += 1   # shapes recompute which groups serve them
        w.group = g
        w.generic = exotic
        w.cores, w.mem = w.measure()
        g.top = max(g.top, top)
        while len(g.buckets) <= g.top:   # free cores never exceed the total
            g.buckets.append([])
        g.size += 1
        g.put(w)
        self.by_order[w.order] = w
        self.version += 1
        return w

    def remove(self, w: WorkerState) -> None:
        g = w.group
        if g is None or self.by_order.pop(w.order, None) is None:
            return
        g.take(w)
        g.size -= 1
        w.group = None
        self.version += 1

    def _groups_for(self, s: Shape) -> list[_Group]:
        if s.groups_at != self.version:
            s.groups = [g for g in self.groups.values()
                        if g.size and s.kinds <= g.kinds and g.top >= s.cores]
            s.groups_at = self.version
            if len(s.nofit) > 2 * len(self.by_order) + 64:
                s.nofit.clear()  # entries of workers long gone
        return s.groups

    def holdable(self, s: Shape) -> bool:
        """Some registered worker, empty, could run ``s`` (cached while the workers are the
        same; a worker's lifetime only shrinks, so a stale True merely costs a search)."""
        if s.holdable_at != self.version:
            s.holdable = any(w.total.request(s.request) for g in self._groups_for(s)
                             for w in self._members(g))
            s.holdable_at = self.version
        return s.holdable

    @staticmethod
    def _members(g: _Group) -> Iterable[WorkerState]:
        for lst in g.buckets:
            for _, _, w in lst:
                yield w

    # -- search ----------------------------------------------------------------------
    def fits(self, w: WorkerState, s: Shape) -> bool:
        """``s`` fits on ``w`` now (the same answer as ``w.free.request(s.request)``)."""
        g = w.group
        if g is None:
            return False
        if g.generic:
            return w.free.request(s.request)
        if w.cores < s.cores or w.mem < s.mem:
            return False
        return not s.extras or self._extras_fit(w, s)

    @staticmethod
    def _extras_fit(w: WorkerState, s: Shape) -> bool:
        nofit = s.nofit
        if nofit.get(w.order) == w.version:
            return False
        parts = w.parts
        for name, part in s.extras:
            if not parts[name]._request(part):
                nofit[w.order] = w.version
                return False
        return True

    def find(self, s: Shape, exclude: dict[int, Any]) -> WorkerState | None:
        """The best-fitting worker for ``s`` now, not in ``exclude`` (worker ids), or None:
        fewest free cores first, then least free memory, then the oldest worker."""
        groups = s.groups if s.groups_at == self.version else self._groups_for(s)
        if len(groups) == 1:
            g = groups[0]
            if not g.generic and not s.extras and s.mem <= 0:
                # the common case inline: the first worker of the first bucket that fits
                n = s.cores
                m = g.mask >> n
                buckets = g.buckets
                while m:
                    low = m & -m
                    for _, _, w in buckets[n + low.bit_length() - 1]:
                        if w.wid not in exclude:
                            return w
                    m ^= low
                return None
            hit = self._find_in(g, s, exclude)
            return None if hit is None else hit[2]
        best: tuple[int, float, WorkerState] | None = None
        for g in groups:
            hit = self._find_in(g, s, exclude)
            if hit is not None and (best is None or hit[:2] < best[:2]):
                best = hit
        return None if best is None else best[2]

    def _find_in(self, g: _Group, s: Shape, exclude: dict[int, Any]
                 ) -> tuple[int, float, WorkerState] | None:
        if g.generic:
            for lst in g.buckets:
                for mem, _, w in lst:
                    if w.wid not in exclude and w.free.request(s.request):
                        return w.cores, mem, w
            return None
        n, need, extras = s.cores, s.mem, s.extras
        m = g.mask >> n
        buckets = g.buckets
        while m:
            low = m & -m
            c = n + low.bit_length() - 1
            lst = buckets[c]
            if need <= 0:
                i = 0
            elif lst[-1][0] >= need:    # the bucket's most free memory is enough
                i = bisect_left(lst, (need,))
            else:
                m ^= low
                continue
            for j in range(i, len(lst)):
                mem, _, w = lst[j]
                if w.wid in exclude or (extras and not self._extras_fit(w, s)):
                    continue
                return c, mem, w
            m ^= low
        return None

    def pick_reservation(self, s: Shape, exclude: dict[int, Any]) -> WorkerState | None:
        """Where ``s`` will fit soonest, without run-time estimates: among the workers big
        enough for it (by ``total``) and not in ``exclude``, the one with the most free
        cores, then the most free memory. None when no such worker exists."""
        best: tuple[int, float, WorkerState] | None = None
        for g in self._groups_for(s):
            found: tuple[int, float, WorkerState] | None = None
            m = g.mask
            while m and found is None:
                c = m.bit_length() - 1
                if best is not None and c < best[0]:
                    break
                for mem, _, w in reversed(g.buckets[c]):
                    if w.wid not in exclude and w.total.request(s.request):
                        found = (c, mem, w)
                        break
                m ^= 1 << c
            if found is not None and (best is None or found[:2] > best[:2]):
                best = found
        return None if best is None else best[2]

    # -- allocation ------------------------------------------------------------------
    # The hot path: one ``take`` per placement, one ``give`` per release. The built-in
    # kinds are handled inline (same result as ``Resource.alloc``/``dealloc``), the rest
    # through the kind's own methods.
    def take(self, w: WorkerState, s: Shape) -> Grant:
        """Allocate ``s.request`` on ``w`` (which must fit it); re-index ``w``."""
        if w.generic:
            grant = Grant(rest=w.free.alloc(s.request))
            self._reindex(w)
            return grant
        cores: tuple[int, ...] | None = None
        n = s.n_cores
        cp = w.cpool
        if n is not None and cp is not None:
            held = cp.c
            if len(held) < n:
                raise ValueError(f"{cp} cannot allocate {n} core(s)")
            # lowest ids first, as Resource.alloc
            cores = (min(held),) if n == 1 else tuple(sorted(held)[:n])
            held.difference_update(cores)
        mem = s.n_mem
        mp = w.mpool
        if mem is not None and mp is not None:
            if mp.m < mem:
                if cores is not None:
                    held.update(cores)
                raise ValueError(f"{mp} cannot allocate Memory({mem})")
            mp.m -= mem
        elif mem is not None:
            mem = None
        rest: Resource | None = None
        if s.others:
            parts = w.parts
            got: dict[str, Resource] = {}
            try:
                for name, want in s.others:
                    got.update(parts[name]._alloc(want).kinds())
            except BaseException:
                self._give_back(w, Grant(cores, mem))
                self._give_parts(parts, got)
                raise
            rest = Resource(init=False)
            rest._parts = got
        grant = Grant(cores, mem, rest)
        g = w.group
        if g is not None:   # re-index: the worker moves to its new bucket
            c0, m0, o = w.cores, w.mem, w.order
            c1 = len(cp.c) if cp is not None else 0
            m1 = mp.m if mp is not None else 0.0
            lst = g.buckets[c0]
            del lst[bisect_left(lst, (m0, o))]
            if not lst:
                g.mask &= ~(1 << c0)
            insort(g.buckets[c1], (m1, o, w))
            g.mask |= 1 << c1
            w.cores, w.mem = c1, m1
        return grant

    def give(self, w: WorkerState, grant: Grant) -> None:
        """Return a grant made by ``take`` (or ``Grant.of`` an allocation taken from
        ``w.free``) to ``w``; re-index ``w``."""
        if w.generic:
            w.free.dealloc(grant.resource())
        else:
            self._give_back(w, grant)
        w.version += 1
        g = w.group
        if g is None:
            return
        cp, mp = w.cpool, w.mpool
        c1 = len(cp.c) if cp is not None else 0
        m1 = mp.m if mp is not None else 0.0
        c0, m0, o = w.cores, w.mem, w.order
        if c1 == c0 and m1 == m0:
            return
        lst = g.buckets[c0]
        del lst[bisect_left(lst, (m0, o))]
        if not lst:
            g.mask &= ~(1 << c0)
        insort(g.buckets[c1], (m1, o, w))
        g.mask |= 1 << c1
        w.cores, w.mem = c1, m1

    def _give_back(self, w: WorkerState, grant: Grant) -> None:
        cp, mp = w.cpool, w.mpool
        if grant.cores is not None:
            if cp is not None:
                cp.c.update(grant.cores)
            else:
                self._give_parts(w.parts, {"Cores": Cores(list(grant.cores))})
        if grant.mem is not None:
            if mp is not None:
                mp.m += grant.mem
            else:
                self._give_parts(w.parts, {"Memory": Memory(grant.mem)})
        if grant.rest is not None:
            self._give_parts(w.parts, grant.rest._parts)

    @staticmethod
    def _give_parts(parts: dict[str, Resource], got: dict[str, Resource]) -> None:
        for name, a in got.items():
            pool = parts.get(name)
            if pool is None:
                continue
            t = type(a)
            if t is Cores and type(pool) is Cores:
                pool.c.update(a.c)
            elif t in _ID_KINDS and type(pool) is t:
                ids_attr = _ID_KINDS[t][0]
                getattr(pool, ids_attr).update(getattr(a, ids_attr))
            elif t is Memory and type(pool) is Memory:
                pool.m += a.m
            else:
                pool._dealloc(a)

    def _reindex(self, w: WorkerState) -> None:
        g = w.group
        cores, mem = w.measure()
        if g is None or (cores == w.cores and mem == w.mem):
            w.cores, w.mem = cores, mem
            return
        g.take(w)
        w.cores, w.mem = cores, mem
        g.put(w)
