"""Test harness for the operator: KMock's Kubernetes emulator, the real kopf operator, and a
stand-in executor /status server, each in its own thread (never in the test's own loop).

- ``KMock``: kmock.KubernetesEmulator behind kmock.Server on 127.0.0.1, in a thread with its
  own asyncio loop. The resources kopf needs are declared (namespaces, CRDs, grainclusters
  with a status subresource, the children's kinds). The test drives it over HTTP (``create``,
  ``patch``, ``delete``; its requests carry kmock's User-Agent so they can be told apart from
  the operator's) and reads ``objects``/``requests`` for assertions.
- ``OperatorThread``: ``grain_operator.handlers.operate`` in a thread, stopped by its flag.
- ``StatusServer``: an HTTP server on loopback serving a settable /status JSON and /healthz.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import yaml

from grain_operator.handlers import operate
from grain_operator.settings import OperatorConfig

NS = "science"
GRC = "grain.dev/v1/grainclusters"
DEPLOYMENTS = "apps/v1/deployments"
DAEMONSETS = "apps/v1/daemonsets"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
PODS = "v1/pods"

RESOURCES: dict[str, dict[str, Any]] = {
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False},
    GRC: {"kind": "GrainCluster", "namespaced": True, "subresources": {"status"}, "shortnames": {"grc"},
          "verbs": {"get", "list", "watch", "create", "patch", "delete", "update"}},
    DEPLOYMENTS: {"kind": "Deployment", "namespaced": True, "subresources": {"status"}},
    DAEMONSETS: {"kind": "DaemonSet", "namespaced": True, "subresources": {"status"}},
    SERVICES: {"kind": "Service", "namespaced": True, "subresources": {"status"}},
    SECRETS: {"kind": "Secret", "namespaced": True},
    PODS: {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
    "v1/events": {"kind": "Event", "namespaced": True},
}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            last_exc = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last: {last_exc!r})" if last_exc else ""))


def api_path(resource: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """REST path of a resource given as 'group/version/plural' or 'v1/plural'."""
    parts = resource.split("/")
    prefix = f"/api/{parts[0]}" if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
    plural = parts[-1]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class KMock:
    """KMock's emulator, served from its own thread."""

    def __init__(self, namespaces: tuple[str, ...] = (NS,)) -> None:
        self._namespaces = namespaces
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock", daemon=True)
        self._stop: asyncio.Event | None = None
        self.km: kmock.KubernetesEmulator
        self.url = ""

    def __enter__(self) -> KMock:
        self._thread.start()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        if not self._ready.wait(10):
            raise RuntimeError("KMock did not start")
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as km, kmock.Server(km) as server:
            for res, info in RESOURCES.items():
                km.resources[res] = kmock.ResourceInfo(**info)
            for ns in self._namespaces:
                km.objects["v1/namespaces", None, ns] = {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            self.km = km
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            self._served.result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def kubeconfig(self, path: Path) -> str:
        """A kubeconfig pointing at this emulator."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": "operator-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
            "current-context": "kmock",
        }))
        return str(path)

    # -- the test's own requests (through kmock's client, in kmock's loop) ----------------------

    def _call(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            headers = {"Content-Type": content_type} if content_type else {}
            async with self.km.request(method, path, json=body, headers=headers) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if text else None)
        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(timeout=10)

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        status, answer = self._call("POST", api_path(resource, namespace), obj)
        assert status < 300, (status, answer)
        return answer

    def patch(self, resource: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None) -> Any:
        status, answer = self._call(
            "PATCH", api_path(resource, namespace, name, sub), body, "application/merge-patch+json")
        assert status < 300, (status, answer)
        return answer

    def delete(self, resource: str, namespace: str, name: str) -> Any:
        status, answer = self._call("DELETE", api_path(resource, namespace, name))
        assert status < 300, (status, answer)
        return answer

    # -- assertions -----------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (a deep copy), or None when absent or deleted."""
        wanted = kmock.resource(resource)
        for (res, ns, nm), obj in list(self.km.objects.items()):
            if res == wanted and ns == namespace and nm == name and not obj.deleted:
                return json.loads(json.dumps(obj.raw))
        return None

    def requests(self) -> list[Any]:
        """Every request the emulator got so far."""
        return list(self.km)

    def operator_requests(self) -> list[Any]:
        """Requests made by the operator (kopf's and grain-operator's), not by the test."""
        return [r for r in self.requests() if not str(r.headers.get("User-Agent", "")).startswith("kmock/")]


class OperatorThread:
    """The real operator (kopf) in a thread with its own event loop."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="grain-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(operate(self.config, stop_flag=self.stop_flag, ready_flag=self.ready_flag))
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.error = exc

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        if not self.ready_flag.wait(20):
            self.stop_flag.set()
            raise RuntimeError(f"the operator did not get ready: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self._thread.join(20)
        assert not self._thread.is_alive(), "the operator thread did not stop"
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise AssertionError(f"the operator failed: {self.error!r}") from self.error


class StatusServer:
    """A stand-in for the executor's HTTP port: GET /status answers ``self.payload`` as JSON."""

    def __init__(self, payload: dict[str, Any] | None = None) -> None:
        self.payload: dict[str, Any] | None = payload
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    body, ctype = b"ok", "text/plain"
                elif self.path == "/status" and owner.payload is not None:
                    body, ctype = json.dumps(owner.payload).encode(), "application/json"
                else:
                    self.send_error(503 if self.path == "/status" else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/status"

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def sample_status(workers: int = 2, exclusive: bool = True, queue: int = 3) -> dict[str, Any]:
    """A /status JSON as docs/interfaces.md describes it."""
    return {
        "version": "1.0.0", "uptime_s": 12.5, "queue_length": queue, "clients": 1, "running_jobs": 4,
        "cores": {"total": 4 * workers, "free": 2 * workers},
        "memory_gb": {"total": 16.0 * workers, "free": 8.0 * workers},
        "workers": [
            {"name": f"node-{i}", "address": f"10.0.0.{i}:5342{i}", "cores_total": 4, "cores_free": 2,
             "memory_total_gb": 16.0, "memory_free_gb": 8.0, "running_jobs": 2,
             "cpuset": [2, 3, 4, 5], "exclusive_cpuset": exclusive, "gpus": []}
            for i in range(workers)
        ],
    }


def graincluster(name: str = "demo", spec: dict[str, Any] | None = None, generation: int = 1,
                 uid: str | None = None) -> dict[str, Any]:
    """A GrainCluster object; KMock assigns no uid, generation or resourceVersion (kopf's JSON
    patches test the latter), so the test does."""
    return {
        "apiVersion": "grain.dev/v1", "kind": "GrainCluster",
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "generation": generation,
                     "resourceVersion": "1"},
        "spec": spec if spec is not None else {"image": "grain:test"},
    }


# -- the real grain core, when it is there ------------------------------------------------------

def grain_cli_available() -> bool:
    """Whether the core's CLI (``grain executor``/``grain worker``) can be imported."""
    try:
        import grain.cli.main  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Child processes started by a test; all stopped (TERM, then KILL) on exit."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> Any:
        import subprocess
        out = log.open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        import subprocess
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers 200."""
    import urllib.request

    def ok() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False
    wait_for(ok, timeout, f"{url} to answer")
