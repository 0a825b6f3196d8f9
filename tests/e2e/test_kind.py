"""End to end on kind: the chart, the operator, a GrainCluster, jobs from outside and inside,
and a rollout in the middle of a sweep.

Skipped unless Docker, kind, kubectl, helm and the kind cluster exist (see conftest.py).
The cluster runs as the operator renders it: the operator watching its namespace only, TLS
between every pod and from every client, NetworkPolicies, Secrets as files. Each job's cores
(os.sched_getaffinity inside the job) must be exactly its allocation (grain.GVAR.res.c), from
the runner (``cluster=`` discovery: port-forward, TLS with the user's CA) and from a pod
(``address=`` with the user's Secret mounted, labelled as a client of the cluster). Then a
spec change rolls the executor and the workers while a sweep runs through discovery: the
sweep completes with every result once.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

from support.waiting import wait_until

from .conftest import (
    CLIENT_LABEL,
    CLUSTER,
    IMAGE,
    NAME,
    NAMESPACE,
    SYSTEM,
    USER_SECRET,
    VARIANT,
    executor_status,
    kubectl,
    kubectl_json,
    roll_env,
)

HERE = Path(__file__).parent
MARK = "GRAIN-E2E-RESULTS "
START = "GRAIN-E2E-START "
JOB = "grain-e2e-incluster"


def _results(output: str) -> dict:
    lines = [ln for ln in output.splitlines() if ln.startswith(MARK)]
    assert lines, f"no results line in the output:\n{output[-5000:]}"
    return json.loads(lines[-1][len(MARK) :])


def _check_pinning(data: dict) -> None:
    assert len(data["results"]) == len(data["requests"])
    for want, got in zip(data["requests"], data["results"], strict=True):
        assert len(got["alloc"]) == want, got
        assert got["affinity"] == got["alloc"], (
            f"job {got['i']} pinned to {got['affinity']}, given {got['alloc']}"
        )
        if got["omp"] is not None:
            assert got["omp"] == str(want)


def _pods(component: str) -> dict[str, dict]:
    """Running pods of the GrainCluster's executor or workers, by name."""
    items = kubectl_json("-n", NAMESPACE, "get", "pods", "-l",
                         f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component={component}")["items"]
    return {p["metadata"]["name"]: p for p in items
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}


def test_operator_is_live(grain_cluster):
    deployment = kubectl_json("-n", SYSTEM, "get", "deployment", "grain-operator")
    assert deployment["status"].get("availableReplicas") == 1


def test_one_ready_worker_per_node(grain_cluster, kubeconfig_file):
    grc = grain_cluster["object"]
    endpoints = grc["status"]["endpoints"]
    assert endpoints["inCluster"] == f"grain://{NAME}-executor.{NAMESPACE}.svc:4242"
    assert endpoints["tlsServerName"] == f"{NAME}-executor.{NAMESPACE}.svc"  # TLS: on by default
    pods = kubectl_json("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=worker")[
        "items"
    ]
    on = sorted(p["spec"]["nodeName"] for p in pods if p["status"].get("phase") == "Running")
    assert on == sorted(grain_cluster["nodes"])
    status = executor_status(kubeconfig_file)  # through discovery, TLS verified
    assert len(status["workers"]) == len(grain_cluster["nodes"])
    if VARIANT == "static-cpu":
        assert all(w["exclusive_cpuset"] for w in status["workers"]), status["workers"]


def test_network_policies(grain_cluster):
    """Who may reach the executor's grain port: the workers and pods labelled as clients of
    this cluster; nobody reaches a worker. (Enforced only where the network plugin does.)"""
    executor = kubectl_json("-n", NAMESPACE, "get", "networkpolicy", f"{NAME}-executor")
    peers = [peer for rule in executor["spec"]["ingress"] for peer in rule.get("from", [])]
    assert any(p.get("podSelector", {}).get("matchLabels") == CLIENT_LABEL for p in peers), peers
    worker = kubectl_json("-n", NAMESPACE, "get", "networkpolicy", f"{NAME}-worker")
    assert worker["spec"].get("ingress", []) == [] and "Ingress" in worker["spec"]["policyTypes"]


def test_jobs_from_the_runner_through_discovery(grain_cluster, kubeconfig_file):
    done = subprocess.run(
        [sys.executable, str(HERE / "job_probe.py"), "--cluster", NAME, "--namespace", NAMESPACE,
         "--kubeconfig", kubeconfig_file],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _check_pinning(_results(done.stdout))


def test_jobs_from_a_pod_with_address(grain_cluster):
    source = (HERE / "job_probe.py").read_text()
    mounted = "/etc/grain/client"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "template": {
                # the executor's NetworkPolicy lets in pods labelled as this cluster's clients
                "metadata": {"labels": {**CLIENT_LABEL, "app.kubernetes.io/name": "grain-e2e-client"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,  # address= needs no Kubernetes API
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "probe",
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "command": [
                                "python",
                                "-c",
                                source,
                                "--address",
                                f"grain://{NAME}-executor.{NAMESPACE}.svc:4242",
                                "--token-file",
                                f"{mounted}/token",
                                "--tls-ca",  # the certificate names the Service: verified as dialled
                                f"{mounted}/ca.crt",
                            ],
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "client", "mountPath": mounted, "readOnly": True},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    # the user's Secret as files (never an env var: nothing else in the pod sees it)
                    "volumes": [
                        {"name": "client", "secret": {
                            "secretName": USER_SECRET, "defaultMode": 0o440,
                            "items": [{"key": "token", "path": "token"}, {"key": "ca.crt", "path": "ca.crt"}]}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    kubectl("-n", NAMESPACE, "delete", "job", JOB, "--ignore-not-found", "--wait=true")
    kubectl("apply", "-f", "-", input=json.dumps(job))

    def finished() -> str | None:
        status = kubectl_json("-n", NAMESPACE, "get", "job", JOB).get("status", {})
        if status.get("failed"):
            return "failed"
        return "complete" if status.get("succeeded") else None

    outcome = wait_until(finished, 300, f"Job {JOB}", interval=3)
    logs = kubectl("-n", NAMESPACE, "logs", f"job/{JOB}", check=False)
    assert outcome == "complete", logs
    _check_pinning(_results(logs))


def _count_starts(log: Path) -> collections.Counter[int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return collections.Counter(int(ln[len(START):].split()[0]) for ln in text.splitlines() if ln.startswith(START))


def _rolled(kind: str, name: str) -> bool:
    """The operator re-rendered the workload with the new env, and Kubernetes finished rolling it."""
    obj = kubectl_json("-n", NAMESPACE, "get", kind, name)
    env = obj["spec"]["template"]["spec"]["containers"][0].get("env", [])
    if not any(e.get("name") == "SWEEP_ROLL" and e.get("value") == "2" for e in env):
        return False
    done = subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", "-n", NAMESPACE, "rollout", "status",
                           f"{kind}/{name}", "--timeout=5s"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def test_rollout_mid_sweep(grain_cluster, kubeconfig_file, tmp_path):
    """A spec change (an env var of both pod templates) while a sweep runs through discovery:
    the operator re-renders, Kubernetes recreates the executor and rolls the workers one node
    at a time (each drains); the program reconnects through its port-forward by itself, the
    sweep completes with every result once, jobs ran on both generations of worker pods, no
    job was retried and none started twice unless a drain handed it back. Runs last: it
    leaves the cluster on the new spec."""
    executors, workers = set(_pods("executor")), set(_pods("worker"))
    gate, log = tmp_path / "gate", tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "rollout_sweep.py"), "--cluster", NAME, "--namespace", NAMESPACE,
             "--kubeconfig", kubeconfig_file, "--gate", str(gate)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(_count_starts(log)) >= 8 or proc.poll() is not None, 300,
                   "the sweep's first jobs to start", interval=1)
        assert proc.poll() is None, log.read_text()[-5000:]
        patch = {"spec": {"executor": {"env": roll_env(2)}, "workers": {"env": roll_env(2)}}}
        kubectl("-n", NAMESPACE, "patch", "graincluster", NAME, "--type", "merge", "-p", json.dumps(patch))
        wait_until(lambda: _rolled("deployment", f"{NAME}-executor"), 420, "the executor to roll", interval=3)
        wait_until(lambda: _rolled("daemonset", f"{NAME}-worker"), 600, "the workers to roll", interval=3)
        assert not executors & set(_pods("executor")) and not workers & set(_pods("worker")), "pods not replaced"
        wait_until(lambda: len(executor_status(kubeconfig_file)["workers"]) == len(grain_cluster["nodes"]), 300,
                   "the new workers to register", interval=3)
        assert proc.poll() is None, "the sweep ended before the rollout was over:\n" + log.read_text()[-5000:]
        gate.write_text("go\n")   # the program submits more jobs, then ends
        code = proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text(errors="replace")
    assert code == 0, text[-8000:]
    data = _results(text)
    results = data["results"]
    assert [r["i"] for r in results] == list(range(data["total"])), "a result is missing or came twice"
    assert {r["roll"] for r in results} == {"1", "2"}, "jobs ran on one generation of worker pods only"
    ran_on = {r["pod"] for r in results}
    assert ran_on & workers and ran_on - workers, (ran_on, workers)
    jobs = executor_status(kubeconfig_file)["jobs"]   # the new executor's own count
    twice = {i: n for i, n in _count_starts(log).items() if n > 1}
    assert jobs["retried"] == 0 and len(twice) <= jobs["handed_back"], (twice, jobs)
    assert "reconnected to the executor" in text
