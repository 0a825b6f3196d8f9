"""The simulation finds the bugs it exists to find: each test here puts an old bug back
(a "mutation") and asserts that the state machine, unaided, reports it.

Issue 10, item 3: a job retried after a temporary error used to get a new id that its
wait group did not know, so cancelling the group left the retry running with its cores
held. ``_on_result_new_id_per_retry`` is today's ``Session._on_result`` with that old id
handling put back.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from grain.client.session import Session, decode_error, log
from grain.protocol import messages as m
from grain.protocol.messages import End

from .invariants import Violation
from .machine import ClusterMachine


def _on_result_new_id_per_retry(self: Any, h: m.Result, data: bytes,
                                acks: list[int]) -> None:
    """``Session._on_result`` as it was: a retry is submitted under a fresh id."""
    job = self._jobs.pop(h.cid, None)
    if job is None:
        return
    end = End(h.end)
    if end == End.OK:
        self._release(job)
        job.on_end(True, __import__("grain.protocol.payload").protocol.payload.loads(data))
        return
    exc = decode_error(end, h.message, data, job.what)
    if (end == End.RAISED and self.temporary_err and isinstance(exc, self.temporary_err)
            and job.attempts < self.temporary_attempts):
        log.warning("%s failed with %r (temporary error); retrying", job.what, exc)
        job.attempts += 1
        job.worker = None
        self._next += 1                          # the old bug: a new id per attempt
        self._jobs[self._next] = job
        self._send(m.Submit(self._next, job.request_wire, job.fid, self.worker_retries,
                            job.name), job.payload)
        return
    self._release(job)
    job.on_end(False, exc)


# no shrinking: the test asks whether the bug is found, not for the shortest program
FIND = settings(max_examples=500, stateful_step_count=40, derandomize=True, database=None,
                deadline=None, print_blob=False, phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_machine_finds_a_retry_that_cancelling_cannot_reach(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "_on_result", _on_result_new_id_per_retry)
    with pytest.raises(Violation) as found:
        run_state_machine_as_test(ClusterMachine, settings=FIND)
    v = found.value
    # the job it names was retried after a temporary error, and its wait group's
    # cancellation did not reach the retry: it ran on (holding its cores) or ended later
    assert v.token is not None, v
    world = ClusterMachine.last_world
    assert world is not None
    assert any(r.how == "temp" for r in world.log.runs[v.token]), v
    assert any(s in str(v) for s in ("was cancelled", "stopped waiting", "abandoned")), v
