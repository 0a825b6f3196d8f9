"""Failure semantics between real processes: every submitted job ends exactly once, and
nothing waits forever, when workers, clients or the executor die or hang.

Each test bounds itself (``trio.fail_after`` in the client, a pytest timeout around it).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import netjobs
import psutil
import pytest
import trio
from grain_harness import (
    TIMEOUT,
    ExecutorProc,
    GrainProc,
    Harness,
    each_once,
    fault_one_worker,
    run_client,
    wait_markers,
    wait_until,
)

import grain.client.waitgroup
from grain.errors import ExecutorLost, WorkerLost
from grain.resource import Cores

pytestmark = pytest.mark.timeout(120)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_worker_killed_mid_job_is_retried_then_lost_and_comes_back(
        grain_procs: Harness, tmp_path: Path) -> None:
    """SIGKILL the worker running a job: the job is retried on the other worker; kill that
    one too and, with --retries 1, the job fails with WorkerLost naming both workers. A
    job on a surviving worker is untouched. Restarted workers bring their cores back."""
    ex = grain_procs.executor(retries=1)
    procs: dict[str, GrainProc] = {"wa": grain_procs.worker("wa", ex, cores="0"),
                                   "wb": grain_procs.worker("wb", ex, cores="1")}
    marks = str(tmp_path / "marks")
    killed: list[str] = []

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({
                "long": (Cores(1), netjobs.mark_and_sleep, (marks, "long", 60)),
            })
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            (_, first, _), = await wait_markers(marks, 1, "long")
            procs[first].kill(signal.SIGKILL)
            killed.append(first)
            attempts = await wait_markers(marks, 2, "long")
            second = attempts[1][1]
            assert second != first, attempts
            procs[second].kill(signal.SIGKILL)
            killed.append(second)
        box["attempts"] = netjobs.markers(marks, "long")
        return box

    t0 = time.monotonic()
    box = run_client(ex, main, limit=40)
    assert time.monotonic() - t0 < 30
    kind, err = box["out"]["long"]
    assert kind == "err" and isinstance(err, WorkerLost), box["out"]
    assert f"worker {killed[1]} was lost" in str(err)
    assert f"tried on: {killed[0]}, {killed[1]}" in str(err)
    assert len(box["attempts"]) == 2
    for _, _, pid in box["attempts"]:
        wait_until(lambda pid=pid: pid_gone(pid), 5, f"job process {pid} to die with its worker")
    st = ex.wait_idle()
    assert st["workers"] == [] and st["cores"] == {"total": 0, "free": 0}
    assert st["jobs"]["failed"] == 1 and st["jobs"]["retried"] == 1

    # The workers come back: their capacity returns and jobs run on them again.
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    st = ex.wait_status(lambda st: st["cores"] == {"total": 2, "free": 2}, 10,
                        "both workers' cores to be back")
    assert {w["name"]: w["cores_free"] for w in st["workers"]} == {"wa": 1, "wb": 1}
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file",
                        str(grain_procs.token_file))
    assert r.returncode == 0 and "cores free 2/2" in r.stdout, r.stdout + r.stderr

    async def again() -> dict:
        return await each_once({i: (Cores(1), netjobs.where, (i,)) for i in range(6)})
    out = run_client(ex, again, limit=20)
    assert all(k == "ok" for k, _ in out.values())
    assert {v[1] for _, v in out.values()} <= {"wa", "wb"}


def _stop_one_worker(grain_procs: Harness, tmp_path: Path, worker_grace: float,
                     resume_after: float) -> tuple[dict, dict, ExecutorProc]:
    """Two workers, two jobs (one per worker); SIGSTOP the worker running job "a" (its
    socket stays open, it says nothing) and SIGCONT it ``resume_after`` seconds after the
    executor has declared it lost."""
    ex = grain_procs.executor(extra=["--worker-grace", str(worker_grace)])
    procs = {"wa": grain_procs.worker("wa", ex, cores="0"),
             "wb": grain_procs.worker("wb", ex, cores="1")}
    marks = str(tmp_path / "marks")
    out, info = fault_one_worker(ex, marks, lambda v: procs[v].kill(signal.SIGSTOP),
                                 lambda v: procs[v].kill(signal.SIGCONT),
                                 heal_after=resume_after)
    info["attempts"] = netjobs.markers(marks, "a")
    return out, info, ex


def test_half_open_worker_that_comes_back_keeps_its_job(grain_procs: Harness,
                                                       tmp_path: Path) -> None:
    """A SIGSTOPped worker is declared lost within the heartbeat timeout, but it may be
    alive behind a broken network: its job waits (parked) for the worker grace. When the
    worker continues, it reconnects by itself and re-attaches the job, which ends once,
    where it started: it is never run a second time."""
    out, info, ex = _stop_one_worker(grain_procs, tmp_path, worker_grace=30, resume_after=1)
    victim = info["victim"]
    assert info["detected_after"] <= TIMEOUT + 2.0
    assert out["a"] == ("ok", ("a", victim)), out   # finished where it started
    assert len(info["attempts"]) == 1, f"job a ran twice: {info['attempts']}"
    assert f"worker {victim} lost" in ex.text() and "heartbeat timeout" in ex.text()
    # the job was still running, or had finished while its worker was stopped (its runner
    # is another process): re-attached either way
    m = re.search(rf"worker {victim} re-attached (\d+) running jobs and (\d+) held results",
                  ex.text())
    assert m and int(m[1]) + int(m[2]) == 1, ex.text()
    st = ex.wait_idle()
    assert st["jobs"]["submitted"] == 2 and st["jobs"]["finished"] == 2
    assert st["jobs"]["retried"] == 0 and st["jobs"]["reattached"] >= 1


def test_half_open_worker_past_its_grace_has_its_job_rerun(grain_procs: Harness,
                                                          tmp_path: Path) -> None:
    """With a short worker grace, the silent worker's job is re-run on the other worker and
    ends once; the stale copy, reported when the worker comes back, is killed. The worker
    registers again by itself."""
    out, info, ex = _stop_one_worker(grain_procs, tmp_path, worker_grace=0.5,
                                     resume_after=4)
    victim = info["victim"]
    other = "wb" if victim == "wa" else "wa"
    assert out["a"] == ("ok", ("a", other)), out   # re-run on the live worker, ended once
    assert out["b"] == ("ok", ("b", other)), out
    ex.wait_workers([victim, other], timeout=15)    # it came back by itself
    st = ex.wait_idle()
    assert st["jobs"]["submitted"] == 2 and st["jobs"]["finished"] == 2
    assert st["jobs"]["retried"] == 1


def test_executor_restart_loses_nothing(grain_procs: Harness, tmp_path: Path) -> None:
    """SIGKILL the executor while a client has jobs running and queued, and start a new
    one on the same address: the workers keep running their jobs and re-attach them, the
    client reconnects by itself and resubmits what the new executor does not know; every
    job ends once, with its value, and no running job is started a second time."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    marks = str(tmp_path / "marks")
    box: dict = {}

    async def main() -> dict:
        async def jobs() -> None:
            box["out"] = await each_once({
                i: (Cores(1), netjobs.mark_and_sleep, (marks, f"j{i}", 3)) for i in range(4)})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            box["running"] = await wait_markers(marks, 2)
            ex.kill(signal.SIGKILL)
            ex.popen.wait(5)
            box["ex2"] = grain_procs.executor(port=ex.port, http_port=ex.http_port,
                                              name="executor-2")
        return box["out"]

    out = run_client(ex, main, limit=40)
    assert out == {i: ("ok", (f"j{i}", out[i][1][1])) for i in range(4)}, out
    attempts = netjobs.markers(marks)
    assert sorted(t for t, _, _ in attempts) == ["j0", "j1", "j2", "j3"], \
        f"a job started twice: {attempts}"
    for t, worker, _ in box["running"]:   # the two that ran across the restart
        assert out[int(t[1:])][1][1] == worker, "a running job ended on another worker"
    ex2 = box["ex2"]
    st = ex2.wait_idle()
    assert st["jobs"]["reattached"] >= 2 and st["jobs"]["retried"] == 0
    assert {w["name"] for w in st["workers"]} == {"wa", "wb"}


