"""Placement: submission order, backfill that never delays the head, shapes, retries."""

import random

from grain.executor.placement import Placement
from grain.resource import Cores, Memory, WTime


def make(*caps):
    p = Placement()
    for i, cap in enumerate(caps, 1):
        p.add_worker(i, f"w{i}", cap(), cap())
    return p


def test_submission_order_when_everything_fits():
    p = make(lambda: Cores(4))
    for gid in (1, 2, 3):
        p.enqueue(gid, Cores(1))
    assert [g for g, _, _ in p.schedule()] == [1, 2, 3]


def test_order_across_shapes_is_by_submission():
    p = make(lambda: Cores(2) & Memory(8))
    p.enqueue(1, Cores(1))
    p.enqueue(2, Cores(1) & Memory(1))
    p.enqueue(3, Cores(1))
    placed = p.schedule()
    assert [g for g, _, _ in placed] == [1, 2]
    assert p.is_queued(3)


def test_backfill_on_other_workers_but_never_on_the_heads_reservation():
    p = make(lambda: Cores(4), lambda: Cores(2))
    p.enqueue(1, Cores(3))
    p.enqueue(2, Cores(3))   # head once job 1 runs: only worker 1 is big enough
    p.enqueue(3, Cores(1))
    p.enqueue(4, Cores(1))
    p.enqueue(5, Cores(1))
    placed = {g: w for g, w, _ in p.schedule()}
    assert placed == {1: 1, 3: 2, 4: 2}, "3 and 4 backfill on worker 2; 5 may not take worker 1"
    assert p.reserved_for == (2, 1)


def test_head_never_starves_under_a_stream_of_small_jobs():
    p = make(lambda: Cores(4))
    allocs = {}
    gid = 0

    def submit(req):
        nonlocal gid
        gid += 1
        p.enqueue(gid, req)
        return gid

    for _ in range(3):
        submit(Cores(1))
    for g, w, a in p.schedule():
        allocs[g] = (w, a)
    big = submit(Cores(4))
    started_big = False
    for _ in range(20):          # keep finishing one small job and submitting another
        done = next(iter(allocs))
        w, a = allocs.pop(done)
        p.release(w, done, a)
        submit(Cores(1))
        for g, w, a in p.schedule():
            allocs[g] = (w, a)
            started_big |= g == big
        if started_big:
            break
    assert started_big, "the big head job must start once the worker drains"


def test_first_fit_packs_workers():
    p = make(lambda: Cores(4), lambda: Cores(4))
    for gid in range(1, 5):
        p.enqueue(gid, Cores(1))
    assert {w for _, w, _ in p.schedule()} == {1}


def test_release_returns_resources_and_wakes_the_queue():
    p = make(lambda: Cores(1))
    p.enqueue(1, Cores(1))
    p.enqueue(2, Cores(1))
    [(g, w, a)] = p.schedule()
    assert p.schedule() == []
    p.release(w, g, a)
    assert [x[0] for x in p.schedule()] == [2]


def test_retried_job_keeps_its_place():
    p = make(lambda: Cores(1))
    for gid in (5, 6, 7):
        p.enqueue(gid, Cores(1))
    [(g, w, a)] = p.schedule()
    assert g == 5
    running = p.remove_worker(w)
    assert running == {5}
    p.enqueue(5, Cores(1))                 # requeued after the worker was lost
    p.add_worker(2, "w2", Cores(1), Cores(1))
    assert [x[0] for x in p.schedule()] == [5]


def test_could_ever_fit_uses_total_capacity_and_lifetime():
    p = make(lambda: Cores(2) & Memory(4) & WTime(100, countdown=True))
    assert p.could_ever_fit(Cores(2))
    assert not p.could_ever_fit(Cores(3))
    assert not p.could_ever_fit(WTime(1000)), "the worker will not live that long"
    assert p.could_ever_fit(Cores(1) & WTime(50))
    p.enqueue(1, Cores(2))
    p.schedule()
    assert p.could_ever_fit(Cores(2)), "busy now, but it could run later"


