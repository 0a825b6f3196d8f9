"""The pod templates the operator rendered really run: this test plays the kubelet.

The real operator (against KMock) renders the executor Deployment, the worker DaemonSet and
the token Secret. From those very objects the test starts one executor and two workers as
local processes: the container's command and args, its env with the Secret's value resolved
(secretKeyRef) and NODE_NAME from the downward API, ``$(VAR)`` expanded as the kubelet does,
the Service DNS name and container ports mapped to free ports on 127.0.0.1, and each "node"
given its own CPUs (as its cgroup cpuset would). Then a job runs through them with
``grain.run_combine(main, address=..., token=...)``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    SECRETS,
    Processes,
    free_port,
    grain_cli_available,
    graincluster,
    wait_for,
    wait_http,
)

pytestmark = pytest.mark.timeout(120)


def resolve_env(container: dict[str, Any], secrets: dict[str, dict[str, Any]], pod: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would set it."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = pod[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"the test kubelet cannot resolve {var}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes; unknown references stay as they are)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def argv_of(container: dict[str, Any], env: dict[str, str], remap: dict[str, str]) -> list[str]:
    """command + args, expanded, with addresses remapped to loopback."""
    argv = [expand(a, env) for a in container["command"] + container.get("args", [])]
    for old, new in remap.items():
        argv = [a.replace(old, new) for a in argv]
    if argv[0] == "grain":  # the image's entry point; here, the installed one
        script = Path(sys.executable).parent / "grain"
        argv[:1] = [str(script)] if script.exists() else [sys.executable, "-m", "grain.cli"]
    return argv


def probe_url(container: dict[str, Any], probe: str, ports: dict[int, int]) -> str:
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return f"http://127.0.0.1:{ports[port]}{get['path']}"


def pinned(argv: list[str], cpus: list[int]) -> list[str]:
    """Run argv with this CPU affinity (what the node's cgroup cpuset would give the pod)."""
    trampoline = f"import os, sys; os.sched_setaffinity(0, {set(cpus)!r}); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", trampoline, *argv]  # argv[0] is an absolute path


def test_pod_templates_run_jobs(api: Any, run_operator: Any, tmp_path: Path) -> None:
    if not grain_cli_available():
        pytest.skip("grain core CLI not available yet")
    import grain
    from grain.resource import Cores

    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "workers": {"memory": "1Gi"},
                                               "scheduler": {"retries": 1}}))
        wait_for(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker"),
                 15, "the rendered children")
    deployment = api.get(DEPLOYMENTS, NS, "demo-executor")
    daemonset = api.get(DAEMONSETS, NS, "demo-worker")
    secrets = {"demo-token": api.get(SECRETS, NS, "demo-token")}
    token = base64.b64decode(secrets["demo-token"]["data"]["token"]).decode()

    ex_c = deployment["spec"]["template"]["spec"]["containers"][0]
    wk_c = daemonset["spec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"]: free_port() for p in ex_c["ports"]}
    grain_port, http_port = (next(p["containerPort"] for p in ex_c["ports"] if p["name"] == n) for n in ("grain", "http"))
    remap = {
        f"0.0.0.0:{grain_port}": f"127.0.0.1:{ports[grain_port]}",
        f"0.0.0.0:{http_port}": f"127.0.0.1:{ports[http_port]}",
        f"demo-executor.{NS}.svc:{grain_port}": f"127.0.0.1:{ports[grain_port]}",  # the Service's DNS name
    }
    base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    cpus = sorted(os.sched_getaffinity(0))
    halves = [cpus[: max(1, len(cpus) // 2)], cpus[len(cpus) // 2:] or cpus]

    with Processes() as procs:
        pod = {"spec.nodeName": "control-plane", "metadata.name": "demo-executor-1", "metadata.namespace": NS}
        env = resolve_env(ex_c, secrets, pod)
        assert env["GRAIN_TOKEN"] == token
        procs.start(argv_of(ex_c, env, remap), {**base_env, **env}, tmp_path / "executor.log")
        wait_http(probe_url(ex_c, "readinessProbe", ports), 30)

        for node, node_cpus in zip(("node-a", "node-b"), halves, strict=True):
            pod = {"spec.nodeName": node, "metadata.name": f"demo-worker-{node}", "metadata.namespace": NS}
            env = resolve_env(wk_c, secrets, pod)
            argv = argv_of(wk_c, env, remap)
            assert argv[argv.index("--name") + 1] == node  # $(NODE_NAME) from the downward API
            procs.start(pinned(argv, node_cpus), {**base_env, **env}, tmp_path / f"worker-{node}.log")

        status_url = probe_url(ex_c, "readinessProbe", ports).replace("/healthz", "/status")

        def workers() -> list[str]:
            with urllib.request.urlopen(status_url, timeout=2) as resp:
                return sorted(w["name"] for w in json.load(resp)["workers"])
        wait_for(lambda: workers() == ["node-a", "node-b"], 30, "both workers to register")

        async def main() -> list[Any]:
            async with grain.open_waitgroup() as wg:
                for _ in range(4):
                    wg.submit(Cores(1), os.sched_getaffinity, 0)
            return list(wg.results)

        results = grain.run_combine(main, address=f"grain://127.0.0.1:{ports[grain_port]}", token=token)
        assert len(results) == 4
        for cpuset in results:  # each job pinned to exactly one core of some node
            assert len(cpuset) == 1 and next(iter(cpuset)) in cpus, results
