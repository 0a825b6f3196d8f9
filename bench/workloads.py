"""The workloads: what is measured, and how, identically on every system.

Each is ``async def name(ops, params) -> dict of metrics`` (see ``bench.systems``), except
``cpu`` (two clusters: one worker, then two), the Grain-only ``pinning``, which uses
Grain's API directly, and the scale workloads of ``bench.scale`` (floors, a million
queued jobs, stalls, placement, capacity, fair share). Sizes come from ``params`` (``sizes()`` gives
the full and the ``--quick`` ones). Every workload warms its system up first (runners,
workers, function caches) unless it measures the cold start itself.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from . import procs
from .jobs import burn, burn_probe, echo, noop, pin_probe, sleep_ms
from .scale import fairness, queue1m
from .systems import Ops, run_on

MiB = 2 ** 20


def sizes(quick: bool, smoke: bool = False) -> dict[str, Any]:
    """Workload sizes; ``--quick`` keeps every workload but makes it smaller; ``smoke``
    (the harness's own test) makes them tiny: figures meaningless, every path exercised."""
    if smoke:
        return {"rt_jobs": 10, "noop_jobs": 200, "sleep_jobs": 100, "big_bytes": MiB,
                "big_reps": 2, "cpu_jobs": 4, "cpu_seconds": 0.02, "idle_wait": 0.1,
                "pin_jobs": 40, "queue_jobs": 2000, "stall_jobs": 2000,
                "place_jobs": 2000, "place_users_jobs": 2000, "place_seconds": 0.2, "cap_workers": [2],
                "cap_seconds": 0.5, "cap_warm": 0.4, "cap_busy": (2, 50, 0.3, 0.5),
                "alice_jobs": 20, "bob_trials": 2,
                "timeout": 100}
    return {
        "rt_jobs": 100 if quick else 300,
        "noop_jobs": 2000 if quick else 5000,
        "sleep_jobs": 2000 if quick else 5000,
        "big_bytes": 10 * MiB,
        "big_reps": 5 if quick else 10,
        "cpu_jobs": 8,
        "cpu_seconds": 0.25 if quick else 0.5,
        "idle_wait": 1.0 if quick else 2.0,
        "pin_jobs": 500 if quick else 2000,
        "queue_jobs": 200_000 if quick else 1_000_000,
        "stall_jobs": 200_000 if quick else 1_000_000,
        "place_jobs": 1_000_000,
        "place_users_jobs": 300_000,
        "place_seconds": 2.0 if quick else 5.0,
        "cap_workers": [10, 100, 1000],
        "cap_seconds": 2.0 if quick else 5.0,
        "cap_warm": 1.0 if quick else 2.0,
        # (workers, jobs held, settle s, measured s): settle past the executor's first
        # freeze of long-lived objects (30 s, grain.executor.heap)
        "cap_busy": (1000, 60_000, 35.0, 5.0 if quick else 10.0),
        "alice_jobs": 3000,
        "bob_trials": 3 if quick else 5,
        "timeout": 110 if quick else 290,
    }


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


async def warm(ops: Ops, n: int = 0) -> None:
    n = n or 4 * ops.cores
    await ops.map(noop, [(i,) for i in range(n)])


# -- workloads on every system --------------------------------------------------------
async def cold(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """Process start (before importing the system) to the first job's result."""
    await ops.call(noop, 0)
    t = time.perf_counter()
    return {"cold_start_s": t - ops.t0, "cold_ready_s": (ops.ready_at or t) - ops.t0}


async def roundtrip(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """One job at a time: submit, wait for its result, again (and the CPU each round trip
    cost in all the system's processes)."""
    await warm(ops)
    for i in range(20):
        await ops.call(noop, i)
    lat = []
    cpu = procs.tree_cpu_s()
    for i in range(p["rt_jobs"]):
        t = time.perf_counter()
        await ops.call(noop, i)
        lat.append(time.perf_counter() - t)
    cpu = procs.tree_cpu_s() - cpu
    return {"rt_median_ms": statistics.median(lat) * 1e3, "rt_p95_ms": p95(lat) * 1e3,
            "rt_cpu_us": cpu / p["rt_jobs"] * 1e6}


async def noops(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """N no-op jobs submitted at once: jobs/s from the first submit to the last result,
    and the CPU per job in all the system's processes."""
    await warm(ops, 200)
    n = p["noop_jobs"]
    cpu = procs.tree_cpu_s()
    t = time.perf_counter()
    out = await ops.map(noop, [(i,) for i in range(n)])
    dt = time.perf_counter() - t
    cpu = procs.tree_cpu_s() - cpu
    assert len(out) == n
    return {"noop_jobs_per_s": n / dt, "noop_cpu_us": cpu / n * 1e6}


async def sleeps(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """N jobs sleeping 1 ms, submitted at once; ideal is cores / 1 ms."""
    await warm(ops)
    n = p["sleep_jobs"]
    t = time.perf_counter()
    await ops.map(sleep_ms, [(i,) for i in range(n)])
    rate = n / (time.perf_counter() - t)
    ideal = ops.cores * 1000.0
    return {"sleep_jobs_per_s": rate, "sleep_of_ideal": rate / ideal}


async def big(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """One job taking and returning a 10 MiB bytes object, several times: round trip, and
    its CPU in all the system's processes."""
    data = os.urandom(p["big_bytes"])
    await warm(ops)
    for _ in range(2):
        await ops.call(echo, data)
    times = []
    cpu = procs.tree_cpu_s()
    for _ in range(p["big_reps"]):
        t = time.perf_counter()
        r = await ops.call(echo, data)
        times.append(time.perf_counter() - t)
        assert len(r) == len(data)
    cpu = procs.tree_cpu_s() - cpu
    return {"big_rt_ms": statistics.median(times) * 1e3,
            "big_cpu_ms": cpu / p["big_reps"] * 1e3}


async def idle(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
    """Memory of the driver and all its descendants once warm and idle."""
    await warm(ops)
    await ops.sleep(p["idle_wait"])
    m = procs.tree_memory()
    out = {"idle_rss_mib": m["rss_mib"], "idle_pss_mib": m["pss_mib"],
           "idle_procs": m["procs"], "_idle_names": m["names"]}
    if ops.system.startswith("grain"):
        # the cluster's own processes (client, and over TCP executor and worker): the
        # runners are the jobs' processes, as the pool's workers are
        out["idle_core_rss_mib"] = m["rss_mib"] - m["runner_rss_mib"]
    return out


# -- CPU scaling: two clusters ---------------------------------------------------------
def _cpu_phase(fn: Any) -> Any:
    async def phase(ops: Ops, p: dict[str, Any]) -> dict[str, Any]:
        await warm(ops, 2 * ops.cores)
        t = time.perf_counter()
        out = await ops.map(fn, [(p["burn_n"],)] * p["cpu_jobs"])
        dt = time.perf_counter() - t
        bad = 0
        if fn is burn_probe:
            bad = sum(1 for _, aff, cores in out if aff != cores)
        return {"t": dt, "pin_mismatches": bad}
    return phase


def cpu(system: str, p: dict[str, Any], t0: float) -> dict[str, Any]:
    """8 CPU-bound jobs of ~0.5 s on one worker, then on two: the speed-up.
    Grain: the embedded cluster with ``rpw=Cores(1)`` then ``Cores(2)`` (over TCP: a worker
    with ``--cores 0`` then ``--cores 0,1``), each job checking its pinning."""
    fn = burn_probe if system.startswith("grain") else burn
    one = run_on(system, _cpu_phase(fn), p, t0, workers=1)
    two = run_on(system, _cpu_phase(fn), p, t0, workers=2)
    out = {"cpu_1w_s": one["t"], "cpu_2w_s": two["t"], "cpu_speedup": one["t"] / two["t"]}
    if system.startswith("grain"):
        out["cpu_pin_mismatches"] = one["pin_mismatches"] + two["pin_mismatches"]
    return out


# -- Grain only ------------------------------------------------------------------------
async def pinning(ops: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Jobs of mixed shapes (Cores(1), Cores(2)); each reports its affinity, its
    allocation and OMP_NUM_THREADS; count jobs where they disagree."""
    from grain.resource import Cores
    await warm(ops)
    n = p["pin_jobs"]
    out1 = await ops.map(pin_probe, [(i,) for i in range(n // 2)], res=Cores(1))
    out2 = await ops.map(pin_probe, [(i,) for i in range(n - n // 2)],
                         res=Cores(min(2, ops.cores)))
    bad = sum(1 for _, aff, cores, omp in out1 + out2
              if aff != cores or omp != str(len(cores)))
    return {"pin_jobs": len(out1) + len(out2), "pin_mismatches": bad,
            "pin_runner_pids": len({r[0] for r in out1 + out2})}


# -- the bare TCP echo (the 10 MiB target's yardstick) --------------------------------
def tcp_echo(p: dict[str, Any]) -> dict[str, Any]:
    """10 MiB to an echo server in another process on loopback and back, store and
    forward (the server reads all of it before answering, as a job does)."""
    import socket
    import subprocess
    import sys
    srv = subprocess.Popen([sys.executable, "-m", "bench.echo_server"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        data = os.urandom(p["big_bytes"])
        times = []
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(2 + p["big_reps"]):
                if i == 2:
                    cpu = procs.tree_cpu_s()
                t = time.perf_counter()
                s.sendall(len(data).to_bytes(8, "big") + data)
                got = _recv_exact(s, 8)
                back = _recv_exact(s, int.from_bytes(got, "big"))
                dt = time.perf_counter() - t
                assert len(back) == len(data)
                if i >= 2:
                    times.append(dt)
            cpu = procs.tree_cpu_s() - cpu
        return {"big_rt_ms": statistics.median(times) * 1e3,
                "big_cpu_ms": cpu / p["big_reps"] * 1e3}
    finally:
        srv.kill()
        srv.wait()


def _recv_exact(s: Any, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:])
        if not k:
            raise ConnectionError("echo server closed")
        got += k
    return bytes(buf)


#: workload name -> (function, systems it runs on, what it measures)
WORKLOADS: dict[str, tuple[Any, tuple[str, ...], str]] = {
    "cold": (cold, ("grain", "grain-tcp", "dask", "ray", "processpool"),
             "process start to the first job's result"),
    "roundtrip": (roundtrip, ("grain", "grain-tcp", "dask", "ray", "processpool"),
                  "one job at a time: latency"),
    "noop": (noops, ("grain", "grain-tcp", "dask", "ray", "processpool"),
             "no-op jobs (5,000; 2,000 quick) at once: throughput"),
    "sleep1ms": (sleeps, ("grain", "grain-tcp", "dask", "ray", "processpool"),
                 "jobs sleeping 1 ms (5,000; 2,000 quick) at once: throughput"),
    "big10mib": (big, ("grain", "grain-tcp", "dask", "ray", "processpool"),
                 "one job taking and returning 10 MiB: round trip"),
    "echo10mib": (tcp_echo, ("bare-tcp",), "bare TCP echo of 10 MiB over loopback"),
    "cpu": (cpu, ("grain", "grain-tcp", "dask", "ray", "processpool"),
            "8 CPU-bound jobs: speed-up of 2 workers over 1"),
    "idle": (idle, ("grain", "grain-tcp", "dask", "ray", "processpool"),
             "RSS of the driver and all its children, warm and idle"),
    "pinning": (pinning, ("grain", "grain-tcp"), "every job's affinity = its allocation"),
    "queue1m": (queue1m, ("grain-tcp",),
                "executor and client RSS with 1,000,000 queued jobs"),
    "relay64": (None, ("trio-relay", "raw-relay"),
                "64 bytes through client -> relay -> relay -> echo and back"),
    "stall": (None, ("grain",), "longest event-loop stall, 1,000,000 jobs (bench/stall.py)"),
    "placement": (None, ("grain",),
                  "one placement step, 1,000 workers x 64 cores (bench/placement_sim.py)"),
    "capacity": (None, ("grain-tcp",),
                 "one executor, 10/100/1,000 simulated workers of 64 cores"),
    "fairness": (fairness, ("grain-tcp",), "Bob's wait behind Alice's 3,000 jobs of 20 ms"),
}
