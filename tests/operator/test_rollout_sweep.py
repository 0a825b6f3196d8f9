"""A GrainCluster's spec changes mid-sweep; the pods roll as Kubernetes rolls them; the sweep completes.

The real operator (kopf, against KMock) reconciles a GrainCluster with TLS on (the default)
and a user ``alice``. The test plays the kubelet and the controllers, as
test_pod_templates_run.py does and with its ``Kubelet``: the rendered executor Deployment and
worker DaemonSet run as local processes from their very templates, Secrets as files, the
executor Service's name resolving to loopback; the test writes the executor Pod object (the
port-forward goes to it) and the workloads' status, and the operator reads the real
executor's ``/status``.

A user's sweep runs as ``python sweep.py`` (tests/operator/sweep_tools.py: a marker file per
job start) with ``run_combine(cluster="demo", user="alice")``: discovery reads the
GrainCluster's status and alice's Secret, and connects through the API's port-forward,
verifying the executor Service's name with the cluster's CA. Mid-sweep the test changes the
spec (an env var of both pod templates), the operator re-renders both, and the test rolls the
pods as Kubernetes would:

- the executor Deployment (``Recreate``): the old pod's process gets SIGTERM and its Pod
  object goes, then the new template's pod starts on the same Service address;
- the worker DaemonSet (``maxUnavailable: 1``), one node at a time: SIGTERM to the old worker
  (it drains: its running jobs finish within the rendered drain time, and it exits 0 within
  the pod's termination grace), then the new template's worker starts on that node.

The program sees no error and gets every result once; no job starts twice, except one a
drain handed back past its time (counted as handed back, never as a retry); jobs ran on both
generations of workers and on both sides of the executor's restart; and the program went on
submitting jobs after the roll (behind its own gate).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kmock_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    PODS,
    SECRETS,
    KMock,
    graincluster,
)
from process_tools import Processes, grain_cli_available, http_ok, wait_http
from support.waiting import free_port, wait_until
from sweep_tools import start_sweep
from test_pod_templates_run import Kubelet, probe_url

from grain_operator import render

pytestmark = pytest.mark.timeout(300)

GRAIN_PORT, HTTP_PORT = 4242, 8080  # the spec's defaults: the container ports of the executor
DRAIN_SECONDS = 20                  # far above any job's time: a drain lets running jobs finish
LONG = 2.5                          # every 8th job: still running when the executor is replaced
FIRST = [LONG if i % 8 == 0 else 0.4 for i in range(48)]   # ~16 s on two cores
THEN = [0.1] * 6                    # submitted after the roll
NODES = ("node-a", "node-b")


def roll_env(generation: int) -> list[dict[str, str]]:
    """The env var whose change rolls both templates; jobs see it (SWEEP_ROLL) in the markers."""
    return [{"name": "SWEEP_ROLL", "value": str(generation)}]


SPEC: dict[str, Any] = {
    "image": "grain:1",
    "users": [{"name": "alice"}],
    "executor": {"env": roll_env(1)},
    "workers": {"memory": "1Gi", "drainTimeoutSeconds": DRAIN_SECONDS, "env": roll_env(1)},
    "scheduler": {"retries": 1},
}


class Cluster:
    """The kubelet's and the controllers' part for one GrainCluster: pods as processes, and
    what the Deployment and DaemonSet controllers would write."""

    def __init__(self, api: KMock, kubelet: Kubelet, ports: dict[int, int]) -> None:
        self.api, self.kubelet, self.ports = api, kubelet, ports
        cpus = sorted(os.sched_getaffinity(0))
        self.node_cpus = dict(zip(NODES, (cpus[: max(1, len(cpus) // 2)], cpus[len(cpus) // 2:] or cpus), strict=True))
        self.executor: subprocess.Popen[bytes] | None = None
        self.executor_pod = ""
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def template(self, kind: str) -> dict[str, Any]:
        resource, name = (DEPLOYMENTS, "demo-executor") if kind == "executor" else (DAEMONSETS, "demo-worker")
        obj = self.api.get(resource, NS, name)
        assert obj is not None, f"{name} is gone"
        return dict(obj["spec"]["template"])

    def template_hashes(self) -> list[str]:
        return [self.template(k)["metadata"]["annotations"][render.TEMPLATE_HASH] for k in ("executor", "worker")]

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[HTTP_PORT]}/status"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.status_url, timeout=3) as resp:
            return dict(json.load(resp))

    def workers_seen(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in self.status()["workers"]}

    def controllers(self, executor_ready: bool, workers_ready: int) -> None:
        """The workloads' status, as their controllers would write it."""
        ready = 1 if executor_ready else 0
        self.api.patch(DEPLOYMENTS, NS, "demo-executor", {"status": {
            "replicas": 1, "readyReplicas": ready, "availableReplicas": ready}}, sub="status")
        self.api.patch(DAEMONSETS, NS, "demo-worker", {"status": {
            "desiredNumberScheduled": len(NODES), "currentNumberScheduled": len(NODES),
            "numberReady": workers_ready}}, sub="status")

    # -- the executor Deployment (Recreate) --------------------------------------------------------

    def start_executor(self, generation: int) -> None:
        template = self.template("executor")
        assert {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]} == set(self.ports)
        pod = f"demo-executor-gen{generation}"
        self.executor = self.kubelet.start("executor", pod, template, "control-plane")
        wait_http(probe_url(template, self.ports), 30)
        self.executor_pod = pod
        self.api.create(PODS, NS, {  # what the port-forward looks up behind Service demo-executor
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})

    def stop_executor(self) -> None:
        assert self.executor is not None
        self.executor.terminate()  # the kubelet's SIGTERM: the executor stops at once
        self.executor.wait(30)
        self.api.delete(PODS, NS, self.executor_pod)
        wait_until(lambda: not http_ok(probe_url(self.template("executor"), self.ports)), 10, "the old executor to be gone")

    # -- the worker DaemonSet, one node at a time ----------------------------------------------------

    def start_worker(self, node: str, generation: int) -> None:
        old = self.workers_seen().get(node, {}).get("address")
        self.workers[node] = self.kubelet.start("worker", f"demo-worker-{node}-gen{generation}",
                                                self.template("worker"), node, self.node_cpus[node])
        wait_until(lambda: (w := self.workers_seen().get(node)) and not w["draining"] and w["address"] != old,
                 30, f"the new worker on {node} to register")

    def drain_worker(self, node: str) -> int:
        """SIGTERM the node's worker as the kubelet does on a rollout; its exit code."""
        proc = self.workers[node]
        proc.terminate()
        grace = self.template("worker")["spec"]["terminationGracePeriodSeconds"]
        assert grace == DRAIN_SECONDS + render.DRAIN_MARGIN_SECONDS
        return proc.wait(grace)


