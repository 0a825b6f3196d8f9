"""The one Kubernetes test harness: KMock's emulator, the real kopf operator, a stand-in /status.

Used by the operator tests (tests/operator) and the shipping tests (tests/ship, which put
this directory on sys.path). Each server runs in a thread with its own event loop, never in
the test's own loop (kopf cancels tasks it did not start when it stops).

- ``KMock``: ``kmock.KubernetesEmulator`` behind ``kmock.Server`` on 127.0.0.1, with the
  resources kopf and the operator need declared, plus what KMock 0.8 lacks:
  * server-side apply (KMock answers it 200 and changes nothing): ``_apply`` keeps what each
    field manager applied last and merges like the API server does for one manager — fields
    it applied before and no longer sends are removed, others' fields are kept. Lists are
    atomic here (the API server merges some lists by key): a fidelity gap the operator never
    relies on, since it owns its lists whole.
  * the pods/portforward WebSocket (v4.channel.k8s.io), relayed to a loopback port standing
    in for the pod, or refused with a chosen HTTP status; the pod must exist.
  The test drives it over HTTP (``create``, ``patch``, ``delete``; its requests carry kmock's
  User-Agent, so they can be told from the operator's) or stores objects directly (``put``),
  and reads ``get``/``requests`` for assertions.
- ``OperatorThread``: ``grain_operator.handlers.operate`` in a thread, stopped by its flag.
- ``StatusServer``: an HTTP server on loopback serving a settable /status JSON and /healthz.
- ``wait_until``, ``free_port``: the tiers' shared helpers (tests/support/waiting.py).
"""

from __future__ import annotations

import asyncio
import copy
import http.server
import json
import re
import threading
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import yaml
from support.waiting import free_port as free_port  # the tiers' shared helpers
from support.waiting import wait_until as wait_until

from grain_operator.handlers import operate
from grain_operator.settings import OperatorConfig

NS = "science"
GRC = "grain.dev/v1/grainclusters"
DEPLOYMENTS = "apps/v1/deployments"
DAEMONSETS = "apps/v1/daemonsets"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
PODS = "v1/pods"
NETPOLS = "networking.k8s.io/v1/networkpolicies"

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
    NETPOLS: {"kind": "NetworkPolicy", "namespaced": True},
    "v1/events": {"kind": "Event", "namespaced": True},
}

PORTFORWARD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/portforward$")
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


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


# -- server-side apply, as the API server does it for one field manager -----------------------

def _prune(live: Any, before: Any, after: Any) -> Any:
    """Remove from ``live`` what the manager applied ``before`` and no longer applies."""
    if not (isinstance(live, dict) and isinstance(before, dict)):
        return live
    out = dict(live)
    for key, old in before.items():
        if key not in out:
            continue
        if not isinstance(after, dict) or key not in after:
            del out[key]
        elif isinstance(old, dict):
            out[key] = _prune(out[key], old, after[key])
    return out


def _merge(live: Any, applied: Any) -> Any:
    """Set every field of ``applied`` in ``live``; maps merge, lists and scalars are replaced."""
    if not (isinstance(live, dict) and isinstance(applied, dict)):
        return copy.deepcopy(applied)
    out = dict(live)
    for key, value in applied.items():
        out[key] = _merge(out.get(key), value)
    return out


def server_side_apply(live: dict[str, Any] | None, before: dict[str, Any] | None,
                      applied: dict[str, Any]) -> dict[str, Any]:
    """The object after ``applied`` (the manager's previous config: ``before``)."""
    if live is None:
        return copy.deepcopy(applied)
    return _merge(_prune(live, before or {}, applied), applied)


