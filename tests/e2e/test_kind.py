"""End to end on kind: the chart, the operator, a GrainCluster, jobs from outside and inside.

Skipped unless Docker, kind, kubectl, helm and the kind cluster exist (see conftest.py).
Each job's cores (os.sched_getaffinity inside the job) must be exactly its allocation
(grain.GVAR.res.c), from the runner (discovery + port-forward) and from a pod (address=).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.waiting import wait_until

from .conftest import IMAGE, NAME, NAMESPACE, SYSTEM, VARIANT, kubectl, kubectl_json

HERE = Path(__file__).parent
MARK = "GRAIN-E2E-RESULTS "
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


def test_operator_is_live(grain_cluster):
    deployment = kubectl_json("-n", SYSTEM, "get", "deployment", "grain-operator")
    assert deployment["status"].get("availableReplicas") == 1


def test_one_ready_worker_per_node(grain_cluster):
    grc = grain_cluster["object"]
    assert (
        grc["status"]["endpoints"]["inCluster"] == f"grain://{NAME}-executor.{NAMESPACE}.svc:4242"
    )
    pods = kubectl_json("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=worker")[
        "items"
    ]
    on = sorted(p["spec"]["nodeName"] for p in pods if p["status"].get("phase") == "Running")
    assert on == sorted(grain_cluster["nodes"])
    status = json.loads(
        kubectl(
            "get",
            "--raw",
            f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}-executor:http/proxy/status",
        )
    )
    assert len(status["workers"]) == len(grain_cluster["nodes"])
    if VARIANT == "static-cpu":
        assert all(w["exclusive_cpuset"] for w in status["workers"]), status["workers"]


def test_jobs_from_the_runner_through_discovery(grain_cluster):
    done = subprocess.run(
        [sys.executable, str(HERE / "job_probe.py"), "--cluster", NAME, "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _check_pinning(_results(done.stdout))


def test_jobs_from_a_pod_with_address(grain_cluster):
    source = (HERE / "job_probe.py").read_text()
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
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
                            ],
                            "env": [
                                {
                                    "name": "GRAIN_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": f"{NAME}-token", "key": "token"}
                                    },
                                }
                            ],
                        }
                    ],
                }
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
