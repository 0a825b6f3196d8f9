"""Failure semantics between real processes: every submitted job ends exactly once, and
nothing waits forever, when workers, clients or the executor die or hang.

Each test bounds itself (``trio.fail_after`` in the client, a pytest timeout around it).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import netjobs
import psutil
import pytest
import trio
from grain_harness import NET_DIR, TIMEOUT, GrainProc, Harness, each_once, run_client, wait_until

from grain.errors import ExecutorLost, WorkerLost
from grain.resource import Cores

pytestmark = pytest.mark.timeout(120)


async def wait_markers(marks: str, count: int, tag: str | None = None,
                       limit: float = 20.0) -> list[tuple[str, str, int]]:
    """Until ``count`` job attempts (of ``tag``) have started; returns them."""
    with trio.fail_after(limit):
        while True:
            found = netjobs.markers(marks, tag)
            if len(found) >= count:
                return found
            await trio.sleep(0.05)


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


def test_half_open_worker_is_detected_within_the_timeout(grain_procs: Harness,
                                                         tmp_path: Path) -> None:
    """A SIGSTOPped worker keeps its socket open but says nothing: the executor declares
    it dead within the heartbeat timeout and re-runs its job on the other worker; the job
    ends once. After SIGCONT the worker reconnects and registers again by itself."""
    ex = grain_procs.executor()
    procs = {"wa": grain_procs.worker("wa", ex, cores="0"),
             "wb": grain_procs.worker("wb", ex, cores="1")}
    marks = str(tmp_path / "marks")
    info: dict = {}

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({
                t: (Cores(1), netjobs.mark_and_sleep, (marks, t, 2.5)) for t in ("a", "b")})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            started = await wait_markers(marks, 2)
            victim = next(w for t, w, _ in started if t == "a")
            info["victim"] = victim
            procs[victim].kill(signal.SIGSTOP)
            t0 = time.monotonic()
            while victim in ex.workers():
                assert time.monotonic() - t0 < TIMEOUT + 2.0, "half-open worker not detected"
                await trio.sleep(0.05)
            info["detected_after"] = time.monotonic() - t0
        return box["out"]

    try:
        out = run_client(ex, main, limit=30)
    finally:
        if "victim" in info:
            procs[info["victim"]].kill(signal.SIGCONT)
    victim = info["victim"]
    other = "wb" if victim == "wa" else "wa"
    assert info["detected_after"] <= TIMEOUT + 2.0
    assert out["a"] == ("ok", ("a", other)), out   # re-run on the live worker, ended once
    assert out["b"] == ("ok", ("b", other)), out
    assert f"worker {victim} lost" in ex.text() and "heartbeat timeout" in ex.text()
    ex.wait_workers([victim, other], timeout=15)    # it came back by itself
    st = ex.wait_idle()
    assert st["jobs"]["submitted"] == 2 and st["jobs"]["finished"] == 2
    assert st["jobs"]["retried"] == 1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_lost_client_frees_its_queue_and_cores(grain_procs: Harness, tmp_path: Path,
                                               sig: signal.Signals) -> None:
    """SIGKILL (or SIGSTOP: a half-open client) a client process while 2 of its jobs run
    and 4 wait: the queued ones are dropped, the running ones killed on their workers, the
    cores freed, and another client's jobs get them at once. A stopped client, resumed,
    finds its connection gone and ends with ExecutorLost instead of waiting forever."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    marks = str(tmp_path / "marks")
    client = grain_procs.python(NET_DIR / "client_prog.py", ex.address,
                                str(grain_procs.token_file), marks, "c1", "6", "60")
    ex.wait_status(lambda st: st["running_jobs"] == 2 and st["queue_length"] == 4, 20,
                   "the first client's jobs to run and queue")
    running = trio.run(wait_markers, marks, 2)
    client.send_signal(sig)
    t0 = time.monotonic()
    st = ex.wait_status(lambda st: st["clients"] == 0 and st["running_jobs"] == 0
                        and st["queue_length"] == 0 and st["cores"]["free"] == 2, 10,
                        "the lost client's jobs to be dropped and its cores freed")
    if sig == signal.SIGSTOP:
        assert time.monotonic() - t0 < TIMEOUT + 2.0
        client.send_signal(signal.SIGCONT)
    code = client.wait(10)
    if sig == signal.SIGSTOP:
        assert code != 0
        log = next(grain_procs.tmp.glob("*client.log")).read_text()
        assert "ExecutorLost" in log, log[-2000:]
    assert st["jobs"]["cancelled"] == 6
    for _, _, pid in running:
        wait_until(lambda pid=pid: pid_gone(pid), 5, f"the killed client's job {pid} to die")

    async def second() -> dict:
        return await each_once({i: (Cores(1), netjobs.mark_and_sleep, (marks, f"c2-{i}", 0.1))
                                for i in range(2)})
    t0 = time.monotonic()
    out = run_client(ex, second, limit=15)
    assert time.monotonic() - t0 < 5
    assert sorted(v[1][1] for v in out.values()) == ["wa", "wb"]
    assert [m for m in netjobs.markers(marks) if m[0].startswith("c1")] == running
    ex.wait_idle()


