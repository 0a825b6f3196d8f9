"""The executor's history (grain.executor.history): per-second counters in a ring, sampled
utilization, recent failures. Pure: a fake clock drives it."""

from __future__ import annotations

from grain.executor.history import ERROR_CHARS, History
from grain.executor.ledger import JobRecord, JobState
from grain.protocol.messages import End
from grain.resource import Cores


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _rec(user: str = "alice", name: str = "fn", started: float | None = None) -> JobRecord:
    rec = JobRecord(1, 7, 1, user, Cores(1), "shape", 1, b"", 0, name)
    if started is not None:
        rec.state, rec.started_at, rec.attempts = JobState.RUNNING, started, 1
    return rec


def test_counts_land_in_their_second_and_old_seconds_roll_out() -> None:
    wall, mono = Clock(1000.2), Clock(50.0)
    h = History(window=5, clock=wall, mono=mono)
    r = _rec()
    h.on_start(r, "w")
    h.on_end(r, End.OK, "", "w")
    wall.t = 1001.9
    h.on_end(r, End.OK, "", "w")
    h.on_end(r, End.CANCELLED, "", "w")
    s = h.series()
    assert s["end"] == 1001 and s["since"] == 1000 and s["step_s"] == 1
    assert s["finished"] == [0, 0, 0, 1, 1] and s["started"] == [0, 0, 0, 1, 0]
    assert s["cancelled"] == [0, 0, 0, 0, 1] and s["failed"] == [0] * 5
    wall.t = 1004.0   # two seconds later: nothing happened in between, and nothing is lost
    assert h.series()["finished"] == [1, 1, 0, 0, 0]
    wall.t = 1100.0   # far later: everything rolled out, the ring is all zeros
    assert h.series()["finished"] == [0] * 5
    assert h.user_totals("alice") == (2, 0)


def test_seconds_nobody_sampled_are_unknown_not_zero() -> None:
    wall = Clock(2000.0)
    h = History(window=4, clock=wall)
    h.sample(3, 8, 10)
    wall.t = 2002.0
    h.sample(8, 8, 0)
    s = h.series()
    assert s["cores_busy"] == [None, 3, None, 8]
    assert s["cores_total"] == [None, 8, None, 8] and s["queued"] == [None, 10, None, 0]


def test_a_clock_that_steps_back_counts_into_the_newest_second() -> None:
    wall = Clock(500.0)
    h = History(window=3, clock=wall)
    wall.t = 498.0
    h.on_end(_rec(), End.OK, "", "w")
    assert h.series()["finished"] == [0, 0, 1] and h.series()["end"] == 500


def test_failures_are_kept_newest_first_bounded_and_short() -> None:
    wall, mono = Clock(10.0), Clock(100.0)
    h = History(window=10, failures=3, clock=wall, mono=mono)
    for i in range(5):
        h.on_end(_rec(name=f"job{i}", started=98.5), End.RAISED, f"ValueError: {i}", "node-a")
    h.on_end(_rec(name="never"), End.UNSCHEDULABLE, "x" * 50_000, "")
    fails = h.recent_failures()
    assert [f["job"] for f in fails] == ["never", "job4", "job3"]
    assert fails[0]["end"] == "unschedulable" and fails[0]["ran_s"] is None
    assert len(fails[0]["error"]) == ERROR_CHARS
    assert fails[1] == {"at": 10.0, "job": "job4", "user": "alice", "worker": "node-a",
                        "end": "raised", "error": "ValueError: 4", "ran_s": 1.5,
                        "attempts": 1}
    assert sum(h.series()["failed"]) == 6 and h.user_totals("alice") == (0, 6)


def test_the_hooks_do_constant_work_per_job() -> None:
    """A thousand job ends in one second touch one slot; users past the cap share one."""
    h = History(window=600, clock=Clock(1.0))
    r = _rec()
    for _ in range(1000):
        h.on_start(r, "w")
        h.on_end(r, End.OK, "", "w")
    assert h.series()["finished"][-1] == 1000
    for i in range(1500):
        h.on_end(_rec(user=f"u{i}"), End.OK, "", "w")
    assert len(h.users) <= 1001 and h.user_totals("(other)")[0] > 0
