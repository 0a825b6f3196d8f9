"""Placement's structures: the capacity index (best fit, kinds it covers and the fallback
for those it does not), bounded passes, lazy cancellation and re-queued jobs.

No timings here: the cost claims are checked structurally (what is stored, what is
visited); speed is measured by ``python -m bench.placement_sim``."""

import gc
import math

import pytest

from grain.executor.placement import Placement, shape_of
from grain.executor.placement_queue import COMPACT_MIN
from grain.resource import GPU, Cores, Memory, Resource, WTime, to_wire


def cluster(*caps, **kw):
    p = Placement(**kw)
    for i, cap in enumerate(caps, 1):
        p.add_worker(i, f"w{i}", cap(), cap())
    return p


def where(p, req, n=1, first=1, user=""):
    for gid in range(first, first + n):
        p.enqueue(gid, req, user=user)
    return {g: w for g, w, _ in p.schedule()}


# -- the index ---------------------------------------------------------------------------
def test_best_fit_takes_the_worker_with_the_least_room_that_fits():
    p = cluster(lambda: Cores(4), lambda: Cores(4), lambda: Cores(4))
    where(p, Cores(3), first=1)           # worker 1: 1 free
    where(p, Cores(2), first=2)           # worker 2: 2 free
    assert where(p, Cores(1), first=3) == {3: 1}
    assert where(p, Cores(2), first=4) == {4: 2}
    assert where(p, Cores(4), first=5) == {5: 3}


def test_memory_is_indexed_too():
    p = cluster(lambda: Cores(4) & Memory(4), lambda: Cores(8) & Memory(64))
    assert where(p, Cores(1) & Memory(16)) == {1: 2}, "worker 1 has the cores, not the memory"
    assert where(p, Cores(1) & Memory(2), first=2) == {2: 1}, "least memory that fits"


def test_allocations_are_what_resource_alloc_gives():
    p = cluster(lambda: Cores(8) & Memory(32))
    ref = Cores(8) & Memory(32)
    for gid, req in enumerate([Cores(3) & Memory(5), Cores(1), Memory(2), Cores(2)], 1):
        p.enqueue(gid, req)
        [(_, _, alloc)] = p.schedule()
        expected = ref.alloc(req)
        assert alloc.wire() == to_wire(expected), "sent to the worker as Resource.alloc's"
        got = alloc.resource()
        assert to_wire(got) == to_wire(expected) and repr(got) == repr(expected)
        assert type(got) is Resource and got.kinds().keys() == expected.kinds().keys()
        assert not gc.is_tracked(alloc), "a running job's grant is no work for the collector"
    assert p.workers[1].free.c == ref.c and p.workers[1].free.m == ref.m


def test_gpus_are_checked_on_each_candidate():
    p = cluster(lambda: Cores(8), lambda: Cores(8) & GPU(2))
    assert where(p, Cores(1) & GPU(1), 2) == {1: 2, 2: 2}
    assert where(p, Cores(1) & GPU(1), first=3) == {}, "both GPUs are taken"
    assert p.reserved_for == (3, 2)
    assert where(p, Cores(1), first=4) == {4: 1}, "not on the head's reserved worker"
    p.dequeue(3)
    assert where(p, Cores(1), first=5) == {5: 2}, "best fit: the GPU worker has less room"


def test_a_worker_failing_an_extra_kind_is_skipped_until_it_gains_capacity():
    p = cluster(lambda: Cores(8) & GPU(1), lambda: Cores(8) & GPU(1))
    req = Cores(1) & GPU(1)
    for gid in (1, 2):
        p.enqueue(gid, req)
    placed = {g: (w, a) for g, w, a in p.schedule()}
    assert sorted(w for w, _ in placed.values()) == [1, 2]
    p.enqueue(3, req)
    assert p.schedule() == []
    assert len(p._shapes[shape_of(req)].nofit) == 2, "both remembered as not fitting"
    g, (w, a) = next((g, v) for g, v in placed.items() if v[0] == 2)
    p.release(w, g, a)                    # worker 2 gains a GPU: looked at again
    assert [(x, y) for x, y, _ in p.schedule()] == [(3, 2)]


