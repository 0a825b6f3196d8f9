"""Placement between users: weighted dominant-resource fairness, limits, EASY across users."""

import pytest

from grain.executor.placement import Placement
from grain.resource import Cores, Memory


def cluster(*caps, **kw):
    p = Placement(**kw)
    for i, cap in enumerate(caps, 1):
        p.add_worker(i, f"w{i}", cap(), cap())
    return p


class Jobs:
    """Submits jobs with increasing ids and keeps what runs, to release it later."""

    def __init__(self, p):
        self.p, self.gid, self.running, self.user_of = p, 0, {}, {}

    def submit(self, user, req, n=1):
        ids = []
        for _ in range(n):
            self.gid += 1
            self.p.enqueue(self.gid, req, user=user)
            self.user_of[self.gid] = user
            ids.append(self.gid)
        return ids

    def schedule(self, **kw):
        placed = self.p.schedule(**kw)
        for g, w, a in placed:
            self.running[g] = (w, a)
        return [g for g, _, _ in placed]

    def users(self, gids):
        return [self.user_of[g] for g in gids]

    def release(self, gid):
        w, a = self.running.pop(gid)
        return self.p.release(w, gid, a)

    def release_of(self, user, n=1):
        for g in [g for g in self.running if self.user_of[g] == user][:n]:
            self.release(g)


def test_a_lone_user_gets_the_whole_cluster():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4)))
    j.submit("alice", Cores(1), 20)
    assert len(j.schedule()) == 8
    st = j.p.user_stats()["alice"]
    assert (st.running, st.queued, st.cores, st.share) == (8, 12, 8, 1.0)


def test_bob_takes_the_very_next_release_when_alice_fills_the_cluster():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4)))
    j.submit("alice", Cores(1), 3000)
    assert len(j.schedule()) == 8
    [bob] = j.submit("bob", Cores(1))
    assert j.schedule() == [], "the cluster is full"
    j.release_of("alice")
    assert j.schedule() == [bob], "Bob's share is 0: the freed core is his"
    j.release_of("alice")
    assert j.users(j.schedule()) == ["alice"], "Bob has nothing queued: Alice goes on"


def test_capacity_freed_for_a_blocked_user_is_not_taken_by_another():
    """Bob needs two cores; Alice's freed cores are held for him (the reservation belongs
    to the most deserving blocked head), not handed back to Alice one by one."""
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4)))
    j.submit("alice", Cores(1), 100)
    j.schedule()
    [bob] = j.submit("bob", Cores(2))
    assert j.schedule() == []
    first = next(g for g, (w, _) in j.running.items() if w == 1)
    j.release(first)
    assert j.schedule() == [], "one core free: Bob's head does not fit, Alice may not take it"
    assert j.p.reservations[0][:3] == (bob, 1, "bob")
    second = next(g for g, (w, _) in j.running.items() if w == 1)
    j.release(second)
    assert j.schedule() == [bob]


def test_weights_share_the_cluster_in_proportion():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4)))
    j.p.set_user("bob", weight=3)
    j.submit("alice", Cores(1), 50)
    j.submit("bob", Cores(1), 50)
    placed = j.users(j.schedule())
    assert placed.count("bob") == 6 and placed.count("alice") == 2
    st = j.p.user_stats()
    assert st["bob"].weighted_share == pytest.approx(st["alice"].weighted_share)


def test_users_interleave_by_share_not_by_submission():
    j = Jobs(cluster(lambda: Cores(6)))
    j.submit("alice", Cores(1), 10)
    j.submit("bob", Cores(1), 10)
    assert j.users(j.schedule()) == ["alice", "bob"] * 3


def test_dominant_share_counts_memory():
    """Alice's jobs take a quarter of the cluster's memory each, Bob's an eighth of its
    cores: by dominant share, Alice runs one job for every two of Bob's (ties go to the
    user with the older job)."""
    j = Jobs(cluster(lambda: Cores(4) & Memory(16), lambda: Cores(4) & Memory(16)))
    j.submit("alice", Cores(1) & Memory(8), 10)
    j.submit("bob", Cores(1), 10)
    placed = j.users(j.schedule())
    assert placed == ["alice", "bob", "bob"] * 2 + ["alice", "bob"]
    st = j.p.user_stats()
    assert st["alice"].share == pytest.approx(0.75) and st["bob"].share == pytest.approx(0.625)
    assert (st["alice"].memory, st["bob"].memory) == (24.0, 0.0)


def test_a_user_at_its_core_limit_is_skipped_and_keeps_its_jobs_queued():
    j = Jobs(cluster(lambda: Cores(8)))
    j.p.set_user("alice", max_cores=3)
    j.submit("alice", Cores(1), 10)
    assert len(j.schedule()) == 3
    assert j.p.user_stats()["alice"].queued == 7
    j.submit("bob", Cores(1), 10)
    assert j.users(j.schedule()) == ["bob"] * 5
    j.release_of("alice")
    assert j.users(j.schedule()) == ["alice"]


