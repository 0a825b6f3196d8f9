"""Placement under random programs (hypothesis): random workers, users with weights and
limits, jobs of mixed shapes, bounded and unbounded passes, releases, cancellations, lost
workers, re-queued jobs and chaining. After every pass:

- no worker is over-allocated (core and GPU ids given once, memory adds up);
- each user's figures (cores, memory, running, queued) match what runs and waits;
- each reservation is honoured: nothing placed after it went to its worker;
- per-user submission order is kept except for backfill: a user's queued job older than one
  placed in the pass fits on no unreserved worker (or is over the user's core limit);
- a lone user fills the cluster: none of its queued jobs fits on an unreserved worker;

and at the end, with submissions stopped, every job that could ever run does (nobody
starves). A second property checks that shares converge to the weights under saturation.
"""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grain.executor.placement import Placement
from grain.resource import GPU, Cores, Memory

SHAPES = [Cores(1), Cores(2), Cores(3) & Memory(2), Cores(1) & Memory(6), Cores(4),
          Cores(2) & GPU(1), Memory(1), Cores(8)]
USERS = ["ann", "bob", "cid"]


def cores_of(req):
    return getattr(req.kinds().get("Cores"), "N", 0)


def mem_of(req):
    return getattr(req.kinds().get("Memory"), "m", 0.0)


def capacity(c, m, g):
    r = Cores(c) & Memory(m)
    return r & GPU(g) if g else r


class Model:
    """What the test knows: jobs, who owns them, what runs where on which allocation."""

    def __init__(self, p, workers):
        self.p = p
        self.next_wid = 0
        self.spec = {}
        self.gid = 0
        self.req, self.user = {}, {}
        self.queued = set()
        self.running = {}           # gid -> (wid, alloc)
        for w in workers:
            self.add_worker(*w)

    def add_worker(self, c, m, g):
        self.next_wid += 1
        self.spec[self.next_wid] = (c, m, g)
        self.p.add_worker(self.next_wid, f"w{self.next_wid}", capacity(c, m, g),
                          capacity(c, m, g))

    def submit(self, user, req):
        self.gid += 1
        self.req[self.gid], self.user[self.gid] = req, user
        self.p.enqueue(self.gid, req, user=user)
        self.queued.add(self.gid)

    def schedule(self, budget):
        out = self.p.schedule(max_placements=budget)
        for g, w, a in out:
            assert g in self.queued, "only queued jobs are placed, once"
            self.queued.discard(g)
            self.running[g] = (w, a)
        self.check_pass(out, budget)
        return out

    def chain(self):
        out = self.p.chain(lambda h, t: 2)
        for g, w, a, after in out:
            assert g in self.queued and after in self.running
            assert self.running[after][1] is a and self.user[g] == self.user[after]
            assert self.req[g] is self.req[after] or repr(self.req[g]) == repr(self.req[after])
            self.queued.discard(g)
            self.running[g] = (w, a)
        return out

    def release(self, gid):
        w, a = self.running.pop(gid)
        self.p.release(w, gid, a)

    def cancel(self, gid):
        assert self.p.dequeue(gid)
        self.queued.discard(gid)

    def lose(self, wid):
        lost = self.p.remove_worker(wid)
        assert lost == {g for g, (w, _) in self.running.items() if w == wid}
        for g in sorted(lost, reverse=True):
            del self.running[g]
            self.p.enqueue(g, self.req[g], user=self.user[g])   # retried: same id
            self.queued.add(g)
        del self.spec[wid]

    # -- invariants ------------------------------------------------------------------
    def fits_now(self, gid, exclude):
        req = self.req[gid]
        return any(w.free.request(req) for wid, w in self.p.workers.items()
                   if wid not in exclude)

    def check_state(self):
        p = self.p
        assert len(p) == len(self.queued) and all(p.is_queued(g) for g in self.queued)
        allocs = {}                 # id(grant) -> (wid, its allocation, user)
        for g, (w, a) in self.running.items():
            allocs[id(a)] = (w, a.resource(), self.user[g])
        for wid, ws in p.workers.items():
            c, m, g = self.spec[wid]
            mine = [a for w, a, _ in allocs.values() if w == wid]
            ids = [x for a in mine if "Cores" in a.kinds() for x in a.c]
            assert len(ids) == len(set(ids)) and not set(ids) & ws.free.c
            assert set(ids) | ws.free.c == set(range(c)), "every core free or held once"
            used = sum(a.m for a in mine if "Memory" in a.kinds())
            assert math.isclose(used + ws.free.m, m, abs_tol=1e-9) and ws.free.m >= -1e-9
            if g:
                gids = [x for a in mine if "GPU" in a.kinds() for x in a.g]
                assert len(gids) == len(set(gids)) and set(gids) | ws.free.g == set(range(g))
        stats = p.user_stats()
        for u in USERS:
            held = [a for _, a, who in allocs.values() if who == u]
            s = stats.get(u)
            if s is None:
                assert not held and not any(self.user[g] == u for g in self.queued)
                continue
            assert s.cores == sum(cores_of(a) for a in held)
            assert math.isclose(s.memory, sum(mem_of(a) for a in held), abs_tol=1e-9)
            assert s.running == sum(self.user[g] == u for g in self.running)
            assert s.queued == sum(self.user[g] == u for g in self.queued)

    def check_pass(self, out, budget):
        self.check_state()
        p = self.p
        reserved = {r.wid for r in p.reservations}
        for r in p.reservations:
            assert all(w != r.wid for _, w, _ in out[r.at:]), "the reservation is honoured"
            assert r.gid in self.queued and not p.workers[r.wid].free.request(self.req[r.gid])
        stats = p.user_stats()
        newest = {}
        for g, _, _ in out:
            newest[self.user[g]] = max(newest.get(self.user[g], 0), g)
        for g in self.queued:
            u = self.user[g]
            if g < newest.get(u, 0):
                over = (stats[u].max_cores is not None
                        and stats[u].cores + cores_of(self.req[g]) > stats[u].max_cores)
                assert over or not self.fits_now(g, reserved), (
                    f"job {g} of {u} was passed over though it fits")
        waiting = {self.user[g] for g in self.queued}
        if len(waiting) == 1 and budget is None:
            [u] = waiting
            if stats[u].max_cores is None:
                for g in self.queued:
                    assert not self.fits_now(g, reserved), "a lone user fills the cluster"


