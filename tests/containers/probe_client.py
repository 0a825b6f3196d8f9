"""A user's program: it submits N one-core jobs that report where and as whom they ran, and
prints the results as JSON. Run as

    python probe_client.py N --address grain://HOST:PORT --token-file FILE [--tls-ca CA]
    python probe_client.py N --cluster NAME --namespace NS --kubeconfig FILE [--token-file FILE]

Its job function lives in ``__main__`` (as in users' scripts), so it reaches the workers in
their containers by value: nothing of the tests is installed there.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
from grain.resource import Cores


def probe(index: int) -> dict[str, Any]:
    """Where this job runs: CPUs, user, what it may write, its privileges and memory limit."""
    # Some real work, so that the jobs overlap and both single-core workers get some.
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    writable = {}
    for directory in ("/tmp", "/opt/grain", "/"):
        path = os.path.join(directory, f".probe-{os.getpid()}-{index}")
        try:
            with open(path, "w") as f:
                f.write("x")
            os.unlink(path)
            writable[directory] = True
        except OSError:
            writable[directory] = False
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":\t" in line)
    limit = None
    for candidate in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
        if os.path.exists(candidate):
            limit = open(candidate).read().strip()
            break
    return {"index": index, "cpus": sorted(os.sched_getaffinity(0)), "uid": os.getuid(),
            "gid": os.getgid(), "writable": writable, "cap_eff": status["CapEff"].strip(),
            "no_new_privs": status.get("NoNewPrivs", "").strip(), "memory_limit": limit,
            "tmpdir": os.environ.get("TMPDIR"), "cwd": os.getcwd()}


async def main(n: int) -> list[Any]:
    async with grain.open_waitgroup() as wg:
        for i in range(n):
            wg.submit(Cores(1), probe, i)
    return list(wg.results)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--address")
    parser.add_argument("--cluster")
    parser.add_argument("--namespace")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--token-file")
    parser.add_argument("--tls-ca")
    opts = parser.parse_args()
    kwargs: dict[str, Any] = {}
    if opts.token_file:
        with open(opts.token_file) as f:
            kwargs["token"] = f.read().strip()
    if opts.address:
        kwargs["address"] = opts.address
    if opts.cluster:
        kwargs.update(cluster=opts.cluster, namespace=opts.namespace, kubeconfig=opts.kubeconfig)
    if opts.tls_ca:
        kwargs["tls_ca"] = opts.tls_ca

    async def run() -> list[Any]:
        return await main(opts.count)

    print(json.dumps(grain.run_combine(run, **kwargs)))
