"""A queue of job ids stored in segments: whatever the order of pushes, re-queues,
cancellations from either end or the middle, and consumption from the front, it holds
exactly the live ids and yields them oldest first (checked against a plain sorted model,
with segments of a few ids so that every boundary is crossed often)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grain.executor import placement_queue
from grain.executor.jobtable import JobTable
from grain.executor.placement_queue import JobQueue, User

ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(1, 40)),       # that many new ids
    st.tuples(st.just("requeue"), st.integers(0, 10**6)),  # an old id back (a retry)
    st.tuples(st.just("cancel_last"), st.just(0)),
    st.tuples(st.just("cancel_first"), st.just(0)),
    st.tuples(st.just("cancel_any"), st.integers(0, 10**6)),
    st.tuples(st.just("take"), st.integers(1, 30)),         # pop or advance from the front
    st.tuples(st.just("compact"), st.just(0)),
), max_size=80)


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement_queue, "SEGMENT", 4)
    monkeypatch.setattr(placement_queue, "TRIM_MIN", 2)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_a_segmented_queue_holds_exactly_the_live_ids_oldest_first(program) -> None:
    where: JobTable[int] = JobTable()
    q = JobQueue(7, User("u"), None, where)  # type: ignore[arg-type]
    model: set[int] = set()
    taken: set[int] = set()     # ended: never pushed again (a retry is re-queued below)
    next_id = 1
    for op, arg in program:
        if op == "push":
            for _ in range(arg):
                where[next_id] = 7
                q.push(next_id)
                model.add(next_id)
                next_id += 1
        elif op == "requeue" and taken:
            gid = sorted(taken)[arg % len(taken)]
            taken.discard(gid)
            where[gid] = 7
            q.push(gid)
            model.add(gid)
        elif op.startswith("cancel") and model:
            ordered = sorted(model)
            gid = {"cancel_last": ordered[-1], "cancel_first": ordered[0]}.get(
                op, ordered[arg % len(ordered)])
            del where[gid]
            model.discard(gid)
            q.forget(gid)
        elif op == "take":
            for i in range(arg):
                gid = q.peek()
                assert gid == (min(model) if model else None)
                if gid is None:
                    break
                del where[gid]
                model.discard(gid)
                taken.add(gid)
                if i % 2:
                    assert q.advance(gid) == (min(model) if model else None)
                else:
                    q.pop(gid)
        elif op == "compact":
            q.compact()
        assert q.live == len(model)
        assert q.ids() == sorted(model)
        assert q.peek() == (min(model) if model else None)
        assert all(len(seg) <= 4 for seg in q.rest)


def test_a_million_ids_are_kept_in_bounded_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """No array of a queue grows past ``SEGMENT`` ids, so none is ever copied whole."""
    monkeypatch.setattr(placement_queue, "SEGMENT", 1 << 16)   # the real size, not 4
    where: JobTable[int] = JobTable()
    q = JobQueue(1, User("u"), None, where)  # type: ignore[arg-type]
    for gid in range(1, 1_000_001):
        where[gid] = 1
        q.push(gid)
    assert max(len(q.main), *map(len, q.rest)) <= 1 << 16
    assert len(q.main) + sum(map(len, q.rest)) == 1_000_000
    assert q.peek() == 1