def test_the_limit_does_not_let_a_users_small_jobs_pass_its_head():
    j = Jobs(cluster(lambda: Cores(8)))
    j.p.set_user("alice", max_cores=4)
    j.submit("alice", Cores(3))
    j.schedule()
    j.submit("alice", Cores(2))      # the head: over the limit while the 3 cores run
    j.submit("alice", Cores(1))      # would fit under the limit, but would delay the head
    assert j.schedule() == []
    j.release_of("alice")
    assert len(j.schedule()) == 2


def test_a_job_over_the_users_limit_does_not_hold_the_user_up():
    j = Jobs(cluster(lambda: Cores(8)))
    j.p.set_user("alice", max_cores=2)
    [big] = j.submit("alice", Cores(4))
    [small] = j.submit("alice", Cores(1))
    assert j.schedule() == [small]
    assert j.p.is_queued(big)
    assert not j.p.could_ever_fit(Cores(4), user="alice")
    assert j.p.could_ever_fit(Cores(4)) and j.p.could_ever_fit(Cores(4), user="bob")


def test_the_reservation_goes_to_the_most_deserving_blocked_head():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4)))
    j.submit("alice", Cores(1), 8)
    j.schedule()                       # Alice holds everything
    [a_big] = j.submit("alice", Cores(4))
    [b_big] = j.submit("bob", Cores(4))
    j.submit("alice", Cores(1), 5)
    assert j.schedule() == []
    [res] = j.p.reservations
    assert (res.gid, res.user) == (b_big, "bob"), "Bob's share is 0, Alice's is 1"
    # Alice's head has no reservation: her small jobs may not take what it waits for
    j.release_of("alice", 2)
    assert j.schedule() == []
    assert j.p.is_queued(a_big)


def test_other_users_backfill_around_the_reservation():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(2)))
    j.submit("alice", Cores(3))
    j.schedule()                       # worker 1: 1 core free, worker 2: 2
    [b_big] = j.submit("bob", Cores(3))
    j.submit("carol", Cores(1), 5)
    placed = j.schedule()
    assert j.p.reserved_for == (b_big, 1)
    assert {j.running[g][0] for g in placed} == {2}, "carol backfills on worker 2 only"
    assert len(placed) == 2


def test_more_reservations_protect_more_heads():
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(4), max_reservations=2))
    j.submit("alice", Cores(1), 8)
    j.schedule()
    [a_big] = j.submit("alice", Cores(4))
    j.submit("alice", Cores(1), 4)
    [b_big] = j.submit("bob", Cores(4))
    j.schedule()
    assert {(r.gid, r.user) for r in j.p.reservations} == {(a_big, "alice"), (b_big, "bob")}
    assert {r.wid for r in j.p.reservations} == {1, 2}
    j.release_of("alice", 8)
    placed = j.schedule()
    assert set(placed[:2]) == {a_big, b_big}, "both heads start on their drained workers"


def test_a_users_head_is_not_starved_by_the_users_own_small_jobs_nor_by_others():
    j = Jobs(cluster(lambda: Cores(4)))
    j.submit("alice", Cores(1), 4)
    j.schedule()
    [big] = j.submit("alice", Cores(4))
    started = False
    for _ in range(40):                 # others and Alice keep submitting small jobs
        j.submit("alice", Cores(1))
        j.submit("bob", Cores(1))
        j.release(next(iter(j.running)))
        started |= big in j.schedule()
        if started:
            break
    assert started


def test_user_stats_report_running_queued_cores_memory_and_share():
    j = Jobs(cluster(lambda: Cores(4) & Memory(8)))
    j.p.set_user("alice", weight=2, max_cores=8, max_queued=100)
    j.submit("alice", Cores(2) & Memory(2), 3)
    j.schedule()
    st = j.p.user_stats()["alice"]
    assert (st.running, st.queued, st.cores, st.memory) == (2, 1, 4, 4.0)
    assert st.share == pytest.approx(1.0) and st.weighted_share == pytest.approx(0.5)
    assert (st.weight, st.max_cores, st.max_queued) == (2.0, 8, 100)
    j.release_of("alice", 2)
    j.p.schedule()
    assert j.p.user_stats()["alice"].queued == 0


def test_memory_in_use_is_accounted_for_memory_only_jobs():
    j = Jobs(cluster(lambda: Cores(4) & Memory(8)))
    j.submit("alice", Memory(3))
    [cores_job] = j.submit("alice", Cores(1))
    j.schedule()
    j.release(cores_job)
    st = j.p.user_stats()["alice"]
    assert (st.cores, st.memory, st.running) == (0, 3.0, 1)
    assert st.share == pytest.approx(3 / 8)


def test_queue_full_reports_the_users_queued_limit():
    p = cluster(lambda: Cores(1))
    p.set_user("alice", max_queued=2)
    p.enqueue(1, Cores(1), user="alice")
    assert not p.queue_full("alice")
    p.enqueue(2, Cores(1), user="alice")
    assert p.queue_full("alice") and not p.queue_full("bob")
    p.dequeue(2)
    assert not p.queue_full("alice")


