"""What operators see: /healthz, /status, /metrics and `grain status`; and the original
grain's passive worker form (the executor dials `grain worker --listen`)."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import netjobs
import pytest
import trio
from grain_harness import TOKEN, Harness, each_once, free_port, run_client, wait_until

import grain
from grain.cli.status import fetch_over_grain
from grain.resource import Cores

pytestmark = pytest.mark.timeout(90)

STATUS_FIELDS = {"version", "uptime_s", "queue_length", "clients", "running_jobs", "cores",
                 "memory_gb", "workers"}
WORKER_FIELDS = {"name", "address", "cores_total", "cores_free", "memory_total_gb",
                 "memory_free_gb", "running_jobs", "cpuset", "exclusive_cpuset", "gpus"}
COUNTERS = ("grain_jobs_submitted_total", "grain_jobs_started_total",
            "grain_jobs_finished_total", "grain_jobs_failed_total")
GAUGES = ("grain_queue_length", "grain_cores_in_use")


def boom() -> None:
    raise ValueError("boom")


def test_http_status_metrics_and_health_follow_the_jobs(grain_procs: Harness,
                                                        tmp_path: Path) -> None:
    ex = grain_procs.executor()
    assert ex.get("/healthz") == "ok\n"
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    st = ex.status()
    assert STATUS_FIELDS <= set(st), set(st)
    assert st["cores"] == {"total": 2, "free": 2} and st["clients"] == 0
    assert st["memory_gb"]["total"] == pytest.approx(4.0)
    for w in st["workers"]:
        assert WORKER_FIELDS <= set(w), set(w)
        assert w["address"].startswith("127.0.0.1:")
        assert w["cpuset"] == ([0] if w["name"] == "wa" else [1])
        assert isinstance(w["exclusive_cpuset"], bool) and w["gpus"] == []
    m0 = ex.metrics()
    for name in (*COUNTERS, *GAUGES):
        assert name in m0, sorted(m0)
    assert any(k.startswith("grain_placement_seconds") for k in m0)
    marks = str(tmp_path / "marks")
    seen: dict = {}

    async def main() -> dict:
        async with trio.open_nursery() as n:
            n.start_soon(each_once, {i: (Cores(1), netjobs.mark_and_sleep,
                                         (marks, f"s{i}", 1.5)) for i in range(3)})
            with trio.fail_after(10):
                while len(netjobs.markers(marks)) < 2:
                    await trio.sleep(0.05)
            seen["status"] = ex.status()
            seen["metrics"] = ex.metrics()
        out = await each_once({i: (Cores(1), netjobs.noop, (i,)) for i in range(20)})
        assert all(v == ("ok", k) for k, v in out.items())
        bad = await each_once({0: (Cores(1), boom, ())})
        assert bad[0][0] == "err" and isinstance(bad[0][1], ValueError)
        return out

    run_client(ex, main, limit=30)
    busy, bm = seen["status"], seen["metrics"]
    assert busy["running_jobs"] == 2 and busy["queue_length"] == 1 and busy["clients"] == 1
    assert busy["cores"] == {"total": 2, "free": 0}
    assert sorted(w["running_jobs"] for w in busy["workers"]) == [1, 1]
    assert bm["grain_cores_in_use"] == 2 and bm["grain_queue_length"] == 1
    st = ex.wait_idle()
    m1 = ex.metrics()
    assert m1["grain_jobs_submitted_total"] - m0["grain_jobs_submitted_total"] == 24
    assert m1["grain_jobs_started_total"] - m0["grain_jobs_started_total"] == 24
    assert m1["grain_jobs_finished_total"] - m0["grain_jobs_finished_total"] == 23
    assert m1["grain_jobs_failed_total"] - m0["grain_jobs_failed_total"] == 1
    assert m1["grain_cores_in_use"] == 0 and m1["grain_queue_length"] == 0
    assert st["jobs"]["submitted"] == 24 and st["uptime_s"] > 0
    with pytest.raises(urllib.error.HTTPError) as e:
        ex.get("/nope")
    assert e.value.code == 404
    req = urllib.request.Request(ex.http + "/status", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=3)  # noqa: S310
    assert e.value.code == 405


def test_grain_status_table_json_and_http(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("node-a", ex, cores="0")
    grain_procs.worker("node-b", ex, cores="1")
    tf = str(grain_procs.token_file)
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", tf)
    assert r.returncode == 0, r.stderr
    assert "workers 2, cores free 2/2" in r.stdout
    for name in ("node-a", "node-b"):
        assert name in r.stdout
    assert "┃ name" in r.stdout or "name" in r.stdout.splitlines()[2]
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", tf, "--json")
    doc = json.loads(r.stdout)
    assert STATUS_FIELDS <= set(doc) and {w["name"] for w in doc["workers"]} == {"node-a",
                                                                                 "node-b"}
    r = grain_procs.cli("status", "--http", ex.http, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cores"]["total"] == 2
    # GRAIN_TOKEN works in place of --token-file
    r = grain_procs.cli("status", "--executor", ex.address, env={"GRAIN_TOKEN": TOKEN})
    assert r.returncode == 0 and "node-a" in r.stdout, r.stderr


def test_grain_status_says_clearly_when_it_cannot(grain_procs: Harness) -> None:
    tf = str(grain_procs.token_file)
    port = free_port()
    r = grain_procs.cli("status", "--executor", f"grain://127.0.0.1:{port}", "--token-file", tf)
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: cannot get the status of grain://127.0.0.1:{port}")
    assert "is `grain executor` running" in r.stderr and "Traceback" not in r.stderr
    r = grain_procs.cli("status", "--http", f"http://127.0.0.1:{port}")
    assert r.returncode == 1 and "Connection refused" in r.stderr, r.stderr
    ex = grain_procs.executor()
    bad = grain_procs.tmp / "bad"
    bad.write_text("wrong\n")
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", str(bad))
    assert r.returncode == 1 and "wrong or missing token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    ex.kill(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError, match="no status from"):
            trio.run(fetch_over_grain, ex.address, TOKEN, None, 1.0)
    finally:
        ex.kill(signal.SIGCONT)


def _passive_run(grain_procs: Harness, settle: float) -> list:
    port = free_port()
    grain_procs.passive_worker("passive", f"grain://127.0.0.1:{port}", cores="1")
    wait_until(lambda: _listening(port), 15, "the passive worker to listen")

    async def main() -> list:
        await trio.sleep(settle)
        async with grain.open_waitgroup() as wg:
            for i in range(6):
                wg.submit(Cores(1), netjobs.where, i)
        return wg.results

    async def bounded() -> list:
        with trio.fail_after(30):
            return await main()
    return grain.run_combine(bounded, [f"grain://127.0.0.1:{port}"], token=TOKEN,
                             nolocal=True)


def test_passive_worker_dialled_by_the_embedded_executor(grain_procs: Harness) -> None:
    """The original grain's form: `grain worker --listen`, and run_combine given the
    worker's address; the embedded executor dials it and the jobs run there, pinned.
    (The program waits a moment first: see the next test for why.)"""
    results = _passive_run(grain_procs, settle=1.0)
    assert [r[0] for r in results] == list(range(6))
    assert {(r[1], tuple(r[2])) for r in results} == {("passive", (1,))}


def test_passive_worker_jobs_submitted_at_once_wait_for_it(grain_procs: Harness) -> None:
    results = _passive_run(grain_procs, settle=0.0)
    assert {r[1] for r in results} == {"passive"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
