"""The real kopf operator against KMock: create, resume, update that rolls, status, bad spec, delete.

KMock runs no controllers, so the test plays them where needed (Deployment and DaemonSet
status, executor Pods). KMock assigns no uid/generation/resourceVersion: the test sets them.
Never exact call counts (kopf may run a handler more than once here), and never a sleep as
synchronisation: "nothing more happens" is checked over reconcile passes the operator is
seen to make (``passes``), not over a wall-clock pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from kmock_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NETPOLS,
    NS,
    PODS,
    SECRETS,
    SERVICES,
    free_port,
    graincluster,
    sample_status,
    wait_until,
)
from process_tools import wait_http

from grain_operator import render

pytestmark = pytest.mark.timeout(120)

CHILDREN = [(DEPLOYMENTS, "{}-executor"), (SERVICES, "{}-executor"), (DAEMONSETS, "{}-worker"),
            (NETPOLS, "{}-executor"), (NETPOLS, "{}-worker"), (SECRETS, "{}-token"), (SECRETS, "{}-worker-token"),
            (SECRETS, "{}-client-tokens"), (SECRETS, "{}-tls")]


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return None


def grc(api: Any, name: str = "demo", ns: str = NS) -> dict[str, Any]:
    obj = api.get(GRC, ns, name)
    assert obj is not None, f"GrainCluster {ns}/{name} is gone"
    return obj


def play_controllers(api: Any, name: str = "demo", ns: str = NS, nodes: int = 2) -> None:
    """What the Deployment and DaemonSet controllers would write."""
    api.patch(DEPLOYMENTS, ns, f"{name}-executor", {"status": {"replicas": 1, "readyReplicas": 1,
                                                              "availableReplicas": 1}}, sub="status")
    api.patch(DAEMONSETS, ns, f"{name}-worker", {"status": {"desiredNumberScheduled": nodes,
                                                           "currentNumberScheduled": nodes,
                                                           "numberReady": nodes}}, sub="status")


def children_present(api: Any, name: str = "demo", ns: str = NS) -> bool:
    return all(api.get(res, ns, n.format(name)) for res, n in CHILDREN)


def pod_template(obj: dict[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return obj["spec"]["template"]


def writes_to(api: Any, path_part: str, user_agent: str = "") -> int:
    return sum(1 for r in api.operator_requests() if str(r.method).split(".")[-1] in ("POST", "PATCH", "PUT", "DELETE")
               and path_part in str(r.url.path) and str(r.headers.get("User-Agent", "")).startswith(user_agent))


def child_writes(api: Any) -> int:
    """Writes by the operator's own client to the children (never kopf's to the GrainCluster)."""
    return writes_to(api, "/namespaces/science/", user_agent="grain-operator")


def passes(api: Any, name: str = "demo") -> int:
    """Reconcile passes seen so far: each one reads the executor Deployment (to apply, then to observe)."""
    return sum(1 for r in api.operator_requests() if str(r.method).endswith("GET")
               and str(r.url.path).endswith(f"/deployments/{name}-executor"))


def quiet(api: Any, count: Callable[[], int], name: str = "demo", timeout: float = 20.0) -> int:
    """Wait until ``count()`` stays the same over three reconcile passes; return it."""
    def still() -> int | None:
        before, start = count(), passes(api, name)
        wait_until(lambda: passes(api, name) >= start + 6, timeout, "three more reconcile passes")
        return before if count() == before else None
    return int(wait_until(lambda: still() is not None and count(), timeout * 2, "the writes to stop") or 0)


def test_create_makes_owned_children_and_reports_status(api: Any, run_operator: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="kopf")
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "workers": {"cpus": 2, "memory": "4Gi"}}))
        wait_until(lambda: children_present(api), 15, "the children")
        for res, name in CHILDREN:
            refs = api.get(res, NS, name.format("demo"))["metadata"]["ownerReferences"]
            assert refs == [{"apiVersion": "grain.dev/v1", "kind": "GrainCluster", "name": "demo", "uid": "uid-demo",
                             "controller": True, "blockOwnerDeletion": True}], (res, name, refs)

        # the executor is not ready: Pending, and the handler comes back later (TemporaryError)
        wait_until(lambda: (grc(api).get("status") or {}).get("phase") == "Pending", 10, "phase Pending")
        wait_until(lambda: "executor not ready yet" in grc(api)["metadata"].get("annotations", {})
                 .get("grain.dev/reconcile-create", ""), 10, "the create handler to be delayed")
        assert cond(grc(api), "ExecutorReady")["reason"] == "DeploymentNotReady"
        assert "grain.dev/finalizer" in grc(api)["metadata"]["finalizers"]

        play_controllers(api)
        wait_until(lambda: grc(api)["status"]["phase"] == "Running", 15, "phase Running")
        wait_until(lambda: any("reconcile-create' succeeded" in r.getMessage() for r in caplog.records), 15,
                 "the create handler to succeed once the executor is ready")
        st = grc(api)["status"]
        assert st["endpoints"]["inCluster"] == "grain://demo-executor.science.svc:4242"
        assert st["endpoints"]["tlsServerName"] == "demo-executor.science.svc"
        assert st["endpoints"]["dashboard"].startswith("kubectl -n science port-forward svc/demo-executor 8080")
        assert st["tokenSecret"] == "demo-token"
        assert st["users"][0]["name"] == "default" and st["users"][0]["secretName"] == "demo-token"
        assert st["workers"]["summary"] == "2/2" and st["cores"]["summary"] == "4/8" and st["queueLength"] == 3
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "SpecValid": "True", "CredentialsReady": "True", "ExecutorReady": "True", "WorkersReady": "True",
            "Degraded": "False"}
        assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in st["conditions"])

        # steady state: the children are not written again over several timer passes
        before = quiet(api, lambda: child_writes(api))
        start = passes(api)
        wait_until(lambda: passes(api) >= start + 6, 15, "three more timer passes")
        assert child_writes(api) == before


def test_update_rolls_the_executor_and_the_workers(api: Any, run_operator: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1"}))
        wait_until(lambda: children_present(api), 15, "the children")
        play_controllers(api)
        dep0, ds0 = api.get(DEPLOYMENTS, NS, "demo-executor"), api.get(DAEMONSETS, NS, "demo-worker")
        dep_hash0 = pod_template(dep0)["metadata"]["annotations"][render.TEMPLATE_HASH]
        ds_hash0 = pod_template(ds0)["metadata"]["annotations"][render.TEMPLATE_HASH]
        assert pod_template(ds0)["spec"]["terminationGracePeriodSeconds"] == 60 + render.DRAIN_MARGIN_SECONDS

        # a spec change of the kind a lab makes mid-sweep: drain and grace times
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
            "workers": {"drainTimeoutSeconds": 300}, "scheduler": {"clientGraceSeconds": 900}}})

        def rolled() -> bool:
            dep, ds = pod_template(api.get(DEPLOYMENTS, NS, "demo-executor")), pod_template(api.get(DAEMONSETS, NS, "demo-worker"))
            return (dep["metadata"]["annotations"][render.TEMPLATE_HASH] != dep_hash0
                    and ds["metadata"]["annotations"][render.TEMPLATE_HASH] != ds_hash0)
        wait_until(rolled, 15, "both pod templates to change")
        ds = pod_template(api.get(DAEMONSETS, NS, "demo-worker"))
        assert ds["spec"]["terminationGracePeriodSeconds"] == 300 + render.DRAIN_MARGIN_SECONDS
        args = ds["spec"]["containers"][0]["args"]
        assert args[args.index("--drain-timeout") + 1] == "300"
        ex_args = pod_template(api.get(DEPLOYMENTS, NS, "demo-executor"))["spec"]["containers"][0]["args"]
        assert ex_args[ex_args.index("--client-grace") + 1] == "900"
        wait_until(lambda: grc(api)["status"]["observedGeneration"] == 2, 10, "observedGeneration 2")

        # an env var added, then dropped: removed (server-side apply), not left behind
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 3}, "spec": {"workers": {"env": [{"name": "X", "value": "1"}]}}})
        wait_until(lambda: {"name": "X", "value": "1"} in pod_template(api.get(DAEMONSETS, NS, "demo-worker"))
                 ["spec"]["containers"][0].get("env", []), 15, "X to be added")
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 4}, "spec": {"workers": {"env": []}}})
        wait_until(lambda: all(e["name"] != "X" for e in pod_template(api.get(DAEMONSETS, NS, "demo-worker"))
                             ["spec"]["containers"][0]["env"]), 15, "X to be removed")


def test_drift_is_undone_by_the_timer(api: Any, run_operator: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1"}))
        wait_until(lambda: children_present(api), 15, "the children")
        good = api.get(DAEMONSETS, NS, "demo-worker")["spec"]["template"]["spec"]["containers"]
        api.patch(DAEMONSETS, NS, "demo-worker", {"spec": {"template": {"spec": {"containers": [
            {**good[0], "image": "evil:1", "args": ["--oops"]}]}}}})
        api.delete(SERVICES, NS, "demo-executor")
        api.delete(NETPOLS, NS, "demo-executor")
        wait_until(lambda: api.get(DAEMONSETS, NS, "demo-worker")["spec"]["template"]["spec"]["containers"][0]["image"]
                 == "grain:1", 10, "the DaemonSet to be repaired")
        wait_until(lambda: api.get(SERVICES, NS, "demo-executor") and api.get(NETPOLS, NS, "demo-executor"), 10,
                 "the Service and the NetworkPolicy to be recreated")
        assert api.get(DAEMONSETS, NS, "demo-worker")["spec"]["template"]["spec"]["containers"][0]["args"] == good[0]["args"]


def test_resume_after_restart_reconciles(api: Any, run_operator: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1"}))
        wait_until(lambda: children_present(api), 15, "the children")
        play_controllers(api)
        wait_until(lambda: grc(api)["status"]["phase"] == "Running", 15, "phase Running")
        secrets = {n: api.get(SECRETS, NS, n)["data"] for n in ("demo-token", "demo-worker-token", "demo-tls")}
    # while the operator is away: a child is lost and the spec changes
    api.delete(DAEMONSETS, NS, "demo-worker")
    api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {"image": "grain:3"}})
    with run_operator():
        wait_until(lambda: api.get(DAEMONSETS, NS, "demo-worker"), 15, "the DaemonSet to be recreated")
        wait_until(lambda: pod_template(api.get(DEPLOYMENTS, NS, "demo-executor"))["spec"]["containers"][0]["image"]
                 == "grain:3", 15, "the new image")
        for name, data in secrets.items():  # tokens and certificates survive restarts
            assert api.get(SECRETS, NS, name)["data"] == data, name
        wait_until(lambda: grc(api)["status"]["observedGeneration"] == 2, 10, "observedGeneration 2")


def test_bad_spec_gets_a_condition_and_no_retry_loop(api: Any, run_operator: Any, caplog: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "workers": {"cpus": 2, "reserveCores": 2}}))
        wait_until(lambda: cond(api.get(GRC, NS, "demo"), "SpecValid"), 10, "the SpecValid condition")
        c = cond(grc(api), "SpecValid")
        assert c["status"] == "False" and c["reason"] == "InvalidSpec"
        assert "spec.workers.reserveCores" in c["message"] and c["observedGeneration"] == 1
        assert grc(api)["status"]["phase"] == "Failed"
        # the handling cycle is over (permanent failure): kopf keeps no progress to retry with
        wait_until(lambda: "grain.dev/last-handled-configuration" in grc(api)["metadata"].get("annotations", {}),
                 10, "the handling cycle to end")
        assert "grain.dev/reconcile-create" not in grc(api)["metadata"]["annotations"]
        assert any("reconcile-create" in r.getMessage() and "failed permanently" in r.getMessage()
                   and "spec.workers.reserveCores" in r.getMessage() for r in caplog.records)
        # no retry loop: once settled (KMock may replay a few stale events), nothing more is
        # written while the timer keeps passing
        before = quiet(api, lambda: writes_to(api, "/grainclusters/demo"))
        start = passes(api)
        wait_until(lambda: passes(api) >= start + 4, 15, "more timer passes")
        assert writes_to(api, "/grainclusters/demo") == before
        assert api.get(DEPLOYMENTS, NS, "demo-executor") is None and api.get(DAEMONSETS, NS, "demo-worker") is None

        # fixing the spec makes it converge
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {"workers": {"reserveCores": 1}}})
        wait_until(lambda: children_present(api), 15, "the children after the fix")
        wait_until(lambda: cond(grc(api), "SpecValid")["status"] == "True", 10, "SpecValid True")

        # breaking it again leaves the children running, and the status still reports them
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 3}, "spec": {"executor": {"httpPort": 4242}}})
        wait_until(lambda: grc(api)["status"]["phase"] == "Failed", 10, "phase Failed")
        assert "spec.executor.httpPort" in cond(grc(api), "SpecValid")["message"]
        assert cond(grc(api), "ExecutorReady")["reason"] == "DeploymentNotReady"  # observed, not "NotCreated"
        assert children_present(api)


def test_delete_removes_children_and_releases_the_finalizer(api: Any, run_operator: Any) -> None:
    mine = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": NS,
                                                               "labels": {"grain.dev/cluster": "b"}},
            "data": {"token": "dXNlcnMtb3duLXRva2Vu"}}
    api.create(SECRETS, NS, mine)
    with run_operator():
        api.create(GRC, NS, graincluster("a", spec={"image": "grain:1"}))
        api.create(GRC, NS, graincluster("b", spec={"image": "grain:1", "auth": {"tokenSecret": "mine"}}))
        wait_until(lambda: children_present(api, "a"), 15, "a's children")
        wait_until(lambda: api.get(DAEMONSETS, NS, "b-worker"), 15, "b's children")
        wait_until(lambda: "grain.dev/finalizer" in grc(api, "b")["metadata"].get("finalizers", []), 10, "finalizer")
        api.delete(GRC, NS, "b")
        wait_until(lambda: api.get(GRC, NS, "b") is None, 30, "b to be gone")
        for res, name in CHILDREN:
            assert api.get(res, NS, name.format("b")) is None, name
        assert api.get(SECRETS, NS, "mine") is not None  # the user's own Secret stays
        assert children_present(api, "a")  # the other cluster is untouched


def test_nodeport_endpoint_from_service_and_pod(api: Any, run_operator: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "executor": {"serviceType": "NodePort"}}))
        wait_until(lambda: children_present(api), 15, "the children")
        svc = api.get(SERVICES, NS, "demo-executor")
        assert svc["spec"]["type"] == "NodePort"
        ports = [{**p, "nodePort": 31042 if p["name"] == "grain" else 31080} for p in svc["spec"]["ports"]]
        api.patch(SERVICES, NS, "demo-executor", {"spec": {"ports": ports}})  # the API server assigns them
        labels = render.labels(render.Owner("demo", NS), "executor")
        api.create(PODS, NS, {"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": "demo-executor-abc", "namespace": NS, "labels": labels},
                              "spec": {"nodeName": "node-1", "containers": []},
                              "status": {"hostIP": "192.0.2.10", "phase": "Running"}})
        play_controllers(api)
        wait_until(lambda: grc(api)["status"]["endpoints"].get("external") == "grain://192.0.2.10:31042", 15,
                 "the external endpoint")
        # the assigned nodePorts are not fought over
        start = passes(api)
        wait_until(lambda: passes(api) >= start + 4, 15, "two more timer passes")
        assert api.get(SERVICES, NS, "demo-executor")["spec"]["ports"][0]["nodePort"] == 31042


def test_status_follows_the_executor(api: Any, run_operator: Any, executor_http: Any) -> None:
    """Status refreshed from a real HTTP /status: the real executor when the core is installed."""
    spec = {"image": "grain:1", "workers": {"cpus": 1, "memory": "1Gi", "exclusiveCpus": True}}
    with run_operator(status_url=executor_http.url, status_timeout=5.0):
        api.create(GRC, NS, graincluster(spec=spec))
        wait_until(lambda: children_present(api), 15, "the children")
        play_controllers(api, nodes=1)
        expected_phase = "Degraded" if executor_http.real else "Running"

        def reported() -> dict[str, Any] | None:
            st = grc(api).get("status") or {}
            ok = (st.get("workers", {}).get("registered") == 1 and st.get("phase") == expected_phase
                  and cond({"status": st}, "ExecutorReady")["status"] == "True")
            return st if ok else None
        st = wait_until(reported, 20, "the worker to be reported")
        node = st["workers"]["nodes"][0]
        assert node["name"] == "node-a" if executor_http.real else "node-0"
        assert node["cpuset"] and st["cores"]["summary"].endswith("/1" if executor_http.real else "/4")
        assert st["executorVersion"]
        if executor_http.real:  # a test process sees all CPUs: not exclusive, and that is said
            c = cond({"status": st}, "ExclusiveCpus")
            assert c["status"] == "False" and "static CPU manager" in c["message"]
            assert st["phase"] == "Degraded"
        else:
            assert cond({"status": st}, "ExclusiveCpus")["status"] == "True" and st["phase"] == "Running"
            executor_http.stand_in.payload = {**sample_status(workers=1, exclusive=False), "queue_length": 9}
            wait_until(lambda: grc(api)["status"]["queueLength"] == 9, 10, "the new queue length")
            assert cond(grc(api), "ExclusiveCpus")["status"] == "False"
            executor_http.stand_in.payload = None  # /status fails
            wait_until(lambda: cond(grc(api), "ExecutorReady")["reason"] == "StatusUnreachable", 10,
                     "ExecutorReady False")
            assert "503" in cond(grc(api), "ExecutorReady")["message"]


def test_status_shows_users_and_recovery(api: Any, run_operator: Any, status_server: Any) -> None:
    users = [{"name": "alice", "weight": 2.0, "running_jobs": 3, "queued_jobs": 2997, "cores_in_use": 3, "share": 0.75},
             {"name": "bob", "weight": 1.0, "running_jobs": 1, "queued_jobs": 0, "cores_in_use": 1, "share": 0.25}]
    status_server.payload = sample_status(users=users, recovering={"waiting_for_workers": ["node-1"]})
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "users": [{"name": "alice", "weight": 2},
                                                                              {"name": "bob"}]}))
        wait_until(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker")
                 and api.get(SECRETS, NS, "demo-user-bob"), 15, "the children")
        play_controllers(api)
        st = wait_until(lambda: (grc(api).get("status") or {}).get("recovering")
                      and grc(api)["status"]["phase"] != "Pending" and grc(api)["status"], 15,
                      "the recovery to be shown on an available executor")
        assert st["recovering"] == "waiting for workers: node-1"
        assert st["phase"] == "Degraded" and cond(grc(api), "Recovering")["status"] == "True"
        assert [(u["name"], u["secretName"], u["runningJobs"], u["queuedJobs"], u["coresInUse"], u["share"])
                for u in st["users"]] == [("alice", "demo-user-alice", 3, 2997, 3, 0.75),
                                          ("bob", "demo-user-bob", 1, 0, 1, 0.25)]
        status_server.payload = sample_status(users=users)  # recovered
        wait_until(lambda: grc(api)["status"]["phase"] == "Running" and "recovering" not in grc(api)["status"], 15,
                 "the recovery to end")
        assert cond(grc(api), "Recovering") is None


def test_cluster_wide_mode_with_liveness_endpoint(api: Any, run_operator: Any) -> None:
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    with run_operator(namespaces=(), all_namespaces=True, liveness_endpoint=liveness):
        wait_http(liveness, 10)
        api.create(GRC, NS, graincluster("x", spec={"image": "grain:1"}))
        api.create(GRC, "other", graincluster("y", spec={"image": "grain:1"}, namespace="other"))
        wait_until(lambda: children_present(api, "x", NS) and children_present(api, "y", "other"), 15,
                 "children in both namespaces")
        assert pod_template(api.get(DAEMONSETS, "other", "y-worker"))["spec"]["containers"][0]["args"][1] \
            == "grain://y-executor.other.svc:4242"
