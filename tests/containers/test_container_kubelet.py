"""What the operator renders really runs, as containers from the real image: the operator (in
its own container) reconciles a GrainCluster on the KMock API emulator, a kubelet stand-in
(kubelet.py) turns the executor Deployment and the worker DaemonSet into hardened containers
on two "nodes" of one CPU each, reports their pods' status back, and a user's program finds
the cluster through ``cluster=`` discovery (the GrainCluster's status, the user's Secret, a
port-forward through the API) and runs pinned jobs. A spec change rolls the containers; the
GrainCluster's deletion removes them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from container_harness import Containers, Engine, free_port, http_json, http_ok, wait_for
from kmock_harness import DAEMONSETS, DEPLOYMENTS, GRC, NS, SECRETS, KMock, graincluster
from kubelet import Kubelet, Node, api_list, run_operator, template_hash

pytestmark = pytest.mark.timeout(900)  # the first test of the tier to run builds the image

HERE = Path(__file__).resolve().parent
GiB = 1024 ** 3


def phase(api: KMock) -> str | None:
    return ((api.get(GRC, NS, "demo") or {}).get("status") or {}).get("phase")


def registered(http_port: int) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in http_json(f"http://127.0.0.1:{http_port}/status")["workers"]}


def run_probe(tmp_path: Path, api: KMock, token: str | None, count: int) -> list[dict[str, Any]]:
    """The user's program, connecting with ``cluster="demo"`` through the emulator."""
    argv = [sys.executable, str(HERE / "probe_client.py"), str(count), "--cluster", "demo",
            "--namespace", NS, "--kubeconfig", api.kubeconfig(tmp_path / "user-kubeconfig", NS)]
    if token is not None:
        (tmp_path / "token").write_text(token)
        argv += ["--token-file", str(tmp_path / "token")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_rendered_workloads_run_as_containers_and_roll(engine: Engine, image: str,
                                                       tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    nodes = [Node("node-a", (cpus[0],)), Node("node-b", (cpus[-1],))]
    grain_port, http_port, liveness = free_port(), free_port(), free_port()
    spec = {
        "image": image,
        # The pods share the host's network here: the ports must be free ones.
        "executor": {"port": grain_port, "httpPort": http_port},
        "workers": {"cpus": 1, "memory": "1Gi", "exclusiveCpus": True, "drainTimeoutSeconds": 1},
        "scheduler": {"retries": 1},
        # TLS off: `cluster=` does not yet use the CA and server name discovery returns (see
        # test_discovery_with_tls below); the pods' own TLS is the default everywhere else.
        "auth": {"tls": {"enabled": False}},
    }
    with KMock(namespaces=(NS,)) as api, Containers(engine, image) as box:
        service_host = f"demo-executor.{NS}.svc"
        operator = run_operator(box, api, tmp_path, NS, liveness=liveness,
                                extra=["--add-host", f"{service_host}:127.0.0.1"])
        wait_for(lambda: http_ok(f"http://127.0.0.1:{liveness}/healthz") or not operator.running(),
                 60, "the operator's liveness endpoint")
        assert operator.running(), operator.logs()
        api.km.forward_to = grain_port  # the API server's port-forward reaches the pod's port
        api.create(GRC, NS, graincluster(spec=spec))
        wait_for(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker"),
                 30, "the operator to render the workloads")

        with Kubelet(api, box, NS, tmp_path / "pods", nodes=nodes,
                     control_plane=Node("control-plane", tuple(cpus)), grace_cap=3) as kubelet:
            def running() -> bool:
                kubelet.check()
                return phase(api) == "Running"
            wait_for(running, 90, "the GrainCluster to be Running on the stand-in kubelet")
            workers = wait_for(lambda: len(registered(http_port)) == 2 and registered(http_port), 30,
                               "both workers to register")
            for node in nodes:
                # --memory from the pod's 1Gi less the worker's overhead, --cores auto = its cpuset
                assert workers[node.name]["cpuset"] == list(node.cpus), workers
                assert workers[node.name]["memory_total_gb"] == 0.75, workers

            # WAITS FOR CORE: without per-user tokens the executor knows the workers' token only
            per_user = "--client-tokens" in kubelet._supported(image, "executor")
            worker_token = base64.b64decode(api.get(SECRETS, NS, "demo-worker-token")["data"]["token"]).decode()  # type: ignore[index]
            token = None if per_user else worker_token

            results = run_probe(tmp_path, api, token, 6)
            assert api.km.forwards, "the client did not come through the API's port-forward"
            check_jobs(results, nodes, memory_limit=GiB)

            # A spec change rolls both workloads: the executor's args and the workers' memory.
            first = {p.name for p in kubelet.pods.values()}
            api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
                "workers": {"memory": "768Mi"}, "scheduler": {"retries": 2}}})

            def rolled() -> bool:
                kubelet.check()
                dep, ds = api.get(DEPLOYMENTS, NS, "demo-executor"), api.get(DAEMONSETS, NS, "demo-worker")
                want = {"Deployment": template_hash(dep["spec"]["template"]),  # type: ignore[index]
                        "DaemonSet": template_hash(ds["spec"]["template"])}  # type: ignore[index]
                pods = list(kubelet.pods.values())
                return (len(pods) == 3 and all(p.ready and p.template_hash == want[p.kind] for p in pods)
                        and not first & {p.name for p in pods})
            wait_for(rolled, 120, "every pod to be replaced by a ready one of the new templates")
            gone = {c.cid for p in kubelet.stopped for c in p.containers}
            alive = set(engine.run("ps", "-q", "--no-trunc").stdout.split())
            assert gone and not gone & alive, "replaced pods' containers still run"
            workers = wait_for(lambda: len(registered(http_port)) == 2 and registered(http_port), 60,
                               "both new workers to register with the new executor")
            assert {w["memory_total_gb"] for w in workers.values()} == {0.5}, workers  # 768Mi - 256Mi
            results = run_probe(tmp_path, api, token, 4)
            check_jobs(results, nodes, memory_limit=768 * 1024 ** 2)

            # Deleting the GrainCluster deletes the workloads; the kubelet stops their pods.
            api.delete(GRC, NS, "demo")
            wait_for(lambda: not kubelet.pods and not api_list(api, "v1/pods", NS), 60,
                     "every pod to be stopped")


def check_jobs(results: list[dict[str, Any]], nodes: list[Node], memory_limit: int) -> None:
    """Each job pinned to one CPU of a node, as the image's user, with the pod's hardening."""
    node_cpus = {c for n in nodes for c in n.cpus}
    assert [r["index"] for r in results] == list(range(len(results)))
    for r in results:
        assert len(r["cpus"]) == 1 and r["cpus"][0] in node_cpus, r
        assert (r["uid"], r["gid"]) == (10001, 10001), r
        assert r["writable"] == {"/tmp": True, "/opt/grain": False, "/": False}, r
        assert int(r["cap_eff"], 16) == 0 and r["no_new_privs"] == "1", r
        assert r["memory_limit"] is None or int(r["memory_limit"]) == memory_limit, r
    if len(node_cpus) > 1:
        assert {r["cpus"][0] for r in results} == node_cpus, "both nodes ran jobs"
