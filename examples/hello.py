"""Hello, Grain: a few jobs on the embedded local cluster, each pinned to its cores."""

import os

import grain
from grain.resource import Cores


def where(i):
    return i, grain.GVAR.instance, repr(grain.GVAR.res), sorted(os.sched_getaffinity(0))


async def main():
    async with grain.open_waitgroup() as wg:
        for i in range(4):
            wg.submit(Cores(1), where, i)
    for i, worker, res, cpus in wg.results:
        print(f"job {i} ran on {worker} with {res}, pinned to CPUs {cpus}")


if __name__ == "__main__":
    grain.run_combine(main)