def test_spec_change_mid_sweep_rolls_the_pods_and_the_sweep_completes(
        api: KMock, run_operator: Any, tmp_path: Path) -> None:
    if not grain_cli_available():
        pytest.skip("grain core CLI not available")
    ports = {GRAIN_PORT: free_port(), HTTP_PORT: free_port()}
    with run_operator(status_url=f"http://127.0.0.1:{ports[HTTP_PORT]}/status", status_timeout=3.0), \
            Processes() as procs:
        api.create(GRC, NS, graincluster(spec=SPEC))
        wait_until(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker")
                 and api.get(SECRETS, NS, "demo-user-alice"), 20, "the rendered children")
        secret = api.get(SECRETS, NS, "demo-user-alice")
        assert secret is not None and "ca.crt" in secret["data"]  # TLS on: what discovery hands alice
        api.km.forward_to = ports[GRAIN_PORT]  # the API server's port-forward reaches the pod's port
        cluster = Cluster(api, Kubelet(api, tmp_path / "pods", procs, ports), ports)

        # generation 1: the executor, then a worker per node; the GrainCluster becomes Running
        cluster.start_executor(1)
        cluster.controllers(executor_ready=True, workers_ready=0)
        for node in NODES:
            cluster.start_worker(node, 1)
        cluster.controllers(executor_ready=True, workers_ready=len(NODES))
        wait_until(lambda: (api.get(GRC, NS, "demo") or {}).get("status", {}).get("phase") == "Running", 30,
                 "the GrainCluster to be Running")
        first_workers = {node: proc.pid for node, proc in cluster.workers.items()}

        # alice's sweep, through cluster= discovery
        user_kubeconfig = api.kubeconfig(tmp_path / "alice-kubeconfig", NS)
        sweep = start_sweep(procs, tmp_path, {"cluster": "demo", "namespace": NS, "kubeconfig": user_kubeconfig,
                                              "user": "alice"}, FIRST, THEN, gate=True)
        wait_until(lambda: sweep.started() >= 4 or sweep.proc.poll() is not None, 60, "the sweep's first jobs")
        assert sweep.proc.poll() is None, sweep.tail()

        # the spec changes: the operator re-renders both templates
        before = cluster.template_hashes()
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
            "executor": {"env": roll_env(2)}, "workers": {"env": roll_env(2)}}})
        wait_until(lambda: all(a != b for a, b in zip(before, cluster.template_hashes(), strict=True)), 20,
                 "both templates to roll")

        # the executor rolls (Recreate): old pod gone, then the new one on the same Service
        # address; a long job is running on a worker meanwhile (it must be re-attached, not re-run)
        def long_job_running() -> bool:
            now = time.monotonic_ns()
            return any(FIRST[i] == LONG and now - s[-1].ns < (LONG - 1.0) * 1e9
                       for i, s in sweep.starts().items() if i < len(FIRST))
        wait_until(long_job_running, 30, "a long job of the sweep to be running")
        executor_down = time.monotonic_ns()
        cluster.stop_executor()
        cluster.controllers(executor_ready=False, workers_ready=len(NODES))
        cluster.start_executor(2)
        executor_up = time.monotonic_ns()
        cluster.controllers(executor_ready=True, workers_ready=len(NODES))
        wait_until(lambda: set(cluster.workers_seen()) == set(NODES), 30, "the workers to re-attach")

        # the workers roll, one node at a time: each drains while it runs a job of the sweep
        for node in NODES:
            wait_until(lambda node=node: cluster.workers_seen()[node]["running_jobs"] > 0, 60,
                     f"a job of the sweep running on {node} (the sweep must still be going)")
            assert cluster.drain_worker(node) == 0, f"the worker on {node} did not drain cleanly"
            cluster.controllers(executor_ready=True, workers_ready=len(NODES) - 1)
            cluster.start_worker(node, 2)
            cluster.controllers(executor_ready=True, workers_ready=len(NODES))

        # after the roll, the program submits more jobs; then it ends
        sweep.open_gate()
        results = sweep.finish(120)
        assert results == [i * i for i in range(sweep.total)]

        starts = sweep.starts()
        assert sorted(starts) == list(range(sweep.total)), "a result came without its job starting"
        final = cluster.status()["jobs"]
        twice = {i: s for i, s in starts.items() if len(s) > 1}
        # a job starts again only when a drain handed it back past its time: from a drained worker
        for i, s in twice.items():
            assert all(start.worker_pid in first_workers.values() for start in s[:-1]), (i, s)
        assert len(twice) <= final["handed_back"], (twice, final)
        assert final["retried"] == 0 and final["failed"] == 0, final
        assert final["reattached"] >= 1, final  # jobs ran on through the executor's restart
        # the sweep spanned the whole roll
        every = [start for s in starts.values() for start in s]
        assert {start.roll for start in every} == {"1", "2"}, "jobs ran on only one generation of workers"
        assert any(start.ns < executor_down for start in every) and any(start.ns > executor_up for start in every)
        assert {start.worker_pid for start in every} >= set(first_workers.values()) | {
            p.pid for p in cluster.workers.values()}, "a worker process ran none of the sweep's jobs"
        # the program reconnected by itself, through the port-forward, to the new pod
        assert "reconnected to the executor" in sweep.log.read_text()
        pods = {f.split("/")[1].split(":")[0] for f in api.km.forwards}
        assert pods == {"demo-executor-gen1", "demo-executor-gen2"}, api.km.forwards
