"""Find a GrainCluster through the Kubernetes API and connect to its executor.

`grain.run_combine(main, cluster="demo")` and `grain status --cluster demo` call
`resolve_cluster` (or `open_cluster`): it loads the kubeconfig (or the in-cluster service
account), reads the GrainCluster's status, then the caller's own client Secret: the user is
`user=`, else `$GRAIN_USER`, else `default`, and their Secret is the one `status.users` names
(`NAME-user-USER`; `NAME-token` for `default`). It holds the token and, when the cluster uses
TLS (the default), the CA (`ca.crt`), written to a private temporary file. Then the way in,
in this order:

1. running in a pod: `status.endpoints.inCluster` (the executor Service's DNS name);
2. `status.endpoints.external` (NodePort/LoadBalancer) when a TCP connect succeeds quickly;
3. a port-forward to the executor pod, opened and closed here: a loopback listening socket
   whose every connection gets its own stream of the official client's
   `kubernetes.stream.portforward` to the *current* executor pod (`grain.client.kubeapi`,
   with the API reads and the errors).

With TLS the client verifies `ClusterConnection.server_hostname` (the Service's name,
`NAME-executor.NS.svc`) whatever address it dials: a port-forward on 127.0.0.1 or a node port.

After an executor restart, redialling `address` is enough: the port-forward finds the new
executor pod by itself (a stream that cannot be opened, or that the pod ends with an error,
makes the next connection look the pod up again). `ClusterConnection.refresh()` re-reads
the status and the Secret (a moved external endpoint, a renewed CA); it blocks on the
Kubernetes API, like everything here: call it before entering trio, or through
`trio.to_thread.run_sync`. Every failure raises a subclass of
`grain.errors.ClusterDiscoveryError` whose message says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grain.errors import ClusterDiscoveryError, ConfigurationError
from grain.net.endpoints import Endpoint, parse_endpoint

from .kubeapi import (
    EXECUTOR_PORT,
    ClusterNotFoundError,
    ClusterNotRunningError,
    ExecutorPodNotFoundError,
    KubeconfigNotFoundError,
    KubernetesApiError,
    PortForwarder,
    PortForwardError,
    PortForwardRefusedError,
    TokenSecretError,
    TokenSecretForbiddenError,
    TokenSecretNotFoundError,
    UnknownUserError,
    read_cluster,
    read_secret,
    secret_key,
)

__all__ = [
    "ClusterConnection", "ClusterDiscoveryError", "ClusterNotFoundError", "ClusterNotRunningError",
    "ExecutorPodNotFoundError", "KubeconfigNotFoundError", "KubernetesApiError", "PortForwardError",
    "PortForwardRefusedError", "TokenSecretError", "TokenSecretForbiddenError", "TokenSecretNotFoundError",
    "UnknownUserError", "open_cluster", "resolve_cluster",
]

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
USABLE_PHASES = ("Running", "Degraded")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Via = Literal["in-cluster", "external", "port-forward"]


@dataclass
class ClusterConnection:
    """How to reach one GrainCluster's executor as one user.

    `address` (grain://host:port) and `token` are what to dial and present; with TLS,
    `ca_file` is the cluster's CA (a private temporary file) and `server_hostname` the name to
    verify the certificate against (it differs from the address's host through a
    port-forward). `via` says which way was chosen. Use it as a context manager (or call
    `close()`): that closes the port-forward and removes the CA file.
    """

    name: str
    namespace: str
    address: str
    token: str = field(repr=False)
    via: Via
    user: str = DEFAULT_USER
    phase: str = "Running"
    ca_file: str | None = None
    server_hostname: str | None = None
    _forwarder: PortForwarder | None = field(default=None, repr=False)
    _reopen: Callable[[], ClusterConnection] | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """Whether the executor expects TLS."""
        return self.ca_file is not None

    def refresh(self) -> ClusterConnection:
        """Look the cluster up again (status, Secret, way in) and update this object in place.

        Blocking. The old port-forward and CA file are closed once the new ones exist.
        """
        if self._reopen is None:
            raise ClusterDiscoveryError("this ClusterConnection was not made by resolve_cluster")
        fresh = self._reopen()
        old_forwarder, old_ca = self._forwarder, self.ca_file
        for name in ("address", "token", "via", "phase", "ca_file", "server_hostname", "_forwarder"):
            setattr(self, name, getattr(fresh, name))
        fresh._forwarder, fresh.ca_file = None, None  # now owned here
        if old_forwarder is not None and old_forwarder is not self._forwarder:
            old_forwarder.close()
        if old_ca and old_ca != self.ca_file:
            with contextlib.suppress(OSError):
                os.unlink(old_ca)
        return self

    def close(self) -> None:
        """Close the port-forward (if any) and remove the CA file. Idempotent."""
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        if self.ca_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.ca_file)
            self.ca_file = None

    def __enter__(self) -> ClusterConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def open_cluster(
    name: str, namespace: str | None = None, *, user: str | None = None, kubeconfig: str | None = None,
    token: str | None = None, connect_timeout: float = 1.0,
) -> Iterator[ClusterConnection]:
    """`with open_cluster("demo") as conn:` -> a `ClusterConnection`, closed on exit."""
    conn = resolve_cluster(name, namespace, user=user, kubeconfig=kubeconfig, token=token,
                           connect_timeout=connect_timeout)
    try:
        yield conn
    finally:
        conn.close()


def resolve_cluster(
    name: str, namespace: str | None = None, *, user: str | None = None, kubeconfig: str | None = None,
    token: str | None = None, connect_timeout: float = 1.0,
) -> ClusterConnection:
    """Find GrainCluster `name` and return a live way to its executor for `user`.

    `namespace` defaults to the kubeconfig context's namespace (in a pod: the pod's own),
    then `default`. `user` defaults to `$GRAIN_USER`, then `default`. `kubeconfig` is a file
    path; without it, a pod uses its service account and otherwise `$KUBECONFIG` or
    `~/.kube/config` is read. `token` skips reading the token from the Secret (the CA is
    still read from it when the cluster uses TLS). `connect_timeout` bounds the TCP check of
    the external endpoint. The caller must `close()` the result (or use `open_cluster`).
    """
    user = user or os.environ.get("GRAIN_USER") or DEFAULT_USER
    api, in_cluster, default_ns = _load_api_client(kubeconfig)
    namespace = namespace or default_ns
    forwarder: PortForwarder | None = None
    try:
        conn = _resolve(api, in_cluster, name, namespace, user, token, connect_timeout)
        forwarder = conn._forwarder
    finally:
        if forwarder is None:  # a port-forward keeps using the client until it is closed
            api.close()
    conn._reopen = lambda: resolve_cluster(name, namespace, user=user, kubeconfig=kubeconfig, token=token,
                                           connect_timeout=connect_timeout)
    return conn


def _resolve(
    api: Any, in_cluster: bool, name: str, namespace: str, user: str, token: str | None, timeout: float,
) -> ClusterConnection:
    """resolve_cluster's work, with the API client it loaded."""
    from kubernetes import client

    where = f"GrainCluster {namespace}/{name}"
    obj = read_cluster(client.CustomObjectsApi(api), name, namespace)
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase not in USABLE_PHASES:
        raise ClusterNotRunningError(
            f"{where} is {phase}, not Running{_conditions_hint(status)}. Wait until "
            f"`kubectl -n {namespace} get graincluster {name}` shows Running; if it stays "
            f"{phase}, see `kubectl -n {namespace} describe graincluster {name}` and the "
            "operator's logs."
        )
    if phase != "Running":
        log.warning("%s is %s: %s; connecting anyway", where, phase, status.get("message") or "degraded")
    core = client.CoreV1Api(api)
    endpoints = status.get("endpoints") or {}
    server_hostname = endpoints.get("tlsServerName")
    ca_file = None
    if token is None or server_hostname:  # with TLS, the user's Secret also carries the CA
        secret_name = _secret_name(obj, name, user, where)
        data = read_secret(core, secret_name, namespace, where, user)
        ca = secret_key(data, "ca.crt", secret_name, namespace, where) if server_hostname else None
        token = token or secret_key(data, "token", secret_name, namespace, where)
        ca_file = _private_file(ca, f"grain-{name}-ca-") if ca else None

    def make(address: str, via: Via) -> ClusterConnection:
        return ClusterConnection(name, namespace, address, token, via, user, phase, ca_file, server_hostname)

    try:
        if in_cluster:
            address = endpoints.get("inCluster") or f"grain://{name}-executor.{namespace}.svc:{EXECUTOR_PORT}"
            return make(address, "in-cluster")
        external = endpoints.get("external")
        if external and _reachable(external, timeout):
            return make(external, "external")
        if external:
            log.info("%s: external endpoint %s not reachable; port-forwarding", where, external)
        forwarder = PortForwarder(core, namespace, name)
        conn = make(f"grain://127.0.0.1:{forwarder.local_port}", "port-forward")
        conn._forwarder = forwarder
        log.info("%s: port-forward 127.0.0.1:%d -> pod %s", where, forwarder.local_port, forwarder.pod)
        return conn
    except BaseException:
        if ca_file:
            with contextlib.suppress(OSError):
                os.unlink(ca_file)
        raise


