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
   `kubernetes.stream.portforward` to the *current* executor pod.

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

import base64
import contextlib
import logging
import os
import re
import selectors
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grain.errors import ClusterDiscoveryError, ConfigurationError
from grain.net.endpoints import Endpoint, parse_endpoint

__all__ = [
    "ClusterConnection", "ClusterDiscoveryError", "ClusterNotFoundError", "ClusterNotRunningError",
    "ExecutorPodNotFoundError", "KubeconfigNotFoundError", "KubernetesApiError", "PortForwardError",
    "PortForwardRefusedError", "TokenSecretError", "TokenSecretForbiddenError", "TokenSecretNotFoundError",
    "UnknownUserError", "open_cluster", "resolve_cluster",
]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "grain.dev", "v1", "grainclusters"
EXECUTOR_PORT = 4242
DEFAULT_USER = "default"
USABLE_PHASES = ("Running", "Degraded")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API_TIMEOUT = 10.0

Via = Literal["in-cluster", "external", "port-forward"]


class KubeconfigNotFoundError(ClusterDiscoveryError):
    """No kubeconfig file and not running in a pod."""


class KubernetesApiError(ClusterDiscoveryError):
    """The Kubernetes API could not be reached or answered an unexpected error."""


class ClusterNotFoundError(ClusterDiscoveryError):
    """No GrainCluster of that name in that namespace (or the CRD is not installed)."""


class ClusterNotRunningError(ClusterDiscoveryError):
    """The GrainCluster exists but its phase is not Running (or Degraded)."""


class UnknownUserError(ClusterDiscoveryError):
    """The GrainCluster has no user of that name."""


class TokenSecretError(ClusterDiscoveryError):
    """The user's client Secret could not be read."""


class TokenSecretForbiddenError(TokenSecretError):
    """The current identity may not read the user's Secret (HTTP 403)."""


class TokenSecretNotFoundError(TokenSecretError):
    """The user's Secret, or its `token` (or, with TLS, `ca.crt`) key, does not exist."""


class PortForwardError(ClusterDiscoveryError):
    """No port-forward to the executor could be opened."""


class ExecutorPodNotFoundError(PortForwardError):
    """No running executor pod to forward to."""


class PortForwardRefusedError(PortForwardError):
    """The API server refused the port-forward (RBAC, pod gone, proxy without upgrades)."""


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
    _forwarder: _PortForwarder | None = field(default=None, repr=False)
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
    forwarder: _PortForwarder | None = None
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
    obj = _read_cluster(client.CustomObjectsApi(api), name, namespace)
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
        data = _read_secret(core, secret_name, namespace, where, user)
        ca = _key(data, "ca.crt", secret_name, namespace, where) if server_hostname else None
        token = token or _key(data, "token", secret_name, namespace, where)
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
        forwarder = _PortForwarder(core, namespace, name)
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


# -- API reads -------------------------------------------------------------------------------


def _api_error(e: Exception, what: str) -> KubernetesApiError:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None) or e
    return KubernetesApiError(
        f"Kubernetes API error while reading {what} ({status or 'no answer'}: {reason}). "
        "Check that the cluster is up and your kubeconfig context is right (`kubectl cluster-info`)."
    )


