"""The operator itself, run from the project image (``python -m grain_operator``, as the chart's
Deployment runs it) as a hardened container against the KMock Kubernetes API emulator.

KMock listens on the host's loopback; the container shares the host's network. The test
plays the Deployment and DaemonSet controllers (KMock runs none) and stands in for the
executor's /status. What is checked is the operator's whole life in its container: liveness,
a GrainCluster reconciled into owned children and a status, its deletion (the finalizer
released), and a prompt, clean exit on SIGTERM as the pod's PID 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from container_harness import Containers, Engine, free_port, http_ok, wait_until
from kmock_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    SECRETS,
    SERVICES,
    KMock,
    StatusServer,
    graincluster,
    sample_status,
)
from kubelet import run_operator

pytestmark = pytest.mark.timeout(900)  # the first test of the tier to run builds the image


def play_controllers(api: KMock, name: str = "demo") -> None:
    """What the Deployment and DaemonSet controllers would write."""
    api.patch(DEPLOYMENTS, NS, f"{name}-executor", {"status": {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}, sub="status")
    api.patch(DAEMONSETS, NS, f"{name}-worker", {"status": {
        "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 2}}, sub="status")


def test_operator_image_reconciles_and_stops(engine: Engine, image: str, tmp_path: Path) -> None:
    children = [(DEPLOYMENTS, "demo-executor"), (SERVICES, "demo-executor"),
                (DAEMONSETS, "demo-worker"), (SECRETS, "demo-token")]
    liveness = free_port()
    with KMock(namespaces=(NS,)) as api, StatusServer(sample_status()) as status_server, \
            Containers(engine, image) as box:
        operator = run_operator(box, api, tmp_path, NS, liveness=liveness,
                                # kopf's debug log: what it patched, if the deletion stalls
                                args=["--status-url", status_server.url, "--verbose"])
        wait_until(lambda: http_ok(f"http://127.0.0.1:{liveness}/healthz") or not operator.running(),
                 60, "the operator's liveness endpoint")
        assert operator.running(), operator.logs()

        api.create(GRC, NS, graincluster(spec={"image": image, "workers": {"memory": "1Gi"}}))
        wait_until(lambda: all(api.get(res, NS, name) for res, name in children), 30,
                 "the operator in its container to create the children")
        for res, name in children:
            child = api.get(res, NS, name)
            assert child is not None, (res, name)
            refs = child["metadata"]["ownerReferences"]
            assert [(r["kind"], r["name"], r.get("controller")) for r in refs] == [
                ("GrainCluster", "demo", True)], (res, name, refs)
        deployment = api.get(DEPLOYMENTS, NS, "demo-executor")
        assert deployment is not None
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image

        play_controllers(api)
        wait_until(lambda: (api.get(GRC, NS, "demo") or {}).get("status", {}).get("phase") == "Running",
                 30, "the GrainCluster to be reported Running")
        assert status_server.hits > 0  # it read the executor's /status from inside the container
        grc = api.get(GRC, NS, "demo")
        assert grc is not None and "grain.dev/finalizer" in grc["metadata"]["finalizers"]

        api.delete(GRC, NS, "demo")
        try:
            wait_until(lambda: api.get(GRC, NS, "demo") is None, 30,
                       "the finalizer to be released and the GrainCluster to go")
        except AssertionError as e:
            left = (api.get(GRC, NS, "demo") or {}).get("metadata")
            raise AssertionError(f"{e}; its metadata now: {left}\n{operator.logs()[-20000:]}") from None
        wait_until(lambda: not any(api.get(res, NS, name) for res, name in children), 30,
                 "the children to be deleted")

        # SIGTERM to PID 1 (docker stop, as the kubelet does): kopf stops at once and cleanly.
        began = time.monotonic()
        engine.run("stop", "--time", "30", operator.cid, timeout=60)
        took = time.monotonic() - began
        state = operator.state()
        assert state["ExitCode"] == 0, operator.logs()[-3000:]
        assert took < 15, f"the operator took {took:.1f}s to stop on SIGTERM"
        assert "Traceback" not in operator.logs(), operator.logs()[-3000:]