def test_dequeue_cancels_a_queued_job():
    p = make(lambda: Cores(1))
    p.enqueue(1, Cores(1))
    p.enqueue(2, Cores(1))
    assert p.dequeue(2) and not p.dequeue(2)
    assert [x[0] for x in p.schedule()] == [1]
    assert len(p) == 0


def test_random_workload_never_overcommits():
    rng = random.Random(7)
    p = make(lambda: Cores(8) & Memory(16), lambda: Cores(4) & Memory(8))
    running = {}
    gid = 0
    for _ in range(400):
        for _ in range(rng.randint(0, 3)):
            gid += 1
            p.enqueue(gid, Cores(rng.randint(1, 4)) & Memory(rng.choice([0.5, 1, 4])))
        for g, w, a in p.schedule():
            running[g] = (w, a)
        for st in p.workers.values():
            assert len(st.free.c) >= 0 and st.free.m >= -1e-9
            used = [a for g, (w, a) in running.items() if w == st.wid]
            cores = [c for a in used for c in a.core_ids()]
            assert len(cores) == len(set(cores)), "no core is given twice"
            assert len(cores) + len(st.free.c) == st.total.N
        for g in rng.sample(sorted(running), k=min(len(running), rng.randint(0, 3))):
            w, a = running.pop(g)
            p.release(w, g, a)


def chained_setup(depth=2):
    p = Placement(chain_depth=depth)
    p.add_worker(1, "w1", Cores(1), Cores(1))
    for gid in range(1, 6):
        p.enqueue(gid, Cores(1))
    assert [g for g, _, _ in p.schedule()] == [1]
    return p


def test_chaining_queues_the_head_behind_a_running_job_of_its_shape():
    p = chained_setup(depth=2)
    chained = p.chain(lambda head, tail: 10)
    assert [(g, after) for g, _, _, after in chained] == [(2, 1), (3, 2)], "capped by depth"
    allocs = {id(a) for _, _, a, _ in chained}
    assert len(allocs) == 1, "chained jobs share the running job's allocation"
    assert p.is_queued(4) and p.is_queued(5)


def test_chaining_respects_the_callers_depth_and_refusal():
    p = chained_setup(depth=8)
    assert p.chain(lambda head, tail: 0) == []
    assert [g for g, *_ in p.chain(lambda head, tail: 1)] == [2]


def test_release_passes_the_allocation_down_the_chain():
    p = chained_setup(depth=2)
    [(_, w, alloc, _), _] = p.chain(lambda h, t: 10)
    assert p.release(w, 1, alloc) == 2, "job 2 now runs on job 1's cores"
    assert len(p.workers[1].free.c) == 0
    assert p.release(w, 2, alloc) == 3
    assert p.release(w, 3, alloc) is None
    assert len(p.workers[1].free.c) == 1, "the last one gives the cores back"
    assert [g for g, _, _ in p.schedule()] == [4]


def test_a_waiting_job_that_ends_first_leaves_the_cores_with_the_running_one():
    p = chained_setup(depth=1)
    [(_, w, alloc, _)] = p.chain(lambda h, t: 10)
    assert p.release(w, 2, alloc) is None, "cancelled while waiting"
    assert len(p.workers[1].free.c) == 0, "job 1 still runs on them"
    assert p.release(w, 1, alloc) is None
    assert len(p.workers[1].free.c) == 1


def test_only_the_head_is_chained():
    p = Placement(chain_depth=4)
    p.add_worker(1, "w1", Cores(2), Cores(2))
    p.enqueue(1, Cores(1))
    p.enqueue(2, Cores(2))    # head after job 1 runs: needs both cores
    p.enqueue(3, Cores(1))
    assert [g for g, _, _ in p.schedule()] == [1]
    assert p.chain(lambda h, t: 10) == [], "job 3 may not jump the head by chaining"


def test_lost_worker_returns_chained_jobs_too():
    p = chained_setup(depth=2)
    p.chain(lambda h, t: 10)
    assert p.remove_worker(1) == {1, 2, 3}