workers_st = st.lists(st.tuples(st.integers(1, 8), st.sampled_from([0.0, 4.0, 16.0]),
                                st.sampled_from([0, 0, 2])), min_size=1, max_size=4)
users_st = st.lists(st.tuples(st.integers(1, 3), st.sampled_from([None, None, 3, 6])),
                    min_size=len(USERS), max_size=len(USERS))
op_st = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, len(USERS) - 1),
              st.integers(0, len(SHAPES) - 1), st.integers(1, 6)),
    st.tuples(st.just("schedule"), st.sampled_from([None, None, 1, 2, 5])),
    st.tuples(st.just("release"), st.integers(0, 10**6), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 10**6)),
    st.tuples(st.just("lose"), st.integers(0, 10**6)),
    st.tuples(st.just("add"), st.integers(1, 8), st.sampled_from([4.0, 16.0])),
    st.tuples(st.just("chain")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workers=workers_st, users=users_st, ops=st.lists(op_st, max_size=60),
       reservations=st.sampled_from([1, 1, 2]), depth=st.sampled_from([0, 2]))
def test_random_programs_keep_every_invariant(workers, users, ops, reservations, depth):
    p = Placement(chain_depth=depth, max_reservations=reservations)
    for name, (weight, limit) in zip(USERS, users, strict=True):
        p.set_user(name, weight=weight, max_cores=limit)
    m = Model(p, workers)
    for op in ops:
        kind = op[0]
        if kind == "submit":
            for _ in range(op[3]):
                m.submit(USERS[op[1]], SHAPES[op[2]])
        elif kind == "schedule":
            m.schedule(op[1])
        elif kind == "release" and m.running:
            for _ in range(op[2]):
                if m.running:
                    m.release(sorted(m.running)[op[1] % len(m.running)])
        elif kind == "cancel" and m.queued:
            m.cancel(sorted(m.queued)[op[1] % len(m.queued)])
        elif kind == "lose" and len(m.spec) > 1:
            m.lose(sorted(m.spec)[op[1] % len(m.spec)])
        elif kind == "add":
            m.add_worker(op[1], op[2], 0)
        elif kind == "chain":
            m.schedule(None)
            m.chain()
        m.check_state()
    # submissions stop; jobs end; everything that could ever run must run
    for _ in range(500):
        if not m.queued:
            break
        for g in sorted(m.running):
            if g in m.running:
                m.release(g)
        if not m.schedule(None) and not m.running:
            break
    for g in m.queued:
        assert not p.could_ever_fit(m.req[g], user=m.user[g]), f"job {g} starved"


@settings(max_examples=100, deadline=None)
@given(workers=st.lists(st.integers(1, 8), min_size=1, max_size=4),
       weights=st.lists(st.integers(1, 4), min_size=2, max_size=3),
       picks=st.lists(st.integers(0, 10**6), min_size=50, max_size=200))
