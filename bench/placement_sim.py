"""``python -m bench.placement_sim``: Grain's placement code at cluster scale, no I/O.

Drives ``grain.executor.placement.Placement`` as the executor does: registers ``--workers``
workers of ``Cores(64) & Memory(256)`` (``total`` and ``free`` distinct objects), enqueues
``--jobs`` jobs of mixed shapes, lets the first ``schedule()`` fill the cluster, then runs a
steady state: each step ends ``--completions`` random running jobs (``release``) and calls
``schedule()`` again. Prints placement decisions per second for the fill and the steady
state, enqueue and release rates, and the process's memory; ``--profile`` adds where the
time goes (cProfile). Also checks that no worker is ever over-allocated.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import sys
import time
from typing import Any

import psutil

from grain.executor.placement import Placement
from grain.resource import Cores, Memory

#: (request factory, weight): most jobs small, a few whole-node ones
SHAPES: list[tuple[Any, float]] = [
    (lambda: Cores(1), 0.50),
    (lambda: Cores(2), 0.15),
    (lambda: Cores(4) & Memory(8), 0.15),
    (lambda: Cores(1) & Memory(16), 0.10),
    (lambda: Cores(16) & Memory(32), 0.09),
    (lambda: Cores(64) & Memory(128), 0.01),
]


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2 ** 20


def build(workers: int, cores: int, mem: float) -> Placement:
    pl = Placement()
    for wid in range(1, workers + 1):
        pl.add_worker(wid, f"node-{wid:04d}", Cores(cores) & Memory(mem),
                      Cores(cores) & Memory(mem))
    return pl


def enqueue_all(pl: Placement, jobs: int, rng: random.Random, distinct: bool) -> list[Any]:
    """Enqueue ``jobs`` jobs; one request object per shape unless ``distinct``
    (the executor decodes one per job: ``--distinct`` shows that memory)."""
    shared = [f() for f, _ in SHAPES]
    weights = [w for _, w in SHAPES]
    picks = rng.choices(range(len(SHAPES)), weights, k=jobs)
    for gid, k in enumerate(picks, start=1):
        pl.enqueue(gid, SHAPES[k][0]() if distinct else shared[k])
    return picks


def simulate(a: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(a.seed)
    out: dict[str, Any] = {"rss_start_mib": rss_mib()}
    pl = build(a.workers, a.cores, a.memory)
    out["rss_workers_mib"] = rss_mib()
    t = time.perf_counter()
    enqueue_all(pl, a.jobs, rng, a.distinct)
    dt = time.perf_counter() - t
    out.update(enqueue_s=dt, enqueue_per_s=a.jobs / dt, rss_queued_mib=rss_mib())
    gc.collect()

    prof = cProfile.Profile() if a.profile else None
    running: list[tuple[int, int, Any]] = []
    if prof:
        prof.enable()
    t = time.perf_counter()
    first = pl.schedule()
    fill_s = time.perf_counter() - t
    running.extend(first)
    out.update(fill_decisions=len(first), fill_s=fill_s,
               fill_per_s=len(first) / fill_s if fill_s else 0.0)

    decisions = steps = released = 0
    sched_s = release_s = 0.0
    deadline = time.monotonic() + a.seconds
    while len(pl) and time.monotonic() < deadline and (not a.steps or steps < a.steps):
        t = time.perf_counter()
        for _ in range(min(a.completions, len(running))):
            i = rng.randrange(len(running))
            running[i], running[-1] = running[-1], running[i]
            gid, wid, alloc = running.pop()
            pl.release(wid, gid, alloc)
            released += 1
        t2 = time.perf_counter()
        placed = pl.schedule()
        t3 = time.perf_counter()
        release_s += t2 - t
        sched_s += t3 - t2
        running.extend(placed)
        decisions += len(placed)
        steps += 1
    if prof:
        prof.disable()
    out.update(steps=steps, steady_decisions=decisions, steady_schedule_s=sched_s,
               steady_per_s=decisions / sched_s if sched_s else 0.0,
               schedule_call_ms=sched_s / steps * 1e3 if steps else 0.0,
               released=released, release_per_s=released / release_s if release_s else 0.0,
               queue_left=len(pl), running=len(running), rss_end_mib=rss_mib())
    out["overallocated_workers"] = check(pl, a.cores, a.memory)
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
        out["profile"] = s.getvalue()
    return out


def check(pl: Placement, cores: int, mem: float) -> int:
    """Workers whose free + running allocations do not add up (should be 0)."""
    bad = 0
    for w in pl.workers.values():
        free_c = len(w.free.c)
        if free_c < 0 or free_c > cores or w.free.m < -1e-9 or w.free.m > mem + 1e-9:
            bad += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.placement_sim",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=64)
    ap.add_argument("--memory", type=float, default=256.0, help="GB per worker")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--completions", type=int, default=1000,
                    help="running jobs that end between two schedule() calls")
    ap.add_argument("--seconds", type=float, default=60.0, help="steady-state time budget")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps")
    ap.add_argument("--distinct", action="store_true",
                    help="one request object per job, as the executor decodes them")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile fill + steady state")
    a = ap.parse_args(argv)
    print(f"placement sim: {a.workers} workers x {a.cores} cores, {a.jobs:,} queued jobs, "
          f"{a.completions} completions per step (pid {os.getpid()})", flush=True)
    r = simulate(a)
    print(f"enqueue:        {r['enqueue_per_s']:,.0f} jobs/s ({r['enqueue_s']:.1f} s)")
    print(f"fill pass:      {r['fill_decisions']:,} decisions in {r['fill_s']:.2f} s = "
          f"{r['fill_per_s']:,.0f} decisions/s")
    print(f"steady state:   {r['steady_decisions']:,} decisions in {r['steps']} schedule() "
          f"calls, {r['steady_schedule_s']:.2f} s = {r['steady_per_s']:,.0f} decisions/s "
          f"({r['schedule_call_ms']:.1f} ms per call)")
    print(f"release:        {r['release_per_s']:,.0f} releases/s")
    print(f"queue left:     {r['queue_left']:,}, running: {r['running']:,}, "
          f"over-allocated workers: {r['overallocated_workers']}")
    print(f"memory (RSS):   start {r['rss_start_mib']:.0f} MiB, workers "
          f"{r['rss_workers_mib']:.0f} MiB, 1M queued {r['rss_queued_mib']:.0f} MiB, end "
          f"{r['rss_end_mib']:.0f} MiB ({(r['rss_queued_mib'] - r['rss_workers_mib']) * 2**20 / a.jobs:.0f} B per queued job)")
    if "profile" in r:
        print(r["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
