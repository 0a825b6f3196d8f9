"""KMock's Kubernetes emulator served from a thread, for the synchronous kubernetes client.

`FakeApi` runs `kmock.KubernetesEmulator` behind `kmock.Server` on 127.0.0.1 in a thread
with its own asyncio loop (the client under test is sync). It adds what KMock lacks: the
pods/portforward WebSocket (the v4.channel.k8s.io protocol), relayed to a loopback TCP
port that stands in for the executor pod, or refused with a chosen HTTP status.
"""

from __future__ import annotations

import asyncio
import re
import socketserver
import threading
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import yaml

PORTFORWARD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/portforward$")


class _Emulator(kmock.KubernetesEmulator):
    """KMock plus a pods/portforward endpoint."""

    forward_to: int | None = None  # loopback port of the stand-in executor
    refuse_with: int | None = None  # HTTP status to refuse port-forwards with
    forwards: list[str] = []  # "ns/pod:port" of every port-forward opened

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        m = PORTFORWARD.match(raw_request.path)
        if m and (self.forward_to is not None or self.refuse_with is not None):
            return await self._portforward(raw_request, m["ns"], m["pod"])
        return await super().__call__(raw_request)

    async def _portforward(self, request: Any, ns: str, pod: str) -> aiohttp.web.StreamResponse:
        if self.refuse_with is not None:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": self.refuse_with, "message": "refused by test"},
                status=self.refuse_with,
            )
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


class FakeApi:
    """A running emulator: `.url`, `.objects`, reactions via `.km`, a kubeconfig writer."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.km: _Emulator
        self.url = ""

    def __enter__(self) -> FakeApi:
        self._thread.start()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        if not self._ready.wait(10):
            raise RuntimeError("KMock did not start")
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as km, kmock.Server(km) as server:
            km.forwards = []
            self.km = km
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            self._served.result(timeout=3)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(3)
            self._loop.close()

    def put(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> None:
        """Store an object as the API would serve it."""
        obj.setdefault("metadata", {}).update(name=name, namespace=namespace)
        self.km.objects[resource, namespace, name] = obj

    def kubeconfig(self, path: Path, namespace: str = "science") -> Path:
        """Write a kubeconfig whose current context points at this emulator."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "kube-token"}}],
                    "contexts": [
                        {
                            "name": "kmock",
                            "context": {
                                "cluster": "kmock",
                                "user": "tester",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "kmock",
                }
            )
        )
        return path


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(b"executor:" + data)


class StandInExecutor:
    """A loopback TCP server standing in for the executor: answers b"executor:" + what it got."""

    def __enter__(self) -> StandInExecutor:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
