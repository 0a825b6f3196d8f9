"""A real Grain executor and worker behind KMock, for the discovery tests that run jobs.

What the operator would make, made by hand and small: per-user client tokens and the
workers' token as files, a certificate for the executor Service's names signed by a CA of
its own (``grain_operator.tls.issue``, as the operator issues it, plus ``localhost`` for the
worker here), the GrainCluster's status with ``tlsServerName`` and users, each user's Secret
(token and ``ca.crt``), the executor Service and pod (for the port-forward). The processes are
the real ``grain executor`` / ``grain worker`` command lines; KMock's port-forward relays to
the executor's port, as the API server would to the pod's.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmock_harness import KMock
from process_tools import Processes, http_ok
from support.waiting import free_port, wait_until

NS = "science"
GRC = "grain.dev/v1/grainclusters"
SERVICE_HOST = f"demo-executor.{NS}.svc"
SELECTOR = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "executor"}


@dataclass
class Pki:
    """One CA and the executor's certificate, as files."""

    ca_pem: str
    ca: Path
    cert: Path
    key: Path


def issue(tmp: Path, tag: str) -> Pki:
    """A CA and a certificate for the executor Service's names (and localhost, which the
    worker dials here), written under ``tmp``."""
    from grain_operator import names, tls

    owner = names.Owner("demo", NS)
    issued = tls.issue(owner, [*tls.dns_names(owner), "localhost"])
    out = Pki(issued.ca_pem, tmp / f"{tag}-ca.crt", tmp / f"{tag}-tls.crt", tmp / f"{tag}-tls.key")
    out.ca.write_text(issued.ca_pem)
    out.cert.write_text(issued.cert_pem)
    out.key.write_text(issued.key_pem)
    out.key.chmod(0o600)
    return out


@dataclass
class RealCluster:
    """Executor and worker processes, their credentials, and the objects KMock serves."""

    api: KMock
    procs: Processes
    tmp: Path
    users: dict[str, str] = field(default_factory=lambda: {"alice": secrets.token_hex(16)})
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    generation: int = 0
    executor: Any = None
    workers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = self.tmp / "client-tokens"
        self.tokens.write_text("".join(f"{u} {t}\n" for u, t in self.users.items()))
        self.worker_token = self.tmp / "worker-token"
        self.worker_token.write_text(secrets.token_hex(16) + "\n")
        self.pki = issue(self.tmp, "pki-1")
        self.renewed = issue(self.tmp, "pki-2")   # what a renewal would bring
        # The workers trust both CAs: a rollout that renews the CA gives the new worker pods
        # the new ca.crt; the worker here is not replaced, and only the client is under test.
        self.worker_ca = self.tmp / "worker-ca.crt"
        self.worker_ca.write_text(self.pki.ca_pem + self.renewed.ca_pem)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/status"

    # -- processes ---------------------------------------------------------------------------

    def start_executor(self, pki: Pki | None = None) -> Any:
        """A (new) executor on the same ports: the Service's address does not change."""
        pki = pki or self.pki
        self.generation += 1
        argv = [sys.executable, "-m", "grain.cli", "executor", "--listen", f"grain://127.0.0.1:{self.port}",
                "--http", f"127.0.0.1:{self.http_port}", "--client-tokens", str(self.tokens),
                "--worker-token-file", str(self.worker_token), "--tls-cert", str(pki.cert),
                "--tls-key", str(pki.key), "--heartbeat", "0.5", "--timeout", "3"]
        log = self.tmp / f"executor-{self.generation}.log"
        self.executor = proc = self.procs.start(argv, _env(), log)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.http_port}/healthz") or proc.poll() is not None, 30,
                 "the executor to answer /healthz")
        assert proc.poll() is None, f"the executor exited:\n{log.read_text()}"
        return proc

    def stop_executor(self, sig: int) -> None:
        self.executor.send_signal(sig)
        self.executor.wait(15)
        wait_until(lambda: not http_ok(f"http://127.0.0.1:{self.http_port}/healthz"), 10, "the old executor to be gone")

    def start_worker(self, name: str, cpu: int) -> Any:
        argv = [sys.executable, "-m", "grain.cli", "worker", "--executor", f"grain://localhost:{self.port}",
                "--name", name, "--cores", str(cpu), "--memory", "1GB", "--gpus", "none",
                "--token-file", str(self.worker_token), "--tls-ca", str(self.worker_ca),
                "--heartbeat", "0.5", "--timeout", "3"]
        self.workers[name] = self.procs.start(argv, _env(), self.tmp / f"worker-{name}.log")
        return self.workers[name]

    def wait_workers(self, names: set[str], timeout: float = 30) -> None:
        import json
        import urllib.request

        def registered() -> bool:
            with urllib.request.urlopen(self.status_url, timeout=2) as resp:
                return names <= {w["name"] for w in json.load(resp)["workers"]}
        wait_until(registered, timeout, f"workers {sorted(names)} to register")

    # -- what the API serves -------------------------------------------------------------------

    def publish(self, pki: Pki | None = None, **endpoints: str) -> None:
        """The GrainCluster's status and each user's Secret (token and the CA of ``pki``)."""
        pki = pki or self.pki
        status = {"phase": "Running", "endpoints": {"inCluster": f"grain://{SERVICE_HOST}:4242",
                                                    "tlsServerName": SERVICE_HOST, **endpoints},
                  "users": [{"name": u, "secretName": f"demo-user-{u}"} for u in self.users]}
        self.api.put(GRC, NS, "demo", {"apiVersion": "grain.dev/v1", "kind": "GrainCluster", "spec": {},
                                       "status": status})
        for user, token in self.users.items():
            data = {"token": token, "ca.crt": pki.ca_pem}
            self.api.put("v1/secrets", NS, f"demo-user-{user}", {
                "apiVersion": "v1", "kind": "Secret",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def publish_executor_pod(self, pod: str) -> None:
        """The executor Service and its (only) pod, which the port-forward reaches."""
        self.api.put("v1/services", NS, "demo-executor", {
            "apiVersion": "v1", "kind": "Service",
            "spec": {"selector": SELECTOR, "ports": [{"name": "grain", "port": 4242, "targetPort": "grain"}]}})
        for res, ns, name in list(self.api.km.objects):
            if res.plural == "pods" and ns == NS and name.startswith("demo-executor-"):
                del self.api.km.objects[res, ns, name]   # the old pod is gone (Recreate)
        container = {"name": "executor", "image": "grain", "ports": [{"name": "grain", "containerPort": 4242}]}
        self.api.put("v1/pods", NS, pod, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"labels": SELECTOR},
            "spec": {"containers": [container]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        self.api.km.forward_to = self.port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
