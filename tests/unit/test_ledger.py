"""The ledger: each job ends exactly once; retries are bounded."""

import pytest

from grain.executor.ledger import JobState, Ledger
from grain.resource import Cores


def submit(led, retries=2):
    return led.submit(1, 1, Cores(1), 1, b"x", retries)


def test_a_job_ends_exactly_once():
    led = Ledger()
    rec = submit(led)
    led.start(rec.gid, 1, Cores([0]), [])
    assert led.end(rec.gid) is rec
    assert led.end(rec.gid) is None, "a late second report is dropped"
    assert led.finished == 1 and not led.jobs


def test_cannot_start_twice():
    led = Ledger()
    rec = submit(led)
    led.start(rec.gid, 1, Cores([0]), [])
    with pytest.raises(ValueError):
        led.start(rec.gid, 2, Cores([0]), [])


def test_requeue_is_bounded_by_retries():
    led = Ledger()
    rec = submit(led, retries=1)
    led.start(rec.gid, 1, Cores([0]), [])
    assert led.requeue(rec.gid, "w1") is rec and rec.state is JobState.QUEUED
    led.start(rec.gid, 2, Cores([0]), [])
    assert led.requeue(rec.gid, "w2") is None, "retries used up: the caller fails it"
    assert rec.lost_on == ["w1", "w2"]


def test_counters():
    led = Ledger()
    a, b, c = submit(led), submit(led), submit(led)
    led.end(a.gid, ok=True)
    led.end(b.gid, ok=False)
    led.end(c.gid, cancelled=True)
    assert (led.submitted, led.finished, led.failed, led.cancelled) == (3, 1, 1, 1)