def _secret_name(obj: dict[str, Any], name: str, user: str, where: str) -> str:
    """The Secret of `user`: as the status lists it, else by the operator's naming."""
    status = obj.get("status") or {}
    users = [u for u in status.get("users") or [] if isinstance(u, dict)]
    for entry in users:
        if entry.get("name") == user and entry.get("secretName"):
            return str(entry["secretName"])
    if users:
        known = ", ".join(sorted(str(u.get("name")) for u in users))
        raise UnknownUserError(
            f"{where} has no user {user!r} (its users: {known}). Pass user= (or set $GRAIN_USER) to "
            "one of them, or ask the admin to add you to the GrainCluster's spec.users."
        )
    if user == DEFAULT_USER:
        return str(status.get("tokenSecret") or ((obj.get("spec") or {}).get("auth") or {}).get("tokenSecret")
                   or f"{name}-token")
    return f"{name}-user-{user}"


def _private_file(text: str, prefix: str) -> str:
    """Write `text` to a new file only this user can read; return its path."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".crt")  # mode 0600
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


# -- Kubernetes configuration -------------------------------------------------------------


def _in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").exists()


def _load_api_client(kubeconfig: str | None) -> tuple[Any, bool, str]:
    """An ApiClient of its own (no global state), whether it is in-cluster, the default ns."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    if kubeconfig is None and _in_pod():
        config.load_incluster_config(client_configuration=cfg)
        ns_file = SERVICE_ACCOUNT_DIR / "namespace"
        default_ns = ns_file.read_text().strip() if ns_file.exists() else "default"
        return client.ApiClient(cfg), True, default_ns
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    files = [p for p in path.split(os.pathsep) if p]
    if not any(Path(p).expanduser().is_file() for p in files):
        raise KubeconfigNotFoundError(
            f"No kubeconfig at {path!r} and not running in a Kubernetes pod. Point "
            "$KUBECONFIG (or kubeconfig=) at your cluster's kubeconfig (e.g. `kind get "
            "kubeconfig`, `gcloud container clusters get-credentials`), or connect "
            "directly with address='grain://HOST:4242' and token=."
        )
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg)
        _, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError) as e:
        raise KubeconfigNotFoundError(
            f"The kubeconfig at {path!r} cannot be used ({e}). Check its current context "
            "(`kubectl config current-context`) or pass another file as kubeconfig=."
        ) from e
    default_ns = ((active or {}).get("context") or {}).get("namespace") or "default"
    return client.ApiClient(cfg), False, default_ns


def _conditions_hint(status: dict[str, Any]) -> str:
    bad = [
        f"{c.get('type')}: {c.get('message') or c.get('reason') or c.get('status')}"
        for c in status.get("conditions") or []
        if c.get("status") != "True" and c.get("type") not in ("Degraded", "Recovering")
    ]
    return f" ({'; '.join(bad)})" if bad else ""


def _reachable(address: str, timeout: float) -> bool:
    """Whether a TCP connection to the endpoint opens within `timeout` seconds."""
    try:
        ep: Endpoint = parse_endpoint(address)
    except ConfigurationError as e:
        raise ClusterDiscoveryError(
            f"Malformed executor endpoint {address!r} in the GrainCluster's status ({e}); "
            "report this as an operator bug."
        ) from e
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout):
            return True
    except OSError:
        return False
