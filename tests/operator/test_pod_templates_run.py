"""The pod templates the operator rendered really run: this test plays the kubelet.

The real operator (against KMock) renders the executor Deployment, the worker DaemonSet and
their Secrets (tokens, tokens file, TLS). From those very objects the test starts one
executor and two workers as local processes, as a kubelet would:

- the container's command and args, ``$(VAR)`` expanded, env with NODE_NAME from the
  downward API; Secret volumes written as files (their items, their defaultMode) under a
  directory standing in for the pod's filesystem, the mount paths in the args pointed there;
  an ``emptyDir`` for ``/tmp`` (TMPDIR);
- the cluster's DNS: the executor Service's name resolves to 127.0.0.1 in each process (a
  ``getaddrinfo`` shim), so the workers dial the rendered address and check the executor's
  certificate against that name, as they do in a cluster; container ports become free ports;
- each "node" gets its own CPUs (as its cgroup cpuset would).

Then a client runs jobs with ``grain.run_combine(main, address=..., token=..., tls_ca=...)``
as the user ``default``; a GrainCluster spec change rolls both templates and the new pods
run jobs again.

Should the installed core lack a flag the operator renders (checked in ``--help`` at run
time), it is translated to the older form, marked WAITS FOR CORE below: ``--client-tokens``/``--worker-token-file`` become the
single shared ``--token-file`` (the workers' token, which the client then presents too),
``--client-grace`` and ``--drain-timeout`` are dropped.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kmock_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    SECRETS,
    free_port,
    graincluster,
    wait_until,
)
from process_tools import Processes, grain_cli_available, wait_http

from grain_operator import render

pytestmark = pytest.mark.timeout(180)

SERVICE_HOST = f"demo-executor.{NS}.svc"

#: Started as ``python -c TRAMPOLINE grain <role> ...``: the pod's DNS and cpuset, then the CLI.
TRAMPOLINE = """
import os, runpy, socket, sys
hosts = dict(h.split("=") for h in os.environ.pop("KUBELET_HOSTS").split(","))
real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: real(hosts.get(host, host), *a, **k)
cpus = os.environ.pop("KUBELET_CPUS", "")
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
sys.argv = sys.argv[1:]
runpy.run_module("grain.cli", run_name="__main__")
"""


@functools.cache
def supported(role: str) -> frozenset[str]:
    """The long options of ``grain <role> --help`` today."""
    out = subprocess.run([sys.executable, "-m", "grain.cli", role, "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def today(role: str, argv: list[str]) -> list[str]:
    """WAITS FOR CORE: the rendered args, translated to what the installed core offers."""
    flags = supported(role)
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if not arg.startswith("--") or arg in flags:
            out.append(arg)
        elif arg == "--client-tokens":  # no per-user tokens yet: the workers' token for everyone
            next(it)
        elif arg == "--worker-token-file":
            out += ["--token-file", next(it)]
        elif arg in ("--client-grace", "--drain-timeout"):
            next(it)
        else:
            raise AssertionError(f"grain {role} has no {arg} and the test does not know how to translate it")
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes; unknown references stay as they are)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Kubelet:
    """Turns a pod template into a local process, with its Secret volumes as files."""

    def __init__(self, api: Any, root: Path, procs: Processes, ports: dict[int, int]) -> None:
        self.api, self.root, self.procs, self.ports = api, root, procs, ports

    def secret_files(self, pod: str, template: dict[str, Any]) -> dict[str, str]:
        """Write the pod's Secret volumes; return mountPath -> local directory."""
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounted: dict[str, str] = {}
        for mount in template["spec"]["containers"][0]["volumeMounts"]:
            volume = volumes[mount["name"]]
            local = self.root / pod / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                secret = self.api.get(SECRETS, NS, volume["secret"]["secretName"])
                assert secret is not None, f"the pod mounts Secret {volume['secret']['secretName']}, which is missing"
                for item in volume["secret"]["items"]:
                    path = local / item["path"]
                    path.write_bytes(base64.b64decode(secret["data"][item["key"]]))
                    path.chmod(volume["secret"]["defaultMode"])
            else:
                assert volume == {"name": mount["name"], "emptyDir": {}}
            mounted[mount["mountPath"]] = str(local)
        return mounted

    @staticmethod
    def local_path(arg: str, mounted: dict[str, str]) -> str:
        """A path inside a mount, as the process sees it here (the longest mount wins)."""
        for path, local in sorted(mounted.items(), key=lambda kv: -len(kv[0])):
            if arg.startswith(path + "/"):
                return local + arg[len(path):]
        return arg

    def start(self, role: str, pod: str, template: dict[str, Any], node: str, cpus: list[int] | None = None) -> Any:
        container = template["spec"]["containers"][0]
        env = {"NODE_NAME": node}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
                raise AssertionError(f"the test kubelet cannot resolve {var} (and no Secret may be an env var)")
        mounted = self.secret_files(pod, template)
        argv = [expand(a, env) for a in container["command"] + container.get("args", [])]
        argv = [self.local_path(a, mounted) for a in argv]
        remap = {f"0.0.0.0:{port}": f"127.0.0.1:{local}" for port, local in self.ports.items()}
        remap.update({f"{SERVICE_HOST}:{port}": f"{SERVICE_HOST}:{local}" for port, local in self.ports.items()})
        for old, new in remap.items():
            argv = [a.replace(old, new) for a in argv]
        assert argv[:2] == ["grain", role]
        argv = ["grain", role, *today(role, argv[2:])]
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        run_env = {**base, **env, "TMPDIR": mounted["/tmp"], "KUBELET_HOSTS": f"{SERVICE_HOST}=127.0.0.1",
                   "KUBELET_CPUS": ",".join(map(str, cpus or []))}
        return self.procs.start([sys.executable, "-c", TRAMPOLINE, *argv], run_env, self.root / f"{pod}.log")


