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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from container_harness import Containers, Engine, free_port, http_json, http_ok, wait_until
from kmock_harness import DAEMONSETS, DEPLOYMENTS, GRC, NS, SECRETS, KMock, graincluster
from kubelet import Kubelet, Node, api_list, run_operator, template_hash

pytestmark = pytest.mark.timeout(900)  # the first test of the tier to run builds the image

HERE = Path(__file__).resolve().parent
GiB = 1024 ** 3


def phase(api: KMock) -> str | None:
    return ((api.get(GRC, NS, "demo") or {}).get("status") or {}).get("phase")


def registered(http_port: int) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in http_json(f"http://127.0.0.1:{http_port}/status")["workers"]}


class ClientFailed(Exception):
    """The user's program exited with an error (its stderr is the message)."""


def run_probe(tmp_path: Path, cluster: Cluster, count: int) -> list[dict[str, Any]]:
    """The user's program, connecting with ``cluster="demo"`` through the emulator."""
    argv = [sys.executable, str(HERE / "probe_client.py"), str(count), "--cluster", "demo",
            "--namespace", NS, "--kubeconfig",
            cluster.api.kubeconfig(tmp_path / "user-kubeconfig", NS)]
    if cluster.token is not None:
        (tmp_path / "token").write_text(cluster.token)
        argv += ["--token-file", str(tmp_path / "token")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=cluster.env)
    if out.returncode != 0:
        raise ClientFailed(out.stderr[-4000:])
    return list(json.loads(out.stdout.splitlines()[-1]))


@dataclass
class Cluster:
    """A GrainCluster running on the stand-in kubelet."""

    api: KMock
    kubelet: Kubelet
    nodes: list[Node]
    grain_port: int
    http_port: int
    token: str | None  # what the client presents (None: discovery reads the user's Secret)
    env: dict[str, str]  # for user programs: the Grain of the image's snapshot


@contextmanager
def running_cluster(engine: Engine, image: str, client_env: dict[str, str], tmp_path: Path,
                    spec: dict[str, Any]) -> Iterator[Cluster]:
    """The operator (a container) and the kubelet stand-in, a GrainCluster with ``spec`` on
    two one-CPU nodes, Running with both workers registered."""
    cpus = sorted(os.sched_getaffinity(0))
    nodes = [Node("node-a", (cpus[0],)), Node("node-b", (cpus[-1],))]
    grain_port, http_port, liveness = free_port(), free_port(), free_port()
    # The pods share the host's network here: their ports must be free ones.
    spec = {**spec, "image": image, "executor": {"port": grain_port, "httpPort": http_port}}
    with KMock(namespaces=(NS,)) as api, Containers(engine, image) as box:
        operator = run_operator(box, api, tmp_path, NS, liveness=liveness,
                                extra=["--add-host", f"demo-executor.{NS}.svc:127.0.0.1"])
        wait_until(lambda: http_ok(f"http://127.0.0.1:{liveness}/healthz") or not operator.running(),
                 60, "the operator's liveness endpoint")
        assert operator.running(), operator.logs()
        api.km.forward_to = grain_port  # the API server's port-forward reaches the pod's port
        api.create(GRC, NS, graincluster(spec=spec))
        wait_until(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker"),
                 30, "the operator to render the workloads")
        with Kubelet(api, box, NS, tmp_path / "pods", nodes=nodes,
                     control_plane=Node("control-plane", tuple(cpus))) as kubelet:
            def running() -> bool:
                kubelet.check()
                return phase(api) == "Running"
            wait_until(running, 90, "the GrainCluster to be Running on the stand-in kubelet")
            wait_until(lambda: len(registered(http_port)) == 2, 30, "both workers to register")
            # WAITS FOR CORE: without per-user tokens the executor knows the workers' token only
            per_user = "--client-tokens" in kubelet._supported(image, "executor")
            secret = api.get(SECRETS, NS, "demo-worker-token")
            assert secret is not None
            token = None if per_user else base64.b64decode(secret["data"]["token"]).decode()
            yield Cluster(api, kubelet, nodes, grain_port, http_port, token, client_env)