def test_executor_restart_fails_inflight_jobs_and_workers_reconnect(
        grain_procs: Harness, tmp_path: Path) -> None:
    """SIGKILL the executor while a client has jobs running and queued: every one ends with
    ExecutorLost at once (nothing hangs), and when an executor comes back on the same
    address the workers re-register by themselves. (That they also kill the orphaned jobs
    and then run new ones: test_worker_kills_orphaned_jobs_when_the_executor_is_lost.)"""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({
                i: (Cores(1), netjobs.mark_and_sleep, (marks, f"j{i}", 60)) for i in range(3)})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            box["running"] = await wait_markers(marks, 2)
            ex.kill(signal.SIGKILL)
            box["t_kill"] = time.monotonic()
        box["t_end"] = time.monotonic()
        return box

    box = run_client(ex, main, limit=30)
    assert box["t_end"] - box["t_kill"] < 3
    assert set(box["out"]) == {0, 1, 2}
    for kind, err in box["out"].values():
        assert kind == "err" and isinstance(err, ExecutorLost), box["out"]

    ex2 = grain_procs.executor(port=ex.port, http_port=ex.http_port, name="executor-2")
    t0 = time.monotonic()
    st = ex2.wait_status(lambda st: st["cores"] == {"total": 2, "free": 2}, 20,
                         "both workers to re-register with the new executor")
    assert {w["name"] for w in st["workers"]} == {"wa", "wb"}
    assert time.monotonic() - t0 < 15

    async def again() -> dict:
        return await each_once({i: (Cores(1), netjobs.where, (i,)) for i in range(4)})
    out = run_client(ex2, again, limit=15)
    assert all(k == "ok" for k, _ in out.values()), out
    ex2.wait_idle()


def test_worker_kills_orphaned_jobs_when_the_executor_is_lost(grain_procs: Harness,
                                                               tmp_path: Path) -> None:
    """A worker that loses its executor kills the jobs it was running (their results
    would be dropped anyway) and takes new jobs from the next executor straight away."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        async with trio.open_nursery() as n:
            n.start_soon(each_once, {0: (Cores(1), netjobs.mark_and_sleep, (marks, "o", 60))})
            await wait_markers(marks, 1)
            ex.kill(signal.SIGKILL)
        return {}

    run_client(ex, main, limit=20)
    (_, _, pid), = netjobs.markers(marks)
    wait_until(lambda: pid_gone(pid), 3, f"the orphaned job {pid} to be killed")
    ex2 = grain_procs.executor(port=ex.port, http_port=ex.http_port, name="executor-2")
    ex2.wait_workers(["wa"])

    async def again() -> dict:
        return await each_once({i: (Cores(1), netjobs.where, (i,)) for i in range(3)})
    out = run_client(ex2, again, limit=5)
    assert all(k == "ok" for k, _ in out.values()), out


def test_stopped_executor_is_detected_by_the_client(grain_procs: Harness,
                                                    tmp_path: Path) -> None:
    """A SIGSTOPped executor (half-open from the client's side): the client's jobs end with
    ExecutorLost within its heartbeat timeout; after SIGCONT the executor serves again."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(tmp_path / "marks")

    async def main() -> dict:
        box: dict = {}

        async def jobs() -> None:
            box["out"] = await each_once({0: (Cores(1), netjobs.mark_and_sleep,
                                              (marks, "s", 30))})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            await wait_markers(marks, 1)
            ex.kill(signal.SIGSTOP)
            box["t_stop"] = time.monotonic()
        box["t_end"] = time.monotonic()
        return box

    try:
        box = run_client(ex, main, limit=30)
    finally:
        ex.kill(signal.SIGCONT)
    assert box["t_end"] - box["t_stop"] < TIMEOUT + 2.0
    kind, err = box["out"][0]
    assert kind == "err" and isinstance(err, ExecutorLost), box["out"]
    assert "heartbeat timeout" in str(err)
    st = ex.wait_status(lambda st: [w["name"] for w in st["workers"]] == ["wa"]
                        and st["running_jobs"] == 0 and st["clients"] == 0, 15,
                        "the executor to serve again, with its worker back")
    assert st["cores"]["free"] == 1

    async def again() -> dict:
        return await each_once({0: (Cores(1), netjobs.noop, (7,))})
    assert run_client(ex, again, limit=15) == {0: ("ok", 7)}


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