class _Emulator(kmock.KubernetesEmulator):
    """KMock plus server-side apply and pods/portforward."""

    forward_to: int | None = None  # loopback port standing in for the executor pod
    refuse_with: int | None = None  # HTTP status to refuse port-forwards with
    forwards: list[str]  # "ns/pod:port" of every port-forward opened
    applied: dict[tuple[Any, str | None, str, str], dict[str, Any]]  # what each manager applied last
    log: list[Any]  # every request served, oldest first (see __call__)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # KMock matches each request against its reactions by scanning every request it ever
        # recorded: a GET costs 3 ms fresh and 100 ms after 300 requests, and an operator test
        # makes thousands. Keep the record here instead, and KMock's own list short.
        self.log.extend(self._requests)
        self._requests.clear()
        m = PORTFORWARD.match(raw_request.path)
        if m and (self.forward_to is not None or self.refuse_with is not None):
            return await self._portforward(raw_request, m["ns"], m["pod"])
        return await super().__call__(raw_request)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        ctype = str(request.headers.get("Content-Type", ""))
        if str(request.method).upper().endswith("PATCH") and ctype.startswith(APPLY_CONTENT_TYPE) \
                and request.resource is not None and request.name is not None and not request.subresource:
            return await self._apply(request)
        return await super()._handle(request)

    async def _apply(self, request: Any) -> aiohttp.web.StreamResponse:
        body = yaml.safe_load(request.body or b"{}") or {}
        manager = str(request.params.get("fieldManager") or "")
        if not manager:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 400, "message": "fieldManager is required for apply"}, status=400)
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            exists = key in self.objects and not self.objects[key].deleted
            live = self.objects[key].raw if exists else None
            new = server_side_apply(live, self.applied.get((*key, manager)), body)
            new.setdefault("metadata", {}).update(name=request.name, namespace=request.namespace)
            self.applied[(*key, manager)] = copy.deepcopy(body)
            if exists:
                self.objects[key].history.append(new)
            elif key in self.objects:
                self.objects[key].create(new)
            else:
                self.objects[key] = new
            raw = self.objects[key].raw
            if new != live:
                await self._buses[request.resource].put({"type": "MODIFIED" if exists else "ADDED", "object": raw})
        return aiohttp.web.json_response(raw, status=200 if exists else 201)

    async def _portforward(self, request: Any, ns: str, pod: str) -> aiohttp.web.StreamResponse:
        if self.refuse_with is not None:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": self.refuse_with, "message": "refused by test"}, status=self.refuse_with)
        if not any(res.plural == "pods" and n == ns and name == pod and not obj.deleted
                   for (res, n, name), obj in list(self.objects.items())):
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 404, "message": f'pods "{pod}" not found'}, status=404)
        port = int(request.query["ports"])
        self.forwards.append(f"{ns}/{pod}:{port}")
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.forward_to)
        header = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + header)  # data channel of the first port
        await ws.send_bytes(b"\x01" + header)  # its error channel

        async def pod_to_client() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        task = asyncio.create_task(pod_to_client())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
        finally:
            task.cancel()
            writer.close()
        return ws


class KMock:
    """KMock's emulator, served from its own thread."""

    def __init__(self, namespaces: tuple[str, ...] = (NS,)) -> None:
        self._namespaces = namespaces
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock", daemon=True)
        self._stop: asyncio.Event | None = None
        self.km: _Emulator
        self.url = ""

    def __enter__(self) -> KMock:
        self._thread.start()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        if not self._ready.wait(10):
            raise RuntimeError("KMock did not start")
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as km, kmock.Server(km) as server:
            km.forwards, km.applied, km.log = [], {}, []
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

    def kubeconfig(self, path: Path, namespace: str | None = None) -> str:
        """A kubeconfig pointing at this emulator (its context's namespace: ``namespace``)."""
        context: dict[str, str] = {"cluster": "kmock", "user": "tester"}
        if namespace:
            context["namespace"] = namespace
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "kube-token"}}],
            "contexts": [{"name": "kmock", "context": context}],
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

    def put(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> None:
        """Store an object directly, as the API would serve it (no watch event)."""
        obj.setdefault("metadata", {}).update(name=name, namespace=namespace)
        self.km.objects[resource, namespace, name] = obj

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
        return [*self.km.log, *self.km._requests]

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
        self._thread.join(30)
        assert not self._thread.is_alive(), "the operator thread did not stop"
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise AssertionError(f"the operator failed: {self.error!r}") from self.error


class StatusServer:
    """A stand-in for the executor's HTTP port: GET /status answers ``self.payload`` as JSON."""

    def __init__(self, payload: dict[str, Any] | None = None) -> None:
        self.payload: dict[str, Any] | None = payload
        self.hits = 0  # /status requests answered (a reconcile pass reads it once)
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
                if self.path == "/status":
                    owner.hits += 1
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


def sample_status(workers: int = 2, exclusive: bool = True, queue: int = 3,
                  users: list[dict[str, Any]] | None = None, recovering: Any = None) -> dict[str, Any]:
    """A /status JSON as docs/interfaces.md describes it (``users``/``recovering`` when given)."""
    out: dict[str, Any] = {
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
    if users is not None:
        out["users"] = users
    if recovering is not None:
        out["recovering"] = recovering
    return out


def graincluster(name: str = "demo", spec: dict[str, Any] | None = None, generation: int = 1,
                 uid: str | None = None, namespace: str = NS) -> dict[str, Any]:
    """A GrainCluster object; KMock assigns no uid, generation or resourceVersion (kopf's JSON
    patches test the latter), so the test does."""
    return {
        "apiVersion": "grain.dev/v1", "kind": "GrainCluster",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "generation": generation,
                     "resourceVersion": "1"},
        "spec": spec if spec is not None else {"image": "grain:test"},
    }