def probe_url(template: dict[str, Any], ports: dict[int, int], path: str = "/healthz") -> str:
    container = template["spec"]["containers"][0]
    port = container["readinessProbe"]["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return f"http://127.0.0.1:{ports[port]}{path}"


def registered(status_url: str) -> list[str]:
    with urllib.request.urlopen(status_url, timeout=2) as resp:
        return sorted(w["name"] for w in json.load(resp)["workers"])


def run_jobs(token: str, ca: str | None, grain_port: int) -> list[Any]:
    import grain
    from grain.resource import Cores

    async def main() -> list[Any]:
        async with grain.open_waitgroup() as wg:
            for _ in range(4):
                wg.submit(Cores(1), os.sched_getaffinity, 0)
            wg.submit(Cores(1), lambda: dict(os.environ))
        return list(wg.results)

    return list(grain.run_combine(main, address=f"grain://{SERVICE_HOST}:{grain_port}", token=token, tls_ca=ca))


def test_pod_templates_run_jobs_and_roll(api: Any, run_operator: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not grain_cli_available():
        pytest.skip("grain core CLI not available yet")
    real_getaddrinfo = socket.getaddrinfo  # this process is a client pod: the Service's name resolves here too
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **k: real_getaddrinfo("127.0.0.1" if host == SERVICE_HOST else host, *a, **k))
    cpus = sorted(os.sched_getaffinity(0))
    halves = [cpus[: max(1, len(cpus) // 2)], cpus[len(cpus) // 2:] or cpus]

    def templates() -> tuple[dict[str, Any], dict[str, Any]]:
        dep, ds = api.get(DEPLOYMENTS, NS, "demo-executor"), api.get(DAEMONSETS, NS, "demo-worker")
        return dep["spec"]["template"], ds["spec"]["template"]

    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "workers": {"memory": "1Gi"},
                                               "scheduler": {"retries": 1}}))
        wait_until(lambda: api.get(DEPLOYMENTS, NS, "demo-executor") and api.get(DAEMONSETS, NS, "demo-worker"),
                 15, "the rendered children")
        ex_t, wk_t = templates()
        user_secret = api.get(SECRETS, NS, "demo-token")
        worker_secret = api.get(SECRETS, NS, "demo-worker-token")
        tokens = {name: base64.b64decode(s["data"]["token"]).decode() for name, s in
                  (("user", user_secret), ("worker", worker_secret))}
        assert tokens["user"] != tokens["worker"]  # credentials by role
        ca = tmp_path / "client-ca.crt"
        ca.write_bytes(base64.b64decode(user_secret["data"]["ca.crt"]))  # what discovery hands the client
        per_user = "--client-tokens" in supported("executor")
        token = tokens["user"] if per_user else tokens["worker"]  # WAITS FOR CORE: one shared token today

        container = ex_t["spec"]["containers"][0]
        ports = {p["containerPort"]: free_port() for p in container["ports"]}
        grain_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grain")

        def boot(kubelet: Kubelet, generation: int) -> None:
            ex_t, wk_t = templates()
            kubelet.start("executor", f"demo-executor-{generation}", ex_t, "control-plane")
            wait_http(probe_url(ex_t, ports), 30)
            for node, node_cpus in zip(("node-a", "node-b"), halves, strict=True):
                kubelet.start("worker", f"demo-worker-{node}-{generation}", wk_t, node, node_cpus)
            wait_until(lambda: registered(probe_url(ex_t, ports, "/status")) == ["node-a", "node-b"], 30,
                     "both workers to register")

        def check(results: list[Any]) -> None:
            *cpusets, env = results
            assert len(cpusets) == 4
            for cpuset in cpusets:  # each job pinned to exactly one core of some node
                assert len(cpuset) == 1 and next(iter(cpuset)) in cpus, results
            leaked = [k for k, v in env.items() if any(t in v for t in tokens.values())]
            assert leaked == [], f"a job sees a Grain token in {leaked}"

        with Processes() as procs:
            kubelet = Kubelet(api, tmp_path / "pods", procs, ports)
            boot(kubelet, 1)
            check(run_jobs(token, str(ca), ports[grain_port]))
            if per_user:  # credentials by role: the workers' token can never submit jobs
                from grain.errors import AuthenticationError

                with pytest.raises(AuthenticationError):
                    run_jobs(tokens["worker"], str(ca), ports[grain_port])

            # a spec change rolls the executor and the workers: the kubelet replaces them
            def hashes() -> tuple[str, str]:
                ex, wk = templates()
                return ex["metadata"]["annotations"][render.TEMPLATE_HASH], wk["metadata"]["annotations"][render.TEMPLATE_HASH]

            before = hashes()
            api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
                "workers": {"drainTimeoutSeconds": 30}, "scheduler": {"clientGraceSeconds": 600}}})
            wait_until(lambda: all(a != b for a, b in zip(before, hashes(), strict=True)), 15, "both templates to roll")
            assert templates()[1]["spec"]["terminationGracePeriodSeconds"] == 30 + render.DRAIN_MARGIN_SECONDS
            for proc in procs.procs:
                proc.terminate()
            for proc in procs.procs:
                proc.wait(30 + render.DRAIN_MARGIN_SECONDS)  # within the rendered grace period
            boot(kubelet, 2)
            check(run_jobs(token, str(ca), ports[grain_port]))
