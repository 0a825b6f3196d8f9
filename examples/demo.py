"""`make demo`: fan jobs out over this machine's cores and show what ran where."""

import os
import time

from rich.console import Console
from rich.table import Table

import grain
from grain.resource import Cores, Memory


def simulate(i, seconds):
    t0 = time.time()
    x = 0
    while time.time() - t0 < seconds:  # burn CPU on our pinned core(s)
        x += 1
    return {"job": i, "worker": grain.GVAR.instance, "alloc": repr(grain.GVAR.res),
            "cpus": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS"),
            "pid": os.getpid(), "start": t0, "end": time.time()}


async def batch(offset, n):
    async with grain.open_waitgroup() as wg:
        for i in range(n):
            wg.submit(Cores(1) & Memory(0.1), simulate, offset + i, 0.2)
    return wg.results


async def main():
    ncores = len(os.sched_getaffinity(0))
    t0 = time.time()
    async with grain.open_waitgroup() as wg:
        wg.submit(Cores(min(2, ncores)), simulate, 0, 0.3)   # a 2-core job
        wg.start_subtask(batch, 1, 2 * ncores)              # a subtask fanning out
    first, rest = wg.results
    rows = [first, *rest]
    table = Table(title=f"Grain demo: {len(rows)} jobs on {ncores} cores "
                        f"in {time.time() - t0:.2f}s (results in submission order)")
    for col in ("job", "allocation (GVAR.res)", "pinned CPUs", "OMP", "start s"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(str(r["job"]), r["alloc"], ",".join(map(str, r["cpus"])), r["omp"],
                      f"{r['start'] - t0:.2f}")
    Console().print(table)
    mismatched = [r for r in rows if r["cpus"] != sorted(
        int(c) for c in r["alloc"].split("[")[1].split("]")[0].replace("-", ",").split(","))]
    print("every job pinned to exactly its allocated cores" if not mismatched else
          f"MISMATCH in {len(mismatched)} jobs")
    one = await grain.exec1(Cores(1), simulate, len(rows), 0.01)
    print(f"one more, sequentially with exec1: job {one['job']} got {one['alloc']}")


if __name__ == "__main__":
    grain.run_combine(main)
