"""Grain across "machines": an executor and two workers, each in its own network
namespace, a client in the root namespace; and a worker whose cable is cut."""

from __future__ import annotations

import os

import netjobs
import pytest
from grain_harness import TIMEOUT, Harness, each_once, fault_one_worker, run_client, wait_until
from netns_topology import Topology

from grain.resource import Cores

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


def _cluster(topology: Topology, grain_procs: Harness):  # type: ignore[no-untyped-def]
    ex = grain_procs.executor(host=topology.addr["ex"], netns=topology.netns["ex"])
    grain_procs.worker("node-1", ex, cores="0", netns=topology.netns["w1"])
    grain_procs.worker("node-2", ex, cores="1", netns=topology.netns["w2"])
    return ex


def test_jobs_run_on_workers_in_other_namespaces(topology: Topology,
                                                 grain_procs: Harness) -> None:
    ex = _cluster(topology, grain_procs)
    st = ex.status()
    addrs = {w["name"]: w["address"].rsplit(":", 1)[0] for w in st["workers"]}
    assert addrs == {"node-1": topology.addr["w1"], "node-2": topology.addr["w2"]}
    ns = {"node-1": topology.ns_inode("w1"), "node-2": topology.ns_inode("w2")}
    assert len({*ns.values(), os.readlink("/proc/self/ns/net")}) == 3

    async def main() -> dict:
        return await each_once({i: (Cores(1), netjobs.where_net, (i,)) for i in range(12)})

    out = run_client(ex, main, limit=30)
    assert all(k == "ok" for k, _ in out.values()), out
    by_worker: dict[str, set] = {}
    for i, (_, (j, name, cpus, netns)) in out.items():
        assert i == j
        assert netns == ns[name], (name, netns)       # it ran in that worker's namespace
        assert cpus == ([0] if name == "node-1" else [1])  # on the cores it was given
        by_worker.setdefault(name, set()).add(i)
    assert set(by_worker) == {"node-1", "node-2"}
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file",
                        str(grain_procs.token_file))
    assert r.returncode == 0 and "node-1" in r.stdout and "node-2" in r.stdout, r.stderr
    ex.wait_idle()


def test_cut_off_worker_is_detected_and_its_job_runs_elsewhere(
        topology: Topology, grain_procs: Harness, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ex = _cluster(topology, grain_procs)
    marks = str(tmp_path / "marks")
    node_of = {"node-1": "w1", "node-2": "w2"}
    out, info = fault_one_worker(ex, marks,
                                 lambda v: topology.link(node_of[v], up=False),   # cable cut
                                 lambda v: topology.link(node_of[v], up=True))
    victim = info["victim"]
    other = "node-2" if victim == "node-1" else "node-1"
    assert info["detected_after"] <= TIMEOUT + 2.0
    assert out == {"a": ("ok", ("a", other)), "b": ("ok", ("b", other))}, out
    st = ex.wait_idle()
    assert st["jobs"]["finished"] == 2 and st["jobs"]["retried"] == 1
    # Cable back in: the worker notices its own dead link and reconnects by itself.
    ex.wait_workers([victim, other], timeout=20)
    wait_until(lambda: ex.status()["cores"]["free"] == 2, 10, "both workers' cores free")
