"""Find a GrainCluster through the Kubernetes API and connect to its executor.

`grain.run_combine(main, cluster="demo")` and `grain status --cluster demo` call
`open_cluster`: it loads the kubeconfig (or the in-cluster service account), reads the
GrainCluster's status (phase, endpoints, token Secret) and the token, then picks the way
in, in this order:

1. running in a pod: `status.endpoints.inCluster` (the executor Service's DNS name);
2. `status.endpoints.external` (NodePort/LoadBalancer) when a TCP connect succeeds quickly;
3. a port-forward to the executor pod, opened and closed here: a loopback listening
   socket whose every connection is relayed over its own Kubernetes port-forward stream.

The kubernetes client is synchronous, so this module is too: call it before entering
trio, or from a worker thread (`trio.to_thread.run_sync`). Every failure raises a subclass
of `grain.errors.ClusterDiscoveryError` whose message says what to do; the subclasses are
defined here (KubeconfigNotFoundError, ClusterNotFoundError, ClusterNotRunningError,
TokenSecretForbiddenError, TokenSecretNotFoundError, ExecutorPodNotFoundError,
PortForwardRefusedError, KubernetesApiError).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import selectors
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grain.errors import ClusterDiscoveryError

__all__ = [
    "ClusterConnection",
    "ClusterDiscoveryError",
    "ClusterNotFoundError",
    "ClusterNotRunningError",
    "ExecutorPodNotFoundError",
    "KubeconfigNotFoundError",
    "KubernetesApiError",
    "PortForwardError",
    "PortForwardRefusedError",
    "TokenSecretError",
    "TokenSecretForbiddenError",
    "TokenSecretNotFoundError",
    "open_cluster",
    "resolve_cluster",
]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "grain.dev", "v1", "grainclusters"
EXECUTOR_PORT = 4242
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


class TokenSecretError(ClusterDiscoveryError):
    """The cluster's token Secret could not be read."""


class TokenSecretForbiddenError(TokenSecretError):
    """The current identity may not read the token Secret (HTTP 403)."""


class TokenSecretNotFoundError(TokenSecretError):
    """The token Secret, or its `token` key, does not exist."""


class PortForwardError(ClusterDiscoveryError):
    """No port-forward to the executor could be opened."""


class ExecutorPodNotFoundError(PortForwardError):
    """No running executor pod to forward to."""


class PortForwardRefusedError(PortForwardError):
    """The API server refused the port-forward (RBAC, pod gone, proxy without upgrades)."""


@dataclass
class ClusterConnection:
    """How to reach one GrainCluster's executor: `address` (grain://host:port) and `token`.

    `via` says which way was chosen. A port-forward lives as long as this object: use it
    as a context manager (or call `close()`) so that the forward is closed.
    """

    name: str
    namespace: str
    address: str
    token: str = field(repr=False)
    via: Via
    phase: str = "Running"
    _forwarder: _PortForwarder | None = field(default=None, repr=False)

    def close(self) -> None:
        """Close the port-forward, if there is one. Idempotent."""
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None

    def __enter__(self) -> ClusterConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def open_cluster(
    name: str,
    namespace: str | None = None,
    *,
    kubeconfig: str | None = None,
    token: str | None = None,
    connect_timeout: float = 1.0,
) -> Iterator[ClusterConnection]:
    """`with open_cluster("demo") as conn:` -> a `ClusterConnection`, closed on exit."""
    conn = resolve_cluster(
        name, namespace, kubeconfig=kubeconfig, token=token, connect_timeout=connect_timeout
    )
    try:
        yield conn
    finally:
        conn.close()


def resolve_cluster(
    name: str,
    namespace: str | None = None,
    *,
    kubeconfig: str | None = None,
    token: str | None = None,
    connect_timeout: float = 1.0,
) -> ClusterConnection:
    """Find GrainCluster `name` and return a live way to its executor.

    `namespace` defaults to the kubeconfig context's namespace (in a pod: the pod's own),
    then `default`. `kubeconfig` is a file path; without it, a pod uses its service account
    and otherwise `$KUBECONFIG` or `~/.kube/config` is read. `token` skips reading the
    Secret. `connect_timeout` bounds the TCP check of the external endpoint.
    The caller must `close()` the result (or use `open_cluster`).
    """
    api, in_cluster, default_ns = _load_api_client(kubeconfig)
    forwarder: _PortForwarder | None = None
    try:
        conn = _resolve(api, in_cluster, name, namespace or default_ns, token, connect_timeout)
        forwarder = conn._forwarder
        return conn
    finally:
        if forwarder is None:  # a port-forward keeps using the client until it is closed
            api.close()


