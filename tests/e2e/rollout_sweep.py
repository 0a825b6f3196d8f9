"""A user's sweep that outlives a GrainCluster rollout (kind e2e, run on the CI runner).

``python rollout_sweep.py --cluster demo --namespace grain-e2e --kubeconfig F --gate G``
connects through ``cluster=`` discovery (port-forward, TLS, the Service's name verified),
submits ``--first`` jobs of ``--seconds`` each, waits (in its own code) until the file ``G``
exists, then submits ``--then`` short jobs to the same wait group, so its session lives across
whatever the test does meanwhile and keeps submitting after it.

Each job prints ``GRAIN-E2E-START i`` when it starts; the job's output comes back to this
program, which prints it as it arrives (the test counts starts from it while the sweep runs,
and looks for a job started twice). A job returns the pod it ran in (its host name) and
``$SWEEP_ROLL`` of that worker pod (which generation of the DaemonSet ran it). The last line
is ``GRAIN-E2E-RESULTS {json}``. Runs as __main__, so dill ships ``job`` by value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

import grain
from grain.resource import Cores

START = "GRAIN-E2E-START "
MARK = "GRAIN-E2E-RESULTS "


def job(i: int, seconds: float) -> dict[str, Any]:
    """Say that it started, work for a while, say where it ran."""
    import os
    import socket
    import time

    print(f"GRAIN-E2E-START {i}", flush=True)
    time.sleep(seconds)
    return {"i": i, "pod": socket.gethostname(), "roll": os.environ.get("SWEEP_ROLL", "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--gate", required=True, help="submit the --then jobs once this file exists")
    parser.add_argument("--first", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--then", type=int, default=8)
    args = parser.parse_args()

    def show(job_name: str, worker: str, stream: int, line: str) -> None:
        if line.startswith(START):
            print(line.rstrip("\n"), flush=True)

    async def sweep() -> list[Any]:
        async with grain.open_waitgroup() as wg:
            for i in range(args.first):
                wg.submit(Cores(1), job, i, args.seconds)
            while not os.path.exists(args.gate):
                await trio.sleep(0.2)
            for j in range(args.then):
                wg.submit(Cores(1), job, args.first + j, 0.5)
        return list(wg.results)

    results = grain.run_combine(sweep, cluster=args.cluster, namespace=args.namespace,
                                kubeconfig=args.kubeconfig, output=show, progress=False)
    print(MARK + json.dumps({"total": args.first + args.then, "results": results}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
