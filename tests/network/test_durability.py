"""Nothing lost on a restart: real processes, a user's sweep as a script, faults injected.

The sweep (``SWEEP`` below) is an ordinary user program run as ``python sweep.py``: its
job function lives in ``__main__`` and leaves a marker file for every start of every
job. The tests SIGKILL and restart the executor, kill and restart workers, and SIGTERM
workers while the sweep runs; the program itself must see no error, every result must
arrive exactly once, and no job may start twice unless the worker running it was lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from grain_harness import TOKEN, ExecutorProc, GrainProc, Harness, wait_until

pytestmark = pytest.mark.timeout(240)

SWEEP = '''
import json, os, sys, time
import grain
from grain.resource import Cores

MARKS = sys.argv[2]


def job(i, seconds):
    # one marker per start of this job: name = index, pid, start time
    with open(os.path.join(MARKS, f"{i}.{os.getpid()}.{time.monotonic_ns()}"), "w") as f:
        f.write(grain.GVAR.instance)
    time.sleep(seconds)
    return i * i


async def main():
    durations = json.loads(sys.argv[3])
    async with grain.open_waitgroup() as wg:
        for i, seconds in enumerate(durations):
            wg.submit(Cores(1), job, i, seconds)
    return wg.results


results = grain.run_combine(main, address=sys.argv[1], token=os.environ["SWEEP_TOKEN"])
print(json.dumps(results))
'''


def _sweep(grain_procs: Harness, ex: ExecutorProc, durations: list[float],
           tag: str = "sweep") -> tuple[GrainProc | object, Path, Path]:
    """Start the sweep program against ``ex``; returns (process, marker dir, its log)."""
    script = grain_procs.tmp / f"{tag}.py"
    script.write_text(SWEEP)
    marks = grain_procs.tmp / f"{tag}-marks"
    marks.mkdir()
    os.environ["SWEEP_TOKEN"] = TOKEN   # inherited by the program (process_env copies it)
    try:
        proc = grain_procs.python(script, ex.address, str(marks), json.dumps(durations),
                                  log=tag)
    finally:
        del os.environ["SWEEP_TOKEN"]
    return proc, marks, next(grain_procs.tmp.glob(f"*-{tag}.log"))


def _starts(marks: Path) -> dict[int, list[tuple[int, str]]]:
    """job index -> [(pid, worker)] of each start, oldest first."""
    out: dict[int, list[tuple[int, int, str]]] = {}
    for p in marks.iterdir():
        i, pid, ns = p.name.split(".")
        out.setdefault(int(i), []).append((int(ns), int(pid), p.read_text()))
    return {i: [(pid, w) for _, pid, w in sorted(v)] for i, v in out.items()}


def _finish(proc: object, log: Path, timeout: float) -> list[int]:
    """Wait for the sweep; its printed results (it must have exited cleanly)."""
    import subprocess
    assert isinstance(proc, subprocess.Popen)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the sweep did not finish in {timeout}s:\n{log.read_text()}") \
            from None
    text = log.read_text()
    assert code == 0, f"the sweep failed ({code}):\n{text}"
    return json.loads([line for line in text.splitlines() if line.startswith("[")][-1])


def _wait_for_starts(marks: Path, want: int) -> None:
    wait_until(lambda: sum(len(v) for v in _starts(marks).values()) >= want,
               60, f"{want} jobs to start")


def _assert_each_result_once_and_no_job_twice(proc: object, log: Path, marks: Path,
                                              durations: list[float]) -> None:
    """The sweep got every result once and in order, and every job started exactly once
    (no worker was lost, so none may run again)."""
    results = _finish(proc, log, 120)
    assert results == [i * i for i in range(len(durations))]
    starts = _starts(marks)
    twice = {i: s for i, s in starts.items() if len(s) != 1}
    assert sorted(starts) == list(range(len(durations))) and not twice, \
        f"jobs started more than once although no worker was lost: {twice}"


def _restart(grain_procs: Harness, ex: ExecutorProc, n: int) -> ExecutorProc:
    ex.kill(signal.SIGKILL)
    ex.popen.wait(10)
    return grain_procs.executor(port=ex.port, http_port=ex.http_port, name=f"executor-{n}")


@pytest.mark.parametrize("seed", range(int(os.environ.get("GRAIN_FAULT_SEEDS", "4"))))
def test_executor_killed_at_random_points_of_a_sweep(grain_procs: Harness,
                                                     seed: int) -> None:
    """The fault matrix: a sweep of short (chained), medium and long jobs on two workers;
    the executor is SIGKILLed at random points (mid-dispatch, mid-result, with jobs
    queued, chained and running) and restarted on the same address, once or twice. The
    program sees no error, gets every result once and in order, and no job is started
    twice: the workers kept running their jobs and re-attached them, the client
    resubmitted what the new executor did not know. (More seeds: GRAIN_FAULT_SEEDS=50.)"""
    rng = random.Random(seed)
    durations = [rng.choice([0.002, 0.002, 0.002, 0.3, 1.2]) for _ in range(60)]
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    proc, marks, log = _sweep(grain_procs, ex, durations)
    restarts = rng.choice([1, 1, 2])
    for n in range(restarts):
        # a random point: after some jobs started, before the sweep could be over
        _wait_for_starts(marks, rng.randint(1 + 20 * n, 20 + 20 * n))
        time.sleep(rng.random() * 0.3)   # where exactly in the flow of messages: random
        ex = _restart(grain_procs, ex, n + 2)
    _assert_each_result_once_and_no_job_twice(proc, log, marks, durations)
    st = ex.wait_idle(20)
    assert st["jobs"]["retried"] == 0
    assert {w["name"] for w in st["workers"]} == {"wa", "wb"}


@pytest.mark.parametrize("seed", range(int(os.environ.get("GRAIN_FAULT_SEEDS", "4")) // 2))
def test_executor_frozen_then_killed_while_results_are_on_the_way(grain_procs: Harness,
                                                                 seed: int) -> None:
    """The executor stops (SIGSTOP: a node under memory pressure, a paused container)
    while it dispatches a stream of short jobs, stays stopped while the workers finish
    what they were given (their results wait unread in its sockets, and ``Started``
    messages it had queued for the client never go), and is then SIGKILLed and restarted
    on the same address, twice. The program gets every result once and in order, and no
    job starts twice: the workers re-attach holding the results, the client resubmits
    what the new executor does not know. (This did not catch the duplicate runs the
    simulation found at a slow link, fixed in 85983c1: it also passes without that fix.)"""
    rng = random.Random(1000 + seed)
    durations = [rng.choice([0.002, 0.03, 0.05, 0.05]) for _ in range(200)]
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    proc, marks, log = _sweep(grain_procs, ex, durations)
    for n in range(2):
        _wait_for_starts(marks, rng.randint(20 + 80 * n, 60 + 80 * n))
        ex.kill(signal.SIGSTOP)
        # the fault's length, not a synchronisation: the workers end what they hold
        time.sleep(0.1 + rng.random() * 0.4)
        ex = _restart(grain_procs, ex, n + 2)
    _assert_each_result_once_and_no_job_twice(proc, log, marks, durations)
    st = ex.wait_idle(20)
    assert st["jobs"]["retried"] == 0


def test_a_worker_killed_and_restarted_mid_sweep(grain_procs: Harness) -> None:
    """SIGKILL a worker while it runs jobs and start it again: the sweep completes (jobs
    wait for capacity instead of failing Unschedulable); only the jobs that were running
    on the killed worker start a second time."""
    ex = grain_procs.executor()
    procs = {"wa": grain_procs.worker("wa", ex, cores="0")}
    durations = [0.5] * 12
    proc, marks, log = _sweep(grain_procs, ex, durations)
    wait_until(lambda: len(_starts(marks)) >= 2, 30, "two jobs to start")
    procs["wa"].kill(signal.SIGKILL)
    procs["wa"].popen.wait(10)
    victims = {i for i, s in _starts(marks).items()}   # started on the dead worker
    time.sleep(0.5)   # the sweep waits without any worker for a while
    grain_procs.worker("wa", ex, cores="0")
    results = _finish(proc, log, 90)
    assert results == [i * i for i in range(len(durations))]
    starts = _starts(marks)
    rerun = {i for i, s in starts.items() if len(s) > 1}
    assert rerun and rerun <= victims, (rerun, victims)
    assert all(len(s) <= 2 for s in starts.values())
    assert ex.wait_idle(20)["jobs"]["retried"] == len(rerun)


def test_sigterm_drains_a_worker_running_jobs_finish(grain_procs: Harness) -> None:
    """A worker's SIGTERM (a DaemonSet rolling update): it takes no new jobs, lets its
    running job finish, delivers the result and exits 0; the other worker takes the rest.
    Nothing is re-run and nothing counts as a retry."""
    ex = grain_procs.executor()
    wa = grain_procs.worker("wa", ex, cores="0", extra=["--drain-timeout", "30"])
    grain_procs.worker("wb", ex, cores="1")
    durations = [2.0, 2.0] + [0.2] * 8
    proc, marks, log = _sweep(grain_procs, ex, durations)
    wait_until(lambda: any(w == "wa" for s in _starts(marks).values() for _, w in s),
               30, "a job to start on wa")
    wa.kill(signal.SIGTERM)
    wa.wait_for("draining", 10)
    assert wa.popen.wait(30) == 0, wa.tail()
    results = _finish(proc, log, 60)
    assert results == [i * i for i in range(len(durations))]
    starts = _starts(marks)
    assert all(len(s) == 1 for s in starts.values()), starts
    st = ex.wait_idle(20)
    assert st["jobs"]["retried"] == 0 and st["jobs"]["handed_back"] == 0


def test_sigterm_hands_back_what_does_not_finish_in_the_drain_time(
        grain_procs: Harness) -> None:
    """A job longer than the drain time is handed back when the time is up and runs on
    another worker; that is neither a failure nor a retry of the user's budget (even with
    --retries 0)."""
    ex = grain_procs.executor(retries=0)
    wa = grain_procs.worker("wa", ex, cores="0", extra=["--drain-timeout", "0.5"])
    durations = [3.0]
    proc, marks, log = _sweep(grain_procs, ex, durations)
    wait_until(lambda: len(_starts(marks)) == 1, 30, "the job to start on wa")
    wa.kill(signal.SIGTERM)
    assert wa.popen.wait(30) == 0, wa.tail()
    grain_procs.worker("wb", ex, cores="1")
    results = _finish(proc, log, 60)
    assert results == [0]
    [(first, w1), (second, w2)] = _starts(marks)[0]
    assert (w1, w2) == ("wa", "wb")
    st = ex.wait_idle(20)
    assert st["jobs"]["handed_back"] == 1 and st["jobs"]["retried"] == 0
    assert st["jobs"]["failed"] == 0
