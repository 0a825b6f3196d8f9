"""The operator's Kubernetes access: the official client, and the credentials it shares with kopf.

``load_configuration`` reads the in-cluster service account (or a kubeconfig file) with the
official client's loaders into one ``kubernetes.client.Configuration``; ``connection_info``
hands the same identity to kopf (the login handler) and ``Kube`` uses it for the operator's
own requests, so kopf and the operator always talk to the same server as the same user.

``Kube`` is a thin adapter over the official client's typed APIs (``CoreV1Api``,
``AppsV1Api``, ``NetworkingV1Api``): the children are plain dicts everywhere in the operator
(rendered, compared, applied), so every call asks for the raw JSON (``_preload_content=False``)
instead of the generated model classes. The client does the rest: TLS, bearer tokens and
their refresh, client certificates, proxies, errors as ``ApiException``. Writes of the
children are server-side apply with the field manager ``grain-operator`` (``apply``).
The client is synchronous: the kopf handlers that use it are plain functions, which kopf
runs in its thread pool.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from grain_operator import version

#: Who owns the fields the operator applies (server-side apply), as ``kubectl`` shows it.
FIELD_MANAGER = "grain-operator"

#: The kinds the operator touches: (apiVersion, kind) -> (typed API class, method suffix).
KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("AppsV1Api", "namespaced_deployment"),
    ("apps/v1", "DaemonSet"): ("AppsV1Api", "namespaced_daemon_set"),
    ("v1", "Service"): ("CoreV1Api", "namespaced_service"),
    ("v1", "Secret"): ("CoreV1Api", "namespaced_secret"),
    ("v1", "Pod"): ("CoreV1Api", "namespaced_pod"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("NetworkingV1Api", "namespaced_network_policy"),
}

__all__ = ["FIELD_MANAGER", "KINDS", "ApiException", "Kube", "connection_info", "load_configuration"]


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.Configuration:
    """In-cluster service account first (unless ``kubeconfig`` is given), else the kubeconfig."""
    cfg = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(
                context=context, client_configuration=cfg)
    else:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=cfg)
    return cfg


def connection_info(cfg: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials, as kopf wants them from a login handler."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        token=token,
        scheme=scheme,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
        username=cfg.username or None,
        password=cfg.password or None,
    )


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an ``ApiException`` (None for anything else)."""
    return getattr(exc, "status", None) if isinstance(exc, ApiException) else None


def error_text(exc: ApiException) -> str:
    """``STATUS Reason: message`` of an API error, the message from the server's Status body."""
    message = ""
    try:
        body = json.loads(exc.body or b"{}")
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
    except (TypeError, ValueError):
        message = str(exc.body or "")[:300]
    return f"{exc.status} {exc.reason or ''}: {message}".strip()


class Kube:
    """get/list/create/apply/patch/delete of namespaced objects as dicts, on the official client.

    Thread-safe as far as the official client is (one urllib3 pool, shared). ``close`` ends it.
    """

    def __init__(self, configuration: kubernetes.client.Configuration, *, timeout: float = 30.0) -> None:
        self.client = kubernetes.client.ApiClient(configuration)
        self.client.user_agent = f"grain-operator/{version()}"
        self.timeout = timeout
        self._apis: dict[str, Any] = {}

    def close(self) -> None:
        """Release the connection pool (idempotent)."""
        self.client.close()

    def _method(self, verb: str, api_version: str, kind: str) -> Any:
        api_name, suffix = KINDS[(api_version, kind)]
        api = self._apis.get(api_name)
        if api is None:
            api = self._apis[api_name] = getattr(kubernetes.client, api_name)(self.client)
        return getattr(api, f"{verb}_{suffix}")

    def _raw(self, verb: str, api_version: str, kind: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = self._method(verb, api_version, kind)(
            *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
        )
        data = response.data
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self._raw("read", api_version, kind, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects with all of these labels (checked here too: some servers ignore selectors)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        items = self._raw("list", api_version, kind, namespace, label_selector=selector).get("items") or []
        return [
            item for item in items
            if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object; ``ApiException`` with status 409 when it exists already."""
        return self._raw("create", obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"], obj,
                         field_manager=FIELD_MANAGER)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the object becomes ``obj`` in every field the operator owns.

        Fields the operator applied before and ``obj`` no longer has are removed by the API
        server; fields others own (defaults, an assigned nodePort, status) are kept. ``force``:
        a field someone changed by hand is taken back (the operator is the controller).
        """
        meta = obj["metadata"]
        return self._raw("patch", obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"], obj,
                         field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml")

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386: maps merge, lists are replaced, null removes)."""
        return self._raw("patch", api_version, kind, name, namespace, patch,
                         _content_type="application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background; False when it was already gone."""
        try:
            self._raw("delete", api_version, kind, name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