def _read_cluster(custom: Any, name: str, namespace: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    where = f"GrainCluster {namespace}/{name}"
    try:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=API_TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            raise ClusterNotFoundError(
                f"No {where}. List the clusters with `kubectl get grainclusters -A` and pass "
                "the right name and namespace=; if that command says the resource type is "
                "unknown, the Grain CRD is not installed (docs/install.md)."
            ) from e
        if e.status in (401, 403):
            raise KubernetesApiError(
                f"Not allowed to read {where} ({e.status} {e.reason}). Ask your admin for "
                f"`get` on grainclusters.grain.dev in namespace {namespace}, or check your "
                "kubeconfig's credentials."
            ) from e
        raise _api_error(e, where) from e
    except Exception as e:  # urllib3 connection errors, timeouts
        raise _api_error(e, where) from e
    return dict(obj)


def _read_secret(core: Any, secret: str, namespace: str, where: str, user: str) -> dict[str, str]:
    """The Secret's data (still base64-encoded)."""
    from kubernetes.client.exceptions import ApiException

    try:
        obj = core.read_namespaced_secret(secret, namespace, _request_timeout=API_TIMEOUT)
    except ApiException as e:
        if e.status == 403:
            raise TokenSecretForbiddenError(
                f"You may read {where} but not the Secret {namespace}/{secret} of user {user!r} "
                f"(403 Forbidden). Ask your admin to allow `get` on that Secret alone, e.g. "
                f"`kubectl -n {namespace} create role grain-{user} --verb=get "
                f"--resource=secrets --resource-name={secret}` plus a RoleBinding to you "
                "(docs/operator.md); or pass the token yourself (token=, or $GRAIN_TOKEN with address=)."
            ) from e
        if e.status == 404:
            raise TokenSecretNotFoundError(
                f"The Secret {namespace}/{secret} of user {user!r} of {where} does not exist. The "
                "operator creates it for each user of spec.users: check "
                f"`kubectl -n {namespace} describe graincluster` and the operator's logs."
            ) from e
        raise _api_error(e, f"Secret {namespace}/{secret}") from e
    except Exception as e:
        raise _api_error(e, f"Secret {namespace}/{secret}") from e
    return dict(obj.data or {})


def _key(data: dict[str, str], key: str, secret: str, namespace: str, where: str) -> str:
    if key not in data or not data[key]:
        why = ("the operator adds it when TLS is on: wait a few seconds and retry, or see "
               f"`kubectl -n {namespace} describe graincluster`" if key == "ca.crt" else
               f"recreate it with `kubectl -n {namespace} create secret generic {secret} --from-literal=token=...`")
        raise TokenSecretNotFoundError(f"Secret {namespace}/{secret} of {where} has no key {key!r}: {why}.")
    return base64.b64decode(data[key]).decode().strip() + ("\n" if key == "ca.crt" else "")


def _conditions_hint(status: dict[str, Any]) -> str:
    bad = [
        f"{c.get('type')}: {c.get('message') or c.get('reason') or c.get('status')}"
        for c in status.get("conditions") or []
        if c.get("status") != "True" and c.get("type") not in ("Degraded", "Recovering")
    ]
    return f" ({'; '.join(bad)})" if bad else ""


def _executor_pod(core: Any, name: str, namespace: str) -> tuple[str, int]:
    """A running executor pod (selected like Service NAME-executor does, ready ones first) and its grain port."""
    from kubernetes.client.exceptions import ApiException

    service = f"{name}-executor"
    try:
        svc = core.read_namespaced_service(service, namespace, _request_timeout=API_TIMEOUT)
        selector = dict(svc.spec.selector or {})
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = core.list_namespaced_pod(namespace, label_selector=label_selector,
                                        _request_timeout=API_TIMEOUT).items if selector else []
    except ApiException as e:
        if e.status == 404:
            raise ExecutorPodNotFoundError(
                f"Service {namespace}/{service} does not exist, so the executor pod cannot be "
                f"found for a port-forward. The operator creates it; check "
                f"`kubectl -n {namespace} describe graincluster {name}`."
            ) from e
        raise _api_error(e, f"the executor of GrainCluster {namespace}/{name}") from e
    except Exception as e:
        raise _api_error(e, f"the executor of GrainCluster {namespace}/{name}") from e
    candidates = [
        p for p in pods
        if all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())  # some servers ignore selectors
        and p.status is not None and p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    ]
    candidates.sort(key=lambda p: not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))
    if not candidates:
        raise ExecutorPodNotFoundError(
            f"No running executor pod behind Service {namespace}/{service}. See "
            f"`kubectl -n {namespace} get pods -l {','.join(f'{k}={v}' for k, v in sorted(selector.items()))}` "
            "and their events."
        )
    pod = candidates[0]
    return pod.metadata.name, _target_port(svc, pod)


def _target_port(svc: Any, pod: Any) -> int:
    """The pod port behind the Service's `grain` port (a number or a named port)."""
    for port in svc.spec.ports or []:
        if port.name == "grain" or len(svc.spec.ports) == 1:
            target = port.target_port if port.target_port is not None else port.port
            if isinstance(target, int) or str(target).isdigit():
                return int(target)
            for container in pod.spec.containers or []:
                for cport in container.ports or []:
                    if cport.name == target:
                        return int(cport.container_port)
    return EXECUTOR_PORT


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