def test_worker_lifetime_is_respected():
    p = cluster(lambda: Cores(4) & WTime(100, countdown=True),
                lambda: Cores(8) & WTime(math.inf, countdown=True))
    assert where(p, Cores(1) & WTime(1000)) == {1: 2}, "worker 1 fits better, lives too short"
    assert where(p, Cores(1) & WTime(50), first=2) == {2: 1}


class Licence(Resource):
    """A custom kind: a count of licences."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def _request(self, res):
        return self.n >= res.n

    def _alloc(self, res):
        self.n -= res.n
        return Licence(res.n)

    def _dealloc(self, res):
        self.n += res.n

    def _repr(self):
        return f"Licence({self.n})"


def test_custom_kinds_go_through_their_own_methods():
    p = cluster(lambda: Cores(4), lambda: Cores(4) & Licence(1))
    for gid in (1, 2):
        p.enqueue(gid, Cores(1) & Licence(1))
    [(g, w, alloc)] = p.schedule()
    assert (g, w) == (1, 2) and alloc.resource().n == 1 and p.workers[2].free.n == 0
    p.release(w, g, alloc)
    assert p.workers[2].free.n == 1
    assert [x[0] for x in p.schedule()] == [2]


class Cores2(Cores):
    """Cores by another class: a pool the index cannot read, searched generically."""


Cores2.__name__ = "Cores"


def test_workers_with_kinds_the_index_cannot_read_are_searched_generically():
    p = Placement()
    p.add_worker(1, "odd", Cores2(2), Cores2(2))
    p.enqueue(1, Cores2(1))
    p.enqueue(2, Cores2(1))
    p.enqueue(3, Cores2(1))
    placed = p.schedule()
    assert [g for g, _, _ in placed] == [1, 2]
    assert len(p.workers[1].free.c) == 0
    p.release(1, 1, placed[0][2])
    assert [g for g, _, _ in p.schedule()] == [3]


def test_the_reservation_is_the_freest_worker_big_enough():
    p = cluster(lambda: Cores(2), lambda: Cores(8), lambda: Cores(8))
    where(p, Cores(7), first=1)           # worker 2 (best fit among the 8-core ones)
    where(p, Cores(6), first=2)           # worker 3
    p.enqueue(3, Cores(8))
    assert p.schedule() == []
    assert p.reserved_for == (3, 3), "worker 1 is freer but too small; worker 3 has 2 free"


# -- bounded passes ----------------------------------------------------------------------
def test_a_bounded_pass_stops_and_says_there_is_more():
    p = cluster(lambda: Cores(8))
    for gid in range(1, 11):
        p.enqueue(gid, Cores(1), user="ab"[gid % 2])
    unbounded = cluster(lambda: Cores(8))
    for gid in range(1, 11):
        unbounded.enqueue(gid, Cores(1), user="ab"[gid % 2])
    order = []
    while True:
        got = p.schedule(max_placements=3)
        assert len(got) <= 3
        order += [g for g, _, _ in got]
        if not p.more:
            break
    assert order == [g for g, _, _ in unbounded.schedule()]
    assert not unbounded.more


def test_a_bounded_pass_keeps_the_reservation_honoured():
    p = cluster(lambda: Cores(4), lambda: Cores(4))
    where(p, Cores(3))                    # worker 1: 1 free
    p.enqueue(2, Cores(4), user="bob")    # reserved: worker 2 (4 free)... fits: placed
    p.enqueue(3, Cores(4), user="bob")    # blocked: reservation
    for gid in range(4, 10):
        p.enqueue(gid, Cores(1), user="carol")
    placed = []
    while True:
        placed += p.schedule(max_placements=1)
        if not p.more:
            break
    on = {g: w for g, w, _ in placed}
    assert on[2] == 2 and 3 not in on
    assert [g for g, w in on.items() if g > 3] == [4], "carol only gets worker 1's core"


# -- the queue ---------------------------------------------------------------------------
def test_cancelling_back_to_front_trims_the_queue_at_once():
    p = cluster(lambda: Cores(1))
    n = 10_000
    for gid in range(1, n + 1):
        p.enqueue(gid, Cores(1))
    [q] = p._users[""].queues.values()
    for gid in range(n, 1, -1):
        assert p.dequeue(gid)
        assert len(q.main) - q.head == gid - 1, "no tombstone left behind"
    assert q.dead == 0 and len(p) == 1
    assert [g for g, _, _ in p.schedule()] == [1]


def test_cancelling_in_the_middle_leaves_tombstones_then_compacts():
    p = cluster(lambda: Cores(4))
    for gid in range(1, 5001):
        p.enqueue(gid, Cores(1))
    [q] = p._users[""].queues.values()
    for gid in range(2, 5000, 2):         # every other job, front and back kept
        p.dequeue(gid)
        stored = len(q.main) - q.head + len(q.late)
        assert stored <= 2 * q.live + COMPACT_MIN + 1, "tombstones stay bounded"
    assert len(p) == 2501
    assert [g for g, _, _ in p.schedule()] == [1, 3, 5, 7]


def test_dequeue_is_exact():
    p = cluster(lambda: Cores(1))
    p.enqueue(1, Cores(1))
    p.enqueue(2, Cores(1))
    assert p.dequeue(1) and not p.dequeue(1) and not p.dequeue(99)
    assert not p.is_queued(1) and p.is_queued(2) and len(p) == 1


def test_requeued_jobs_keep_their_place_among_many():
    p = cluster(lambda: Cores(2))
    for gid in range(1, 101):
        p.enqueue(gid, Cores(1))
    got = p.schedule()
    assert [g for g, _, _ in got] == [1, 2]
    lost = p.remove_worker(1)
    for gid in sorted(lost, reverse=True):   # re-queued in any order
        p.enqueue(gid, Cores(1))
    p.add_worker(2, "w2", Cores(3), Cores(3))
    assert [g for g, _, _ in p.schedule()] == [1, 2, 3]


def test_a_cancelled_then_requeued_job_runs_once():
    p = cluster(lambda: Cores(4))
    for gid in (1, 2, 3):
        p.enqueue(gid, Cores(1))
    p.dequeue(2)
    p.enqueue(2, Cores(1))
    assert sorted(g for g, _, _ in p.schedule()) == [1, 2, 3]
    assert len(p) == 0


def test_enqueueing_a_queued_job_again_changes_nothing():
    p = cluster(lambda: Cores(4))
    p.enqueue(1, Cores(1))
    p.enqueue(1, Cores(1))
    assert len(p) == 1 and [g for g, _, _ in p.schedule()] == [1]


def test_sweeps_see_queued_jobs_per_shape_and_per_user():
    p = Placement()
    p.enqueue(1, Cores(1), user="a")
    p.enqueue(2, Cores(2), user="b")
    p.enqueue(3, Cores(1), user="b")
    p.dequeue(2)
    assert sorted((repr(r), ids) for r, ids in p.shapes()) == [(repr(Cores(1)), [1, 3])]
    [(key, req)] = p.requests()
    assert p.queued_of(key) == [1, 3]
    assert sorted((u, ids) for u, _, ids in p.queues()) == [("a", [1]), ("b", [3])]


def test_no_worker_no_placement_and_could_ever_fit():
    p = Placement()
    p.enqueue(1, Cores(1))
    assert p.schedule() == [] and not p.could_ever_fit(Cores(1))
    p.add_worker(1, "w1", Cores(1), Cores(1))
    assert p.could_ever_fit(Cores(1))
    assert [g for g, _, _ in p.schedule()] == [1]


@pytest.mark.parametrize("budget", [0, -1])
def test_an_empty_budget_places_nothing(budget):
    p = cluster(lambda: Cores(1))
    p.enqueue(1, Cores(1))
    assert p.schedule(max_placements=budget) == [] and p.more