def test_shares_converge_to_the_weights_under_saturation(workers, weights, picks):
    p = Placement()
    for i, c in enumerate(workers, 1):
        p.add_worker(i, f"w{i}", Cores(c), Cores(c))
    users = [f"u{i}" for i in range(len(weights))]
    gid = 0
    for u, w in zip(users, weights, strict=True):
        p.set_user(u, weight=w)
        for _ in range(sum(workers) + len(picks)):
            gid += 1
            p.enqueue(gid, Cores(1), user=u)
    running = [(g, w, a) for g, w, a in p.schedule()]
    for k in picks:                       # one job ends, the freed core is handed out
        g, w, a = running.pop(k % len(running))
        p.release(w, g, a)
        running += p.schedule()
    total = sum(workers)
    stats = p.user_stats()
    assert sum(s.cores for s in stats.values()) == total, "saturated"
    # shares follow the weights up to one job (the discrete form of equal weighted
    # shares): take one job away from any user and it holds, per unit of weight, no more
    # than any other user
    for u, wu in zip(users, weights, strict=True):
        for v, wv in zip(users, weights, strict=True):
            assert (stats[u].cores - 1) / wu <= stats[v].cores / wv + 1e-9, (
                u, v, stats[u].cores, stats[v].cores)


def test_a_big_head_is_never_starved_by_a_stream_of_small_jobs_from_many_users():
    p = Placement()
    for wid in (1, 2, 3):
        p.add_worker(wid, f"w{wid}", Cores(4), Cores(4))
    gid, running = 0, []

    def submit(user, req):
        nonlocal gid
        gid += 1
        p.enqueue(gid, req, user=user)
        return gid

    for _ in range(12):
        submit("ann", Cores(1))
    running += p.schedule()
    big = submit("ann", Cores(4))
    for i in range(2000):
        submit(USERS[i % 3], Cores(1))
        g, w, a = running.pop((i * 7) % len(running))
        p.release(w, g, a)
        placed = p.schedule()
        running += placed
        if any(x == big for x, _, _ in placed):
            break
    else:
        raise AssertionError("the big job never started")


class FromScratch(Placement):
    """Placement without its shortcuts: every user's place in the fair-share order is
    recomputed for every pass, and a pass visits every user even when nothing queued fits
    anywhere any more, and visits each user whose head is known to fit nowhere."""

    _skip_blocked = False

    def _order(self):
        self._dirty = dict.fromkeys(self._users.values())
        return super()._order()

    @property
    def _live_shapes(self):
        return math.inf     # ``blocked >= _live_shapes`` never: no early end of a pass

    @_live_shapes.setter
    def _live_shapes(self, value):
        pass


def check_counts(p):
    """Each shape's count of queued jobs, and the count of shapes with queued jobs."""
    live = {}
    for u in p._users.values():
        for q in u.queues.values():
            live[q.shape.key] = live.get(q.shape.key, 0) + len(q.ids())
    for key, s in p._shapes.items():
        assert s.nlive == live.get(key, 0), key
    assert p._live_shapes == sum(1 for n in live.values() if n)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workers=workers_st, users=users_st, ops=st.lists(op_st, max_size=60),
       reservations=st.sampled_from([1, 1, 2]), depth=st.sampled_from([0, 2]))
def test_the_kept_order_places_exactly_as_recomputing_it_for_every_pass(
        workers, users, ops, reservations, depth):
    """Placement keeps each user's fair-share entry between passes and recomputes only
    those of users whose figures changed, and ends a pass once nothing queued fits: the
    same random programs give the same placements, reservations and chains, step by
    step, as a placement that recomputes everything and visits every user."""
    ps = [cls(chain_depth=depth, max_reservations=reservations)
          for cls in (Placement, FromScratch)]
    models = []
    for p in ps:
        for name, (weight, limit) in zip(USERS, users, strict=True):
            p.set_user(name, weight=weight, max_cores=limit)
        models.append(Model(p, workers))

    def same(results):
        a, b = ([(x[0], x[1], x[2].wire(), *x[3:]) for x in r] for r in results)
        assert a == b
        assert ps[0].reservations == ps[1].reservations and ps[0].more == ps[1].more

    for op in ops:
        kind = op[0]
        if kind == "submit":
            for m in models:
                for _ in range(op[3]):
                    m.submit(USERS[op[1]], SHAPES[op[2]])
        elif kind == "schedule":
            same([m.schedule(op[1]) for m in models])
        elif kind == "release" and models[0].running:
            for _ in range(op[2]):
                if models[0].running:
                    for m in models:
                        m.release(sorted(m.running)[op[1] % len(m.running)])
        elif kind == "cancel" and models[0].queued:
            for m in models:
                m.cancel(sorted(m.queued)[op[1] % len(m.queued)])
        elif kind == "lose" and len(models[0].spec) > 1:
            for m in models:
                m.lose(sorted(m.spec)[op[1] % len(m.spec)])
        elif kind == "add":
            for m in models:
                m.add_worker(op[1], op[2], 0)
        elif kind == "chain":
            same([m.schedule(None) for m in models])
            same([m.chain() for m in models])
        check_counts(ps[0])
        assert ps[0].user_stats() == ps[1].user_stats()