def _resolve(
    api: Any, in_cluster: bool, name: str, namespace: str, token: str | None, timeout: float
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
        log.warning("%s is %s: some workers are missing; connecting anyway", where, phase)
    core = client.CoreV1Api(api)
    if token is None:
        secret_name = (
            status.get("tokenSecret")
            or ((obj.get("spec") or {}).get("auth") or {}).get("tokenSecret")
            or f"{name}-token"
        )
        token = _read_token(core, secret_name, namespace, where)
    endpoints = status.get("endpoints") or {}

    def make(address: str, via: Via) -> ClusterConnection:
        return ClusterConnection(name, namespace, address, token, via, phase)

    if in_cluster:
        address = endpoints.get("inCluster") or (
            f"grain://{name}-executor.{namespace}.svc:{EXECUTOR_PORT}"
        )
        return make(address, "in-cluster")
    external = endpoints.get("external")
    if external and _reachable(external, timeout):
        return make(external, "external")
    if external:
        log.info("%s: external endpoint %s not reachable; port-forwarding", where, external)
    pod, port = _executor_pod(core, name, namespace)
    forwarder = _PortForwarder(core, namespace, pod, port)
    scheme = _split_address(endpoints.get("inCluster") or "grain://x:0")[0]
    conn = make(f"{scheme}://127.0.0.1:{forwarder.local_port}", "port-forward")
    conn._forwarder = forwarder
    log.info("%s: port-forward 127.0.0.1:%d -> pod %s:%d", where, forwarder.local_port, pod, port)
    return conn


# -- Kubernetes configuration -------------------------------------------------------------


def _in_pod() -> bool:
    return (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").exists()
    )


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
        "Check that the cluster is up and your kubeconfig context is right "
        "(`kubectl cluster-info`)."
    )


def _read_cluster(custom: Any, name: str, namespace: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    where = f"GrainCluster {namespace}/{name}"
    try:
        return custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=API_TIMEOUT
        )
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


def _read_token(core: Any, secret: str, namespace: str, where: str) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        obj = core.read_namespaced_secret(secret, namespace, _request_timeout=API_TIMEOUT)
    except ApiException as e:
        if e.status == 403:
            raise TokenSecretForbiddenError(
                f"You may read {where} but not its token Secret {namespace}/{secret} "
                f"(403 Forbidden). Ask your admin to allow `get` on that Secret, e.g. "
                f"`kubectl -n {namespace} create role grain-client --verb=get "
                f"--resource=secrets --resource-name={secret}` plus a RoleBinding to you; "
                "or pass the token yourself (token=, or $GRAIN_TOKEN with address=)."
            ) from e
        if e.status == 404:
            raise TokenSecretNotFoundError(
                f"The token Secret {namespace}/{secret} of {where} does not exist. The "
                "operator creates it when the cluster starts: check "
                f"`kubectl -n {namespace} describe graincluster` and the operator's logs."
            ) from e
        raise _api_error(e, f"Secret {namespace}/{secret}") from e
    except Exception as e:
        raise _api_error(e, f"Secret {namespace}/{secret}") from e
    data = obj.data or {}
    if "token" not in data:
        raise TokenSecretNotFoundError(
            f"Secret {namespace}/{secret} of {where} has no key 'token'. Recreate it with "
            f"`kubectl -n {namespace} create secret generic {secret} --from-literal=token=...`."
        )
    return base64.b64decode(data["token"]).decode().strip()


def _conditions_hint(status: dict[str, Any]) -> str:
    bad = [
        f"{c.get('type')}: {c.get('message') or c.get('reason') or c.get('status')}"
        for c in status.get("conditions") or []
        if c.get("status") != "True" and c.get("type") != "Degraded"
    ]
    return f" ({'; '.join(bad)})" if bad else ""


