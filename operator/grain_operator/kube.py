"""A small async Kubernetes REST client on aiohttp, and the credentials it shares with kopf.

``load_credentials`` reads the in-cluster service account (or a kubeconfig file) with the
official client library's loaders and yields one ``Credentials`` value; ``connection_info``
turns it into kopf's ``ConnectionInfo`` (the operator's login handler) and ``KubeApi`` uses it
for the operator's own requests (get/list/create/patch/delete of the children), so kopf and the
operator always talk to the same server with the same identity. Called by ``apply``,
``status`` and ``handlers``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

#: Kinds the operator touches: (apiVersion, kind) -> (URL prefix, plural).
RESOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "Pod"): ("/api/v1", "pods"),
}

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ApiClosed(Exception):
    """The client was closed (the operator is exiting)."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate (a subset of a kubeconfig)."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = None
    scheme: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    username: str | None = None
    password: str | None = None


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """In-cluster service account first (unless ``kubeconfig`` is given), else the kubeconfig."""
    import kubernetes.client
    import kubernetes.config

    cfg = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(context=context, client_configuration=cfg)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return Credentials(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        token=token,
        scheme=scheme,
        cert_path=cfg.cert_file or None,
        key_path=cfg.key_file or None,
        username=cfg.username or None,
        password=cfg.password or None,
    )


def connection_info(creds: Credentials) -> kopf.ConnectionInfo:
    """The same credentials, as kopf wants them from a login handler."""
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        insecure=creds.insecure,
        token=creds.token,
        scheme=creds.scheme,
        certificate_path=creds.cert_path,
        private_key_path=creds.key_path,
        username=creds.username,
        password=creds.password,
    )


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced collection, or of one object when ``name`` is given."""
    prefix, plural = RESOURCES[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeApi:
    """Async get/list/create/patch/delete of namespaced objects, with re-login on 401.

    The aiohttp session is created lazily inside the running event loop (kopf's) and closed
    by ``close``. ``loader`` is called again when the server answers 401 (rotated token).
    """

    def __init__(self, loader: Callable[[], Credentials], timeout: float = 30.0) -> None:
        self._loader = loader
        self._timeout = timeout
        self._creds: Credentials | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    async def close(self) -> None:
        """Close the HTTP session for good (idempotent); later requests raise ApiClosed."""
        self._closed = True
        await self._drop_session()

    async def _drop_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, Credentials]:
        if self._closed:
            raise ApiClosed("the operator is stopping: its API client is closed")
        if self._creds is None:
            self._creds = self._loader()
        if self._session is None:
            creds = self._creds
            ssl_ctx: ssl.SSLContext | bool = False
            if creds.server.startswith("https"):
                ssl_ctx = ssl.create_default_context(cafile=creds.ca_path)
                if creds.cert_path and creds.key_path:
                    ssl_ctx.load_cert_chain(creds.cert_path, creds.key_path)
                if creds.insecure:
                    ssl_ctx.check_hostname = False
                    ssl_ctx.verify_mode = ssl.CERT_NONE
            self._session = aiohttp.ClientSession(
                base_url=creds.server.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(ssl=ssl_ctx),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session, self._creds

    @staticmethod
    def _headers(creds: Credentials, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "grain-operator"}
        if content_type:
            headers["Content-Type"] = content_type
        if creds.token:
            headers["Authorization"] = f"{creds.scheme or 'Bearer'} {creds.token}"
        elif creds.username and creds.password:
            headers["Authorization"] = aiohttp.BasicAuth(creds.username, creds.password).encode()
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, *,
        content_type: str | None = None, params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request; returns the decoded JSON answer or raises ``ApiError``."""
        for attempt in (1, 2):
            session, creds = self._ensure_session()
            data = None if body is None else json.dumps(body)
            ctype = content_type or ("application/json" if body is not None else None)
            async with session.request(
                method, path.lstrip("/"), data=data, params=params, headers=self._headers(creds, ctype)
            ) as resp:
                text = await resp.text()
                if resp.status == 401 and attempt == 1:
                    self._creds = None  # the token rotated: load it again, retry once
                    await self._drop_session()
                    continue
                if resp.status >= 400:
                    try:
                        err = json.loads(text)
                        raise ApiError(resp.status, str(err.get("reason", "")), str(err.get("message", text)))
                    except (ValueError, AttributeError):
                        raise ApiError(resp.status, resp.reason or "", text[:500]) from None
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Objects with all of these labels (filtered here too: some servers ignore selectors)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
        answer = await self.request(
            "GET", resource_path(api_version, kind, namespace), params={"labelSelector": selector}
        )
        items = answer.get("items") or []
        return [
            item for item in items
            if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in label_selector.items())
        ]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object; ``ApiError`` with status 409 when it exists already."""
        meta = obj["metadata"]
        return await self.request("POST", resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)

    async def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386: maps merge, lists are replaced, null removes)."""
        return await self.request(
            "PATCH", resource_path(api_version, kind, namespace, name), patch, content_type=MERGE_PATCH
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background; False when it was already gone."""
        try:
            await self.request(
                "DELETE", resource_path(api_version, kind, namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
