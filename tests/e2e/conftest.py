"""kind end-to-end fixtures: skip unless Docker, kind, kubectl, helm and the cluster exist.

With GRAIN_E2E_REQUIRED=1 (the e2e workflow) a missing piece is an error, not a skip.
tests/e2e/kind_up.sh (or the e2e workflow) creates the kind cluster and loads the image;
the `grain_cluster` fixture installs the chart with `helm --wait`, the operator watching the
test's namespace only (the chart's least-privilege default: `operator.watchNamespaces`),
applies a GrainCluster (TLS on, the default) and waits for one ready worker per schedulable
node. Clients on the runner reach it as a user would, through `cluster=` discovery with the
kind cluster's kubeconfig (`kubeconfig_file`): the GrainCluster's status, the user's Secret
(token and CA), a port-forward to the executor pod, the executor Service's name verified. On
a failure the cluster's state and logs (tests/e2e/dump.sh) are added to the test report.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("GRAIN_E2E_CLUSTER", "grain-e2e")
VARIANT = os.environ.get("GRAIN_E2E_VARIANT", "default")
IMAGE = os.environ.get("GRAIN_E2E_IMAGE", "grain:e2e")
NAMESPACE = "grain-e2e"
SYSTEM = "grain-system"
NAME = "demo"
CLIENT_LABEL = {"grain.dev/client": NAME}   # what the executor's NetworkPolicy lets in
USER_SECRET = f"{NAME}-token"              # the user `default`'s Secret: token and ca.crt
DRAIN_SECONDS = 30
WORKERS = {
    "default": {},
    "static-cpu": {"cpus": 2, "memory": "1Gi", "exclusiveCpus": True},
}


def _ok(*cmd: str, timeout: float = 20) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def missing() -> str | None:
    """Why the kind e2e cannot run here, or None when it can."""
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"no `{tool}` binary on PATH (the kind e2e runs in .github/workflows/e2e.yml)"
    if not _ok("docker", "info"):
        return "`docker info` fails: no Docker engine reachable"
    clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout
    if CLUSTER not in clusters.split():
        return f"no kind cluster {CLUSTER!r}: run tests/e2e/kind_up.sh first"
    if not _ok("kubectl", "--context", f"kind-{CLUSTER}", "get", "nodes"):
        return f"kind cluster {CLUSTER!r} does not answer kubectl"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if Path(str(item.fspath)).parent == Path(__file__).parent]
    for item in e2e:
        item.add_marker(pytest.mark.e2e)
    reason = missing() if e2e else None
    if reason and os.environ.get("GRAIN_E2E_REQUIRED"):
        raise pytest.UsageError(f"GRAIN_E2E_REQUIRED is set but the kind e2e cannot run: {reason}")
    if reason:
        for item in e2e:
            item.add_marker(pytest.mark.skip(reason=f"kind e2e skipped: {reason}"))


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """Run kubectl against the kind cluster; its stdout."""
    cmd = ["kubectl", "--context", f"kind-{CLUSTER}", *args]
    done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def schedulable_nodes() -> list[str]:
    """Nodes a worker DaemonSet without tolerations lands on (no NoSchedule taints)."""
    nodes = kubectl_json("get", "nodes")["items"]
    return [
        n["metadata"]["name"]
        for n in nodes
        if not any(
            t.get("effect") in ("NoSchedule", "NoExecute") for t in n["spec"].get("taints", [])
        )
    ]


def roll_env(generation: int) -> list[dict[str, str]]:
    """An env var of both pod templates: changing it rolls the executor and the workers (and
    jobs see which generation of worker pod ran them)."""
    return [{"name": "SWEEP_ROLL", "value": str(generation)}]


def graincluster_manifest() -> str:
    workers = {**WORKERS[VARIANT], "drainTimeoutSeconds": DRAIN_SECONDS, "env": roll_env(1)}
    spec = {"image": IMAGE, "imagePullPolicy": "Never", "executor": {"env": roll_env(1)},
            "workers": workers}
    obj = {
        "apiVersion": "grain.dev/v1",
        "kind": "GrainCluster",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }
    return json.dumps(obj)


@pytest.fixture(scope="session")
def grain_cluster() -> dict[str, Any]:
    """The chart installed, GrainCluster `demo` Running with one ready worker per node."""
    repo, tag = IMAGE.rsplit(":", 1)
    kubectl("create", "namespace", NAMESPACE, check=False)  # the chart's Role goes there
    subprocess.run(
        [
            "helm",
            "upgrade",
            "--install",
            "grain",
            str(ROOT / "charts" / "grain"),
            "--kube-context",
            f"kind-{CLUSTER}",
            "--namespace",
            SYSTEM,
            "--create-namespace",
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "operator.verbose=true",
            "--set",  # namespaced (the default RBAC): the operator watches the test's namespace
            f"operator.watchNamespaces={{{NAMESPACE}}}",
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        timeout=360,
    )
    kubectl("apply", "-f", "-", input=graincluster_manifest())
    nodes = schedulable_nodes()

    def ready() -> dict[str, Any] | None:
        grc = kubectl_json("-n", NAMESPACE, "get", "graincluster", NAME)
        ds = (
            kubectl_json("-n", NAMESPACE, "get", "daemonset", f"{NAME}-worker")
            if grc.get("status")
            else {}
        )
        ds_ready = (ds.get("status") or {}).get("numberReady", 0)
        phase = (grc.get("status") or {}).get("phase")
        return grc if phase == "Running" and ds_ready == len(nodes) else None

    grc = wait_until(ready, 420, f"GrainCluster {NAME} Running with {len(nodes)} ready workers",
                     interval=3)
    return {"object": grc, "nodes": nodes}


@pytest.fixture(scope="session")
def kubeconfig_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The kind cluster's kubeconfig (its admin: what a user's kubeconfig would be, with more
    rights), for clients that find the cluster through `cluster=` discovery."""
    path = tmp_path_factory.mktemp("kube") / "config"
    out = subprocess.run(["kind", "get", "kubeconfig", "--name", CLUSTER], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    path.write_text(out)
    path.chmod(0o600)
    return str(path)


def executor_status(kubeconfig: str) -> dict[str, Any]:
    """The executor's status document, fetched as `grain status --cluster` does: discovery,
    the port-forward, TLS verifying the executor Service's name. (Not through the API server's
    service proxy: the executor's NetworkPolicy lets only the operator reach its http port.)"""
    from functools import partial

    import trio

    from grain.cli.status import fetch_over_grain
    from grain.client.discovery import open_cluster

    with open_cluster(NAME, NAMESPACE, kubeconfig=kubeconfig) as conn:
        assert conn.tls and conn.server_hostname == f"{NAME}-executor.{NAMESPACE}.svc", conn
        return trio.run(partial(fetch_over_grain, conn.address, conn.token, conn.ca_file,
                                server_hostname=conn.server_hostname))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and missing() is None
        and Path(str(item.fspath)).parent == Path(__file__).parent
    ):
        env = {**os.environ, "GRAIN_E2E_NAMESPACE": NAMESPACE}
        dump = subprocess.run(
            ["bash", str(Path(__file__).parent / "dump.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        report.sections.append(("kind cluster state and logs", dump.stdout[-200_000:]))
