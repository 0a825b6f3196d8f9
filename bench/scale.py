"""The benchmark's scale workloads (issue "one executor for a thousand nodes"): the round-trip
floors, a million queued jobs, the event loop's longest stall, placement at cluster scale,
the executor's capacity against simulated workers, and Bob's wait behind Alice.

Each is a workload of ``bench.run``: ``relay64`` and ``capacity``, ``stall``, ``placement``
run their own processes (``standalone(system, params)``); ``queue1m`` and ``fairness`` run
on Grain over TCP through ``bench.systems`` (``async def workload(ops, params)``).
``bench/stall.py`` and ``bench/placement_sim.py`` are called, not copied.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from . import procs
from .jobs import hold, noop, sleep_ms, started_at

MiB = 2 ** 20


# -- floors ------------------------------------------------------------------------------
def relay64(system: str, p: dict[str, Any]) -> dict[str, Any]:
    """A 64-byte message through client -> relay -> relay -> echo and back, each its own
    process: plain trio (``trio-relay``) or blocking sockets (``raw-relay``)."""
    from .floors import chain_roundtrip
    kind = "trio" if system == "trio-relay" else "raw"
    return chain_roundtrip(kind, p["rt_jobs"] * 3)


# -- a million queued jobs -------------------------------------------------------------
async def _barrier() -> str:
    """Until the executor has handled everything sent before: it refuses at once a job no
    worker could ever run, and a link is in order."""
    import trio

    import grain
    from grain.errors import Unschedulable
    from grain.resource import Cores
    with trio.move_on_after(300):
        try:
            await grain.exec1(Cores(60_000), noop)
        except Unschedulable:
            return "refusal"
    return "timeout"


async def queue1m(ops: Any, p: dict[str, Any]) -> dict[str, Any]:
    """One job holds every core; ``queue_jobs`` (1,000,000) ``Cores(1)`` jobs queue behind
    it. The executor's RSS and the client's (this process), before and with the queue:
    bytes per queued job in each; then the time to cancel them all."""
    import trio

    import grain

    from .workloads import warm
    await warm(ops)
    pid = ops.executor_pid or os.getpid()
    await _barrier()
    ex0, cl0 = procs.rss_mib(pid), procs.rss_mib(os.getpid())
    n = p["queue_jobs"]
    out: dict[str, Any] = {}
    with trio.CancelScope() as cs:
        async with grain.open_waitgroup() as wg:
            wg.submit(ops.many, hold, 3600)
            t = time.perf_counter()
            for i in range(n):
                wg.submit(ops.one, noop, i)
                if not i % 10_000:
                    await trio.sleep(0)    # let the link write: as a real program would
            t_sub = time.perf_counter() - t
            how = await _barrier()
            t_q = time.perf_counter() - t
            ex1, cl1 = procs.rss_mib(pid), procs.rss_mib(os.getpid())
            out.update(queue_jobs=n, queue_submit_s=t_sub, queue_accept_s=t_q,
                       queue_rss_before_mib=ex0, queue_rss_mib=ex1,
                       queue_bytes_per_job=(ex1 - ex0) * MiB / n, _barrier=how)
            if ops.executor_pid:
                out.update(queue_client_rss_mib=cl1,
                           queue_client_bytes_per_job=(cl1 - cl0) * MiB / n)
            tc = time.perf_counter()
            cs.cancel()
    await _barrier()
    out["queue_cancel_s"] = time.perf_counter() - tc
    out["queue_rss_after_cancel_mib"] = procs.rss_mib(pid)
    return out


# -- the event loop's longest stall (bench/stall.py) --------------------------------------
def stall(system: str, p: dict[str, Any]) -> dict[str, Any]:
    """``python -m bench.stall --jobs N --json``: an executor with N jobs submitted, queued,
    cancelled and dropped with their session, then N / 1000 workers of 64 cores arriving
    with as many jobs queued; the longest stall of its event loop."""
    r = subprocess.run([sys.executable, "-m", "bench.stall", "--jobs", str(p["stall_jobs"]),
                        "--json"], capture_output=True, text=True, timeout=p["timeout"])
    if r.returncode != 0:
        raise RuntimeError(f"bench.stall exited {r.returncode}: {r.stderr[-1500:]}")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    phases = doc["phases"]
    # the million jobs' phases; "place" (a thousand workers arriving) has a row of its own
    jobs = [ph for ph in phases if ph["phase"] != "place"]
    out: dict[str, Any] = {"stall_jobs": doc["jobs"], "_stall_phases": phases,
                           "stall_max_ms": max(ph["longest_stall_ms"] for ph in jobs),
                           "stall_p99_ms": max(ph["p99_stall_ms"] for ph in jobs)}
    for ph in phases:
        out[f"stall_{ph['phase']}_ms"] = ph["longest_stall_ms"]
    return out


# -- placement at cluster scale (bench/placement_sim.py) --------------------------------
def placement(system: str, p: dict[str, Any]) -> dict[str, Any]:
    """``bench.placement_sim.simulate``: 1,000 workers x 64 cores, 1,000,000 queued jobs of
    4 users, in calls of the executor's ``SCHEDULE_BATCH`` placements: the longest call
    and p99 (placement's own CPU time), and placements per second; then the same with
    1,000 users (``place_users_jobs`` queued), where a call used to cost O(users)."""
    from grain import config

    from . import placement_sim as ps

    def run(users: int, jobs: int) -> dict[str, Any]:
        a = argparse.Namespace(workers=1000, cores=64, memory=256.0, jobs=jobs,
                               users=users, weighted=False, reservations=1,
                               batch=config.SCHEDULE_BATCH, completions=1000,
                               seconds=p["place_seconds"], steps=0, distinct=False,
                               cancel=0, fairness_trials=0, alice_jobs=3000, seed=1,
                               profile=False)
        r = ps.simulate(a)
        f, s = r["fill"], r["steady"]
        own_s = f["own_s"] + s["own_s"]
        return {"max": max(f["own_max_ms"], s["own_max_ms"]),
                "p99": max(f["own_p99_ms"], s["own_p99_ms"]),
                "wall_max": max(f["max_ms"], s["max_ms"]),
                "per_s": (f["placed"] + s["placed"]) / own_s if own_s else 0.0,
                "bytes": (r["rss_queued_mib"] - r["rss_workers_mib"]) * MiB / jobs}

    few = run(4, p["place_jobs"])
    many = run(1000, p["place_users_jobs"])
    fair = ps.fairness(100, 64, 3000, 3, 1)
    return {"place_step_max_ms": few["max"], "place_step_p99_ms": few["p99"],
            "place_step_wall_max_ms": few["wall_max"], "place_per_s": few["per_s"],
            "place_bytes_per_job": few["bytes"],
            "place_users_step_max_ms": many["max"], "place_users_step_p99_ms": many["p99"],
            "place_users_per_s": many["per_s"],
            "place_bob_releases": max(fair["bob_waits"])}


# -- one executor, many simulated workers (bench/capacity.py) -----------------------------
def capacity(system: str, p: dict[str, Any]) -> dict[str, Any]:
    """``bench.capacity.measure`` at 10, 100 and 1,000 stand-in workers of 64 cores, and
    ``measure_busy``: the longest wait of a short job's result with 60,000 jobs running."""
    from .capacity import capacity_table, measure, measure_busy
    out: dict[str, Any] = {}
    results = []
    for w in p["cap_workers"]:
        r = measure(w, procs=max(1, (w + 499) // 500), seconds=p["cap_seconds"],
                    warm=p["cap_warm"])
        results.append(r)
        out.update({f"cap{w}_jobs_per_s": r["jobs_per_s"],
                    f"cap{w}_cpu_us": r["executor_cpu_us_per_job"],
                    f"cap{w}_rss_mib": r["executor_rss_mib"],
                    f"cap{w}_wait_p99_ms": r["wait_p99_ms"],
                    f"cap{w}_light_wait_p99_ms": r["light_wait_p99_ms"]})
    w, held, settle, seconds = p["cap_busy"]
    busy = measure_busy(w, held, procs=max(1, (w + 499) // 500), settle=settle,
                        seconds=seconds)
    out.update(cap_busy_wait_max_ms=busy["light_wait_max_ms"],
               cap_busy_wait_p99_ms=busy["light_wait_p99_ms"],
               cap_busy_rss_mib=busy["executor_rss_mib"])
    out["_capacity"] = {"results": results, "table": capacity_table(results), "busy": busy}
    for row in capacity_table(results):
        out[f"cap_cores_{int(row['job_s'])}s"] = row["cores_one_core"]
    return out


# -- Bob's wait behind Alice (fair share) -----------------------------------------------
async def fairness(ops: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Alice (one client) queues ``alice_jobs`` (3,000) jobs of 20 ms on the cluster; once
    they run, Bob (another client, another user) submits one job, ``bob_trials`` times:
    how long from his submit to his job's start (the job reads the host's monotonic
    clock, shared by every process here)."""
    import trio

    import grain
    if not ops.address:
        raise RuntimeError("fairness needs two clients of different users: grain-tcp only")
    opts = {"address": ops.address, "token": ops.token, "progress": False}
    running = trio.Event()
    waits: list[float] = []

    async def alice() -> None:
        async with grain.open_waitgroup() as wg:
            for i in range(p["alice_jobs"]):
                wg.submit(ops.one, sleep_ms, i, 20.0)
            running.set()

    async def bob() -> None:
        await trio.sleep(0.5)     # Alice's jobs hold every core by now
        for _ in range(p["bob_trials"]):
            await trio.sleep(0.25)
            t = time.monotonic()
            start = await grain.exec1(ops.one, started_at)
            waits.append(start - t)

    async with trio.open_nursery() as n:
        n.start_soon(lambda: grain.combine(alice, user="alice", **opts))
        with trio.fail_after(120):
            await running.wait()
        await grain.combine(bob, user="bob", **opts)
        n.cancel_scope.cancel()
    return {"bob_wait_ms": statistics.median(waits) * 1e3,
            "bob_wait_max_ms": max(waits) * 1e3, "_bob_waits_ms": [w * 1e3 for w in waits]}


def run_standalone(workload: str, system: str, p: dict[str, Any]) -> dict[str, Any]:
    """The workloads that start their own processes."""
    fn = {"relay64": relay64, "stall": stall, "placement": placement,
          "capacity": capacity}[workload]
    return fn(system, p)


STANDALONE = ("relay64", "stall", "placement", "capacity")