def test_weights_must_be_positive():
    with pytest.raises(ValueError):
        Placement().set_user("alice", weight=0)


def test_removing_a_worker_stops_charging_its_jobs():
    j = Jobs(cluster(lambda: Cores(2), lambda: Cores(2)))
    j.submit("alice", Cores(1), 4)
    j.schedule()
    lost = j.p.remove_worker(1)
    assert len(lost) == 2
    assert j.p.user_stats()["alice"].cores == 2
    assert j.p.user_stats()["alice"].running == 2


def test_chaining_follows_fair_share():
    p = Placement(chain_depth=4)
    p.add_worker(1, "w1", Cores(2), Cores(2))
    j = Jobs(p)
    j.submit("alice", Cores(1), 10)
    j.schedule()
    [bob] = j.submit("bob", Cores(1))
    assert p.chain(lambda h, t: 10) == [], "Bob is owed the next core: Alice does not chain"
    j.release_of("alice")
    assert j.schedule() == [bob]
    chained = p.chain(lambda h, t: 10)
    assert chained and all(j.user_of[g] == "alice" for g, *_ in chained)
    assert all(j.user_of[after] == "alice" for *_, after in chained), "behind her own jobs"
    assert p.user_stats()["alice"].cores == 1, "an allocation counts once, however shared"


def test_a_release_is_seen_by_the_next_pass_even_by_a_user_that_had_no_turn():
    """Placement keeps the users' order between passes: a user's jobs ending must move it
    up even when the last pass never came to it."""
    j = Jobs(cluster(lambda: Cores(4)))
    j.submit("alice", Cores(1), 10)
    j.submit("bob", Cores(1), 10)
    assert sorted(j.users(j.schedule())) == ["alice", "alice", "bob", "bob"]
    j.release_of("alice")
    assert j.users(j.schedule(max_placements=1)) == ["alice"], "only Alice had a turn"
    j.release_of("bob", 2)              # Bob holds nothing now, Alice two cores
    j.release_of("alice")
    assert j.users(j.schedule(max_placements=1)) == ["bob"]


def test_a_pass_ends_early_only_when_every_shape_queued_is_blocked():
    """Ann and Bob wait for a whole worker (Ann holds the one reservation), Cid's one-core
    job fits elsewhere: a pass may end once everything queued fits nowhere, and here one
    shape still fits, however many users' heads of the other shape it met."""
    j = Jobs(cluster(lambda: Cores(4), lambda: Cores(1)))
    [x] = j.submit("xavier", Cores(3))
    assert j.schedule() == [x]
    [a] = j.submit("ann", Cores(4))
    j.submit("bob", Cores(4))
    [c] = j.submit("cid", Cores(1))
    assert j.schedule() == [c]
    assert [(r.gid, r.wid) for r in j.p.reservations] == [(a, 1)]


# A pass pops users whose head is known to fit nowhere once no reservation is left, without
# visiting them. Each test below is a user that must still be visited in that state.

def _full_for_four_cores():
    """Two 8-core workers with 3 cores free on each: a Cores(4) job fits nowhere now."""
    j = Jobs(cluster(lambda: Cores(8), lambda: Cores(8)))
    x = j.submit("xavier", Cores(5), 2)
    assert j.schedule() == x
    return j


def test_the_user_holding_the_reservation_backfills_on_each_of_its_turns():
    """Ann's head waits (with the reservation), her one-core jobs backfill. Her turn ends after
    each one while Bob (share 0) is ahead; when it comes back, her blocked head is parked,
    and she goes on placing: she is not popped like a user whose head fits nowhere."""
    j = _full_for_four_cores()
    [head, *small] = j.submit("ann", Cores(4)) + j.submit("ann", Cores(1), 3)
    j.submit("bob", Cores(4))
    assert j.schedule() == small
    assert [r.gid for r in j.p.reservations] == [head]


def test_a_user_over_its_core_limit_goes_on_with_its_other_jobs():
    """Uma's head asks more cores than her limit (never for her), Vic's head of the same
    shape waits with the reservation: Uma's one-core jobs still start."""
    j = _full_for_four_cores()
    [v] = j.submit("vic", Cores(4))
    j.p.set_user("uma", max_cores=2)
    j.submit("uma", Cores(4))
    small = j.submit("uma", Cores(1), 2)
    assert j.schedule() == small
    assert [r.gid for r in j.p.reservations] == [v]


def test_a_user_whose_head_no_worker_could_ever_run_goes_on_with_its_other_jobs():
    """Ann holds the reservation; Vic's and then Uma's heads ask 16 cores of 8-core workers
    (never: not a head that waits). Uma's one-core job still starts."""
    j = _full_for_four_cores()
    [a] = j.submit("ann", Cores(4))
    j.submit("vic", Cores(16))
    j.submit("uma", Cores(16))
    small = j.submit("uma", Cores(1))
    assert j.schedule() == small
    assert [r.gid for r in j.p.reservations] == [a]