def test_rendered_workloads_run_as_containers_and_roll(engine: Engine, image: str,
                                                       client_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    spec = {
        "workers": {"cpus": 1, "memory": "1Gi", "exclusiveCpus": True, "drainTimeoutSeconds": 1},
        "scheduler": {"retries": 1},
        # TLS off: `cluster=` does not yet use the CA and server name discovery returns (see
        # test_discovery_reaches_a_tls_cluster); test_tls_between_pods runs TLS pod to pod.
        "auth": {"tls": {"enabled": False}},
    }
    with running_cluster(engine, image, client_env, tmp_path, spec) as cluster:
        api, kubelet, nodes, http_port = cluster.api, cluster.kubelet, cluster.nodes, cluster.http_port
        workers = registered(http_port)
        for node in nodes:
            # --memory from the pod's 1Gi less the worker's overhead, --cores auto = its cpuset
            assert workers[node.name]["cpuset"] == list(node.cpus), workers
            assert workers[node.name]["memory_total_gb"] == 0.75, workers

        results = run_probe(tmp_path, cluster, 6)
        assert api.km.forwards, "the client did not come through the API's port-forward"
        check_jobs(results, nodes, memory_limit=GiB)

        # A spec change rolls both workloads: the executor's args and the workers' memory.
        first = {p.name for p in kubelet.snapshot()[0]}
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
            "workers": {"memory": "768Mi"}, "scheduler": {"retries": 2}}})

        def rolled() -> bool:
            kubelet.check()
            dep, ds = api.get(DEPLOYMENTS, NS, "demo-executor"), api.get(DAEMONSETS, NS, "demo-worker")
            assert dep is not None and ds is not None
            want = {"Deployment": template_hash(dep["spec"]["template"]),
                    "DaemonSet": template_hash(ds["spec"]["template"])}
            pods = kubelet.snapshot()[0]
            return (len(pods) == 3 and all(p.ready and p.template_hash == want[p.kind] for p in pods)
                    and not first & {p.name for p in pods})
        wait_until(rolled, 120, "every pod to be replaced by a ready one of the new templates")
        gone = {c.cid for p in kubelet.snapshot()[1] for c in p.containers}
        alive = set(engine.run("ps", "-q", "--no-trunc").stdout.split())
        assert gone and not gone & alive, "replaced pods' containers still run"
        workers = wait_until(lambda: len(registered(http_port)) == 2 and registered(http_port), 60,
                           "both new workers to register with the new executor")
        assert {w["memory_total_gb"] for w in workers.values()} == {0.5}, workers  # 768Mi - 256Mi
        check_jobs(run_probe(tmp_path, cluster, 4), nodes, memory_limit=768 * 1024 ** 2)

        # Deleting the GrainCluster deletes the workloads; the kubelet stops their pods.
        api.delete(GRC, NS, "demo")
        wait_until(lambda: not kubelet.snapshot()[0] and not api_list(api, "v1/pods", NS), 60,
                 "every pod to be stopped")


def test_tls_between_pods(engine: Engine, image: str, client_env: dict[str, str],
                          tmp_path: Path) -> None:
    """The default: TLS. The workers dial the Service's name and verify the executor's
    certificate with the CA from their mounted Secret; a client that dials the same name with
    the user's CA runs jobs."""
    spec = {"workers": {"memory": "1Gi", "drainTimeoutSeconds": 1}}
    with running_cluster(engine, image, client_env, tmp_path, spec) as cluster:
        ds = cluster.api.get(DAEMONSETS, NS, "demo-worker")
        assert ds is not None and "--tls-ca" in ds["spec"]["template"]["spec"]["containers"][0]["args"]
        user = cluster.api.get(SECRETS, NS, "demo-token")
        assert user is not None
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(user["data"]["ca.crt"]))
        token = tmp_path / "client-token"
        token.write_text(cluster.token or base64.b64decode(user["data"]["token"]).decode())
        # This process plays a pod of the cluster: the Service's name resolves to loopback.
        out = subprocess.run(
            [sys.executable, "-c", RESOLVE_SERVICE, str(HERE / "probe_client.py"), "4", "--address",
             f"grain://demo-executor.{NS}.svc:{cluster.grain_port}", "--token-file", str(token),
             "--tls-ca", str(ca)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env=cluster.env)
        assert out.returncode == 0, out.stderr[-4000:]
        check_jobs(json.loads(out.stdout.splitlines()[-1]), cluster.nodes, memory_limit=GiB)
        # and a plain-TCP client is refused: the grain port speaks TLS only
        with pytest.raises(ClientFailed):
            subprocess_probe_plain(tmp_path, cluster)


def subprocess_probe_plain(tmp_path: Path, cluster: Cluster) -> None:
    token = tmp_path / "client-token"
    out = subprocess.run([sys.executable, str(HERE / "probe_client.py"), "1", "--address",
                          f"grain://127.0.0.1:{cluster.grain_port}", "--token-file", str(token)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cluster.env)
    if out.returncode != 0:
        raise ClientFailed(out.stderr[-2000:])


def test_discovery_reaches_a_tls_cluster(engine: Engine, image: str, client_env: dict[str, str],
                                         tmp_path: Path) -> None:
    """TLS on (the default): the user's program finds the cluster through ``cluster=``, trusts
    the CA from its Secret and verifies the executor Service's name through the port-forward."""
    spec = {"workers": {"memory": "1Gi", "drainTimeoutSeconds": 1}}
    with running_cluster(engine, image, client_env, tmp_path, spec) as cluster:
        check_jobs(run_probe(tmp_path, cluster, 2), cluster.nodes,
                   memory_limit=GiB)


#: ``python -c RESOLVE_SERVICE SCRIPT ARGS...``: run SCRIPT with the cluster's Service names
#: resolving to loopback, as they do inside a pod here.
RESOLVE_SERVICE = """
import runpy, socket, sys
real = socket.getaddrinfo
def resolve(host, *a, **k):
    return real("127.0.0.1" if str(host).endswith(".svc") else host, *a, **k)
socket.getaddrinfo = resolve
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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