def test_jobs_of_a_client_that_never_comes_back_are_killed(grain_procs: Harness,
                                                           tmp_path: Path) -> None:
    """The executor restarts while a job runs, and its client is gone for good: the
    worker re-attaches the job, the new executor keeps it for the client's grace, then
    kills it and frees its core; new clients' jobs run at once."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        async with trio.open_nursery() as n:
            n.start_soon(each_once, {0: (Cores(1), netjobs.mark_and_sleep, (marks, "o", 60))})
            await wait_markers(marks, 1)
            ex.kill(signal.SIGKILL)
            n.cancel_scope.cancel()   # the client gives up at once (reconnect grace 0)
        return {}

    run_client(ex, main, limit=20, reconnect_grace=0)
    (_, _, pid), = netjobs.markers(marks)
    assert not pid_gone(pid), "the job must outlive its executor"
    ex2 = grain_procs.executor(port=ex.port, http_port=ex.http_port, name="executor-2",
                               extra=["--client-grace", "2"])
    st = ex2.wait_status(lambda st: st["running_jobs"] == 1 and st["recovering"], 15,
                         "the worker to re-attach the orphaned job")
    assert st["recovering"]["jobs_waiting_for_their_client"] == 1
    wait_until(lambda: pid_gone(pid), 10, f"the orphaned job {pid} to be killed")
    ex2.wait_status(lambda st: st["cores"]["free"] == 1 and not st["recovering"], 10,
                    "its core to be free")

    async def again() -> dict:
        return await each_once({i: (Cores(1), netjobs.where, (i,)) for i in range(3)})
    out = run_client(ex2, again, limit=10)
    assert all(k == "ok" for k, _ in out.values()), out


def test_stopped_executor_is_detected_and_the_client_reconnects(
        grain_procs: Harness, tmp_path: Path) -> None:
    """A SIGSTOPped executor (half-open from the client's side): the client notices within
    its heartbeat timeout and keeps redialling; after SIGCONT it resumes, and its job
    (which kept running on its worker) ends once with its value."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                              (marks, "s", 4))})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            await wait_markers(marks, 1)
            ex.kill(signal.SIGSTOP)
            session = grain.client.waitgroup.current_session()
            with trio.fail_after(TIMEOUT + 3):
                while session.connected.is_set():
                    await trio.sleep(0.05)
            box["noticed"] = True
            ex.kill(signal.SIGCONT)
        return box

    try:
        box = run_client(ex, main, limit=40)
    finally:
        ex.kill(signal.SIGCONT)
    assert box["noticed"] and box["out"] == {0: ("ok", ("s", "wa"))}, box
    assert len(netjobs.markers(marks)) == 1
    ex.wait_idle()


def test_client_gives_up_after_its_reconnect_grace(grain_procs: Harness,
                                                   tmp_path: Path) -> None:
    """With no executor to come back to, pending jobs end with ExecutorLost once the
    client's reconnect grace is over (and not before), saying why."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                              (marks, "g", 30))})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            await wait_markers(marks, 1)
            ex.kill(signal.SIGKILL)
            box["t_kill"] = time.monotonic()
        box["t_end"] = time.monotonic()
        return box

    box = run_client(ex, main, limit=30, reconnect_grace=3)
    assert 3 <= box["t_end"] - box["t_kill"] < 3 + TIMEOUT + 3
    kind, err = box["out"][0]
    assert kind == "err" and isinstance(err, ExecutorLost), box["out"]
    assert "no executor within 3s" in str(err)


def test_peers_with_default_heartbeats_survive_an_executor_with_a_short_timeout(
        grain_procs: Harness) -> None:
    """An executor run with --timeout 2 must not drop a client or worker that keeps the
    default heartbeat (2 s) merely because it is quiet while a job runs: each link
    adapts its pings to what the peer says its timeout is."""
    ex = grain_procs.executor(heartbeat=0.5, timeout=2.0)
    grain_procs.worker("wa", ex, cores="0", heartbeat=2.0, timeout=10.0)

    async def main() -> dict:
        return await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                    (str(grain_procs.tmp / "m"), "q", 5.0))})
    out = run_client(ex, main, limit=20, heartbeat=2.0, timeout=10.0)
    assert out == {0: ("ok", ("q", "wa"))}, out
    assert "lost" not in ex.text(), ex.tail()


def test_a_job_longer_than_ten_seconds_survives(grain_procs: Harness) -> None:
    """Regression: runners died ~10 s after they were started (PR_SET_PDEATHSIG fired
    when trio's helper thread that spawned them retired)."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")

    async def main() -> dict:
        return await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                    (str(grain_procs.tmp / "m"), "long", 13.0))})
    out = run_client(ex, main, limit=30)
    assert out == {0: ("ok", ("long", "wa"))}, out


def test_per_job_retries_from_the_client(grain_procs: Harness, tmp_path: Path) -> None:
    """run_combine(retries=0) overrides the executor's --retries: losing the worker fails
    the job at once with WorkerLost naming it, though another worker is free."""
    ex = grain_procs.executor(retries=3)
    procs = {"wa": grain_procs.worker("wa", ex, cores="0"),
             "wb": grain_procs.worker("wb", ex, cores="1")}
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                              (marks, "r", 60))})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            (_, victim, _), = await wait_markers(marks, 1)
            box["victim"] = victim
            procs[victim].kill(signal.SIGKILL)
        return box

    box = run_client(ex, main, limit=20, retries=0)
    kind, err = box["out"][0]
    assert kind == "err" and isinstance(err, WorkerLost), box
    assert f"worker {box['victim']} was lost" in str(err)
    assert len(netjobs.markers(marks)) == 1