# -- port-forward ----------------------------------------------------------------------------


def _handshake_status(message: str) -> str:
    """The HTTP status in the client's "Handshake status 403 Forbidden" message ("" if none)."""
    m = re.search(r"Handshake status (\d+)", message)
    return m.group(1) if m else ""


class _PortForwarder:
    """127.0.0.1:<local_port> relayed to the executor pod, one port-forward stream per connection.

    The pod is looked up at start and again whenever a stream cannot be opened or ends with
    an error (the executor pod was replaced). The first stream is opened in the constructor
    so that a refusal (RBAC, a proxy without WebSocket upgrades) is raised here. Threads: one
    accepting, one per relayed connection; the official client adds one per stream. Calls to
    the API hold ``_lock``: ``kubernetes.stream`` swaps the client's transport while it opens.
    """

    def __init__(self, core: Any, namespace: str, cluster: str) -> None:
        self._core, self._namespace, self._cluster = core, namespace, cluster
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.pod, self._port = _executor_pod(core, cluster, namespace)
        self._stale = False
        self._spare: Any = self._open_stream()  # raises when refused: nothing to clean yet
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.local_port: int = self._listener.getsockname()[1]
        self._start(self._accept_loop, "grain-portforward-accept")

    def _start(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _open_stream(self) -> Any:
        """A stream to the current pod; the pod is looked up again if that fails once."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        with self._lock:
            for attempt in (1, 2):
                if self._stale or attempt == 2:
                    self.pod, self._port = _executor_pod(self._core, self._cluster, self._namespace)
                    self._stale = False
                try:
                    return portforward(self._core.connect_get_namespaced_pod_portforward, self.pod,
                                       self._namespace, ports=str(self._port))
                except ApiException as e:
                    code = _handshake_status(str(e.reason))
                    if code == "404" and attempt == 1:
                        continue  # the pod is gone: find its successor
                    raise self._refused(e, code) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, e: Any, code: str) -> PortForwardRefusedError:
        hint = (
            "You may not port-forward: ask your admin for `create` on pods/portforward in namespace "
            f"{self._namespace}, or connect with address= from inside the cluster."
            if code == "403" else
            "Check that the pod still exists and that nothing between you and the API server (a "
            "proxy, a load balancer) blocks WebSocket upgrades; or expose the executor with "
            "spec.executor.serviceType NodePort/LoadBalancer."
        )
        return PortForwardRefusedError(
            f"The Kubernetes API refused a port-forward to pod {self._namespace}/{self.pod} port "
            f"{self._port} ({e.reason}). {hint}"
        )

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                stream, self._spare = self._spare or self._open_stream(), None
            except ClusterDiscoveryError as e:  # no executor pod right now: the client retries
                log.warning("%s", e)
                conn.close()
                continue
            conn.setblocking(True)
            self._conns.add(conn)
            self._start(self._relay, f"grain-portforward-{conn.fileno()}", conn, stream, self._port)

    def _relay(self, conn: socket.socket, stream: Any, port: int) -> None:
        remote = stream.socket(port)
        remote.setblocking(True)
        with selectors.DefaultSelector() as sel:
            sel.register(conn, selectors.EVENT_READ, remote)
            sel.register(remote._socket, selectors.EVENT_READ, conn)
            try:
                while not self._closed.is_set():
                    for key, _ in sel.select(timeout=0.5):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
            except OSError as e:
                if not self._closed.is_set():
                    log.debug("port-forward connection ended: %s", e)
            finally:
                self._conns.discard(conn)
                for s in (conn, remote):
                    with contextlib.suppress(OSError):
                        s.close()
                error = stream.error(port)
                if error:  # e.g. the pod's port refused: it is restarting or gone
                    log.info("port-forward to pod %s: %s", self.pod, error.strip())
                    self._stale = True

    def close(self) -> None:
        """Stop accepting, close every relayed connection and stream; wait for the threads."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        self._core.api_client.close()