def _executor_pod(core: Any, name: str, namespace: str) -> tuple[str, int]:
    """A ready executor pod (selected like Service NAME-executor does) and its grain port."""
    from kubernetes.client.exceptions import ApiException

    service = f"{name}-executor"
    try:
        svc = core.read_namespaced_service(service, namespace, _request_timeout=API_TIMEOUT)
        pods = None
        selector = dict(svc.spec.selector or {})
        if selector:
            label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            pods = core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=API_TIMEOUT
            ).items
    except ApiException as e:
        if e.status == 404:
            raise ExecutorPodNotFoundError(
                f"Service {namespace}/{service} does not exist, so the executor pod cannot be "
                "found for a port-forward. The operator creates it; check "
                f"`kubectl -n {namespace} describe graincluster {name}`."
            ) from e
        raise _api_error(e, f"the executor of GrainCluster {namespace}/{name}") from e
    except Exception as e:
        raise _api_error(e, f"the executor of GrainCluster {namespace}/{name}") from e
    candidates = [
        p
        for p in pods or []
        if all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())
        and p.status is not None
        and p.status.phase == "Running"
        and p.metadata.deletion_timestamp is None
    ]
    candidates.sort(key=lambda p: not _pod_ready(p))
    if not candidates:
        raise ExecutorPodNotFoundError(
            f"No running executor pod behind Service {namespace}/{service}. See "
            f"`kubectl -n {namespace} get pods -l "
            f"{','.join(f'{k}={v}' for k, v in sorted(selector.items()))}` and their events."
        )
    pod = candidates[0]
    return pod.metadata.name, _target_port(svc, pod)


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


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


# -- addresses -------------------------------------------------------------------------------

_ADDRESS = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d+)/?$"
)


def _split_address(address: str) -> tuple[str, str, int]:
    """`grain://host:port` -> (scheme, host, port); IPv6 hosts in brackets."""
    m = _ADDRESS.match(address.strip())
    if not m:
        raise ClusterDiscoveryError(
            f"Malformed executor endpoint {address!r} in the GrainCluster's status; expected "
            "grain://HOST:PORT. Report this as an operator bug."
        )
    return m["scheme"], m["host"].strip("[]"), int(m["port"])


def _reachable(address: str, timeout: float) -> bool:
    """Whether a TCP connection to the endpoint opens within `timeout` seconds."""
    _, host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- port-forward ----------------------------------------------------------------------------


def _handshake_status(message: str) -> str:
    m = re.search(r"Handshake status (\d+)", message)
    return m.group(1) if m else ""


class _PortForwarder:
    """127.0.0.1:<local_port> relayed to `pod`:`port`, one port-forward stream per connection.

    The first stream is opened in the constructor, so that a refusal is raised here, and
    handed to the first connection. Threads: one accepting, one per relayed connection.
    """

    def __init__(self, core: Any, namespace: str, pod: str, port: int) -> None:
        self._core, self._namespace, self._pod, self._port = core, namespace, pod, port
        self._lock = threading.Lock()  # kubernetes.stream swaps call_api while it opens
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._spare: Any = self._open_stream()  # raises when refused: nothing to clean yet
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.5)
        self.local_port: int = self._listener.getsockname()[1]
        self._start(self._accept_loop, "grain-portforward-accept")

    def _start(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _open_stream(self) -> Any:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        target = f"pod {self._namespace}/{self._pod} port {self._port}"
        try:
            with self._lock:
                return portforward(
                    self._core.connect_get_namespaced_pod_portforward,
                    self._pod,
                    self._namespace,
                    ports=str(self._port),
                )
        except ApiException as e:
            code = _handshake_status(str(e.reason))
            hint = (
                "You may not port-forward: ask your admin for `create` on pods/portforward "
                f"in namespace {self._namespace}, or connect with address= from inside the "
                "cluster."
                if code == "403"
                else "Check that the pod still exists and that nothing between you and the "
                "API server (a proxy, a load balancer) blocks WebSocket upgrades; or expose "
                "the executor with spec.executor.serviceType NodePort/LoadBalancer."
            )
            raise PortForwardRefusedError(
                f"The Kubernetes API refused a port-forward to {target} ({e.reason}). {hint}"
            ) from e

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
            except PortForwardError as e:
                log.error("%s", e)
                conn.close()
                continue
            conn.setblocking(True)
            self._conns.add(conn)
            self._start(self._relay, f"grain-portforward-{conn.fileno()}", conn, stream)

    def _relay(self, conn: socket.socket, stream: Any) -> None:
        remote = stream.socket(self._port)
        remote.setblocking(True)
        sel = selectors.DefaultSelector()
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
            sel.close()
            self._conns.discard(conn)
            for s in (conn, remote):
                with contextlib.suppress(OSError):
                    s.close()
            error = stream.error(self._port)
            if error:
                log.warning("port-forward to pod %s: %s", self._pod, error.strip())

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
