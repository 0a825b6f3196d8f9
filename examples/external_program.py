"""A job that runs an external program: the program inherits the job's pinning.

Here the external program is a small Python one-liner printing its CPU affinity; in real
life it would be an MPI/OpenMP code, which also sees ``OMP_NUM_THREADS`` set to its cores.
"""

import subprocess
import sys

import grain
from grain.resource import Cores


async def run_external():
    out = subprocess.run(
        [sys.executable, "-c",
         "import os; print(sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    return repr(grain.GVAR.res), out


async def main():
    res, out = await grain.exec1(Cores(1), run_external)
    print(f"allocation {res}; the external program saw CPUs and OMP_NUM_THREADS: {out}")
    return res, out


if __name__ == "__main__":
    grain.run_combine(main)
