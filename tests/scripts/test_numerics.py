"""Native thread pools follow each job's cores, in programs written the way users write
them: ``import numpy as np`` at the top of the script (so numpy, and its OpenBLAS, load in
the runner while the job's function is unpickled), jobs of mixed sizes one after another on
warm runners (a runner that ran a Cores(2) job then runs a Cores(1) job, and the reverse),
and concurrently. Each job checks from inside, with threadpoolctl, that every pool it can
see (OpenBLAS from numpy, OpenMP from libgomp) has exactly as many threads as it has cores,
and does a real numpy computation whose answer is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from runner_cluster import RunScript, TcpCluster, last_json, tcp_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(240)

SCRIPT = """
    import ctypes
    import json
    import os
    import sys

    import numpy as np
    from threadpoolctl import threadpool_info

    import grain
    from grain import Cores

    SIZES = [2, 1, 2, 1, 1, 2, 2, 1]


    def solve(k, seed):
        # libgomp, as a library built with OpenMP would load it: the first job that loads
        # it sizes it from OMP_NUM_THREADS; later jobs of other sizes find it loaded
        ctypes.CDLL("libgomp.so.1")
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((200, 200)) + 200 * np.eye(200)
        x = np.linalg.solve(a, a @ np.arange(200.0))
        return {"k": k, "cores": len(grain.GVAR.res.c),
                "affinity": len(os.sched_getaffinity(0)),
                "pools": {p["internal_api"]: p["num_threads"] for p in threadpool_info()},
                "omp_env": os.environ.get("OMP_NUM_THREADS"),
                "ok": bool(np.allclose(x, np.arange(200.0))), "pid": os.getpid()}


    async def main():
        out = []
        for i, k in enumerate(SIZES):          # one at a time: warm runners change size
            out.append(await grain.exec1(Cores(k), solve, k, i))
        async with grain.open_waitgroup() as wg:   # and side by side
            for i, k in enumerate([1, 1, 2, 1, 2, 1, 1, 1]):
                wg.submit(Cores(k), solve, k, 100 + i)
        print(json.dumps(out + list(wg.results)))


    kw = dict(address=sys.argv[1], token=sys.argv[2]) if len(sys.argv) > 2 else {}
    grain.run_combine(main, output="off", progress=False, **kw)
"""


def _check(jobs: list[dict[str, Any]]) -> None:
    for j in jobs:
        assert j["ok"], j
        assert j["cores"] == j["affinity"] == j["k"], j
        assert j["omp_env"] == str(j["k"]), j
        assert j["pools"] == {"openblas": j["k"], "openmp": j["k"]}, \
            f"every thread pool must have exactly the job's {j['k']} threads: {j}"
    # the sequential part really reused runners across sizes, in both directions
    seq = jobs[:8]
    changes = {(a["k"], b["k"]) for a, b in zip(seq, seq[1:], strict=False)
               if a["pid"] == b["pid"]}
    assert {(2, 1), (1, 2)} <= changes, f"no warm runner changed size: {seq}"


def test_thread_pools_follow_the_cores_on_the_embedded_cluster(run_script: RunScript) -> None:
    _check(last_json(run_script(SCRIPT)))


def test_thread_pools_follow_the_cores_over_tcp(run_script: RunScript,
                                                tcp_cluster: TcpCluster) -> None:  # noqa: F811
    _check(last_json(run_script(SCRIPT, args=tcp_cluster.args)))
