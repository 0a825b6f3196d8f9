"""The ledger: each job ends exactly once; retries are bounded; parked jobs re-attach;
a job handed back by a draining worker is not counted as a retry."""

import pytest

from grain.executor.grant import Grant
from grain.executor.ledger import JobState, Ledger
from grain.resource import Cores

SHAPE = "Cores(1)"


def submit(led, retries=2, cid=1):
    return led.submit(7, cid, "alice", Cores(1), SHAPE, 1, b"x", retries)


def test_a_job_ends_exactly_once():
    led = Ledger()
    rec = submit(led)
    assert rec.key == (7, 1) and rec.user == "alice"
    led.start(rec.gid, 1, Cores([0]))
    assert led.end(rec.gid) is rec
    assert led.end(rec.gid) is None, "a late second report is dropped"
    assert led.finished == 1 and not led.jobs
    assert rec.payload == b"", "an ended job's arguments are freed"


def test_cannot_start_twice():
    led = Ledger()
    rec = submit(led)
    led.start(rec.gid, 1, Cores([0]))
    with pytest.raises(ValueError):
        led.start(rec.gid, 2, Cores([0]))


def test_requeue_is_bounded_by_retries():
    led = Ledger()
    rec = submit(led, retries=1)
    led.start(rec.gid, 1, Cores([0]))
    assert led.requeue(rec.gid, "w1") is rec and rec.state is JobState.QUEUED
    led.start(rec.gid, 2, Cores([0]))
    assert led.requeue(rec.gid, "w2") is None, "retries used up: the caller fails it"
    assert rec.lost_on == ["w1", "w2"]


def test_handing_back_is_not_a_retry():
    led = Ledger()
    rec = submit(led, retries=0)
    for w in range(5):
        led.start(rec.gid, w, Cores([0]))
        assert led.requeue(rec.gid, f"w{w}", count=False) is rec
    assert rec.lost_on is None and led.retried == 0 and led.handed_back == 5
    assert rec.attempts == 0


def test_parked_job_reattaches_without_a_new_start():
    led = Ledger()
    rec = submit(led)
    led.start(rec.gid, 1, Cores([0]))
    assert led.park(rec.gid, "node-a", deadline=30.0) is rec
    assert rec.state is JobState.PARKED and rec.parked_on == "node-a" and rec.alloc is None
    led.attach(rec.gid, 2, Cores([3]))
    assert rec.state is JobState.RUNNING and rec.worker == 2 and rec.parked_on is None
    assert led.started == 1 and led.reattached == 1, "re-attaching is not a second run"


def test_adopted_orphans_are_running_at_once():
    led = Ledger()
    rec = led.adopt(9, 4, "bob", 2, worker=3, alloc=Grant.of(Cores([1])), request=Cores(1),
                    shape=SHAPE, name="f", started_at=5.0)
    assert rec.orphan and rec.state is JobState.RUNNING and rec.key == (9, 4)
    assert led.orphans == 1, "counted, so a status page need not scan the ledger"
    other = led.adopt(9, 5, "bob", 2, worker=3, alloc=Grant.of(Cores([2])), request=Cores(1),
                      shape=SHAPE, name="f", started_at=5.0)
    led.claimed(other)
    assert not other.orphan and led.orphans == 1
    assert led.end(rec.gid) is rec and led.orphans == 0


def test_counters():
    led = Ledger()
    a, b, c = submit(led, cid=1), submit(led, cid=2), submit(led, cid=3)
    led.end(a.gid, ok=True)
    led.end(b.gid, ok=False)
    led.end(c.gid, cancelled=True)
    assert (led.submitted, led.finished, led.failed, led.cancelled) == (3, 1, 1, 1)
