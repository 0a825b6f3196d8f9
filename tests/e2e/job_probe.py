"""Submit a few jobs to a Grain cluster and print what each job saw (kind e2e).

Run from the CI runner (`--cluster demo --namespace grain-e2e --kubeconfig F`: discovery
through the kubeconfig, a managed port-forward, TLS with the CA from the user's Secret and the
executor Service's name verified) and inside a pod (`--address grain://...`, the user's Secret
mounted as files: `--token-file` and `--tls-ca`; the pod carries the `grain.dev/client` label
that the executor's NetworkPolicy lets in). Runs as __main__, so dill ships `probe` by value
to the workers. The last line of output is `GRAIN-E2E-RESULTS {json}`; tests/e2e/test_kind.py
checks it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import grain
from grain.resource import Cores

REQUESTS = [1, 2, 1, 2, 1, 1]
MARK = "GRAIN-E2E-RESULTS "


async def probe(i: int) -> dict:
    """A job: the cores it is pinned to, next to the cores it was allocated."""
    import os

    import grain

    return {
        "i": i,
        "worker": str(grain.GVAR.instance),
        "affinity": sorted(os.sched_getaffinity(0)),
        "alloc": sorted(grain.GVAR.res.c),
        "omp": os.environ.get("OMP_NUM_THREADS"),
    }


def main() -> None:
    """Parse where to connect, run the jobs, print the results as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--cluster", help="GrainCluster name (kubeconfig discovery)")
    where.add_argument("--address", help="grain://HOST:PORT (with --token-file, else $GRAIN_TOKEN)")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--kubeconfig", default=None, help="with --cluster")
    parser.add_argument("--token-file", default=None, help="with --address")
    parser.add_argument("--tls-ca", default=None, help="with --address: the cluster's CA")
    args = parser.parse_args()
    results: list[dict] = []

    async def run() -> None:
        async with grain.open_waitgroup() as wg:
            for i, n in enumerate(REQUESTS):
                wg.submit(Cores(n), probe, i)
        results.extend(wg.results)

    if args.cluster:
        grain.run_combine(run, cluster=args.cluster, namespace=args.namespace,
                          kubeconfig=args.kubeconfig)
    else:
        token = (Path(args.token_file).read_text().strip() if args.token_file
                 else os.environ["GRAIN_TOKEN"])
        grain.run_combine(run, address=args.address, token=token, tls_ca=args.tls_ca)
    print(MARK + json.dumps({"requests": REQUESTS, "results": results}), flush=True)


if __name__ == "__main__":
    main()
