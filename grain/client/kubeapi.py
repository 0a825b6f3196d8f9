"""The Kubernetes API as cluster discovery (``grain.client.discovery``) uses it: the errors
it raises, the reads of a GrainCluster and of a user's Secret, and the port-forward to the
executor pod (a loopback listening socket whose every connection gets its own stream of the
official client's ``kubernetes.stream.portforward`` to the *current* executor pod).

Everything here blocks on the API. Every failure is a subclass of
``grain.errors.ClusterDiscoveryError`` whose message says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import selectors
import socket
import threading
from typing import Any

from grain.errors import ClusterDiscoveryError

log = logging.getLogger("grain.client.discovery")

GROUP, VERSION, PLURAL = "grain.dev", "v1", "grainclusters"
EXECUTOR_PORT = 4242
API_TIMEOUT = 10.0


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


# -- reads -------------------------------------------------------------------------------


def _api_error(e: Exception, what: str) -> KubernetesApiError:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None) or e
    return KubernetesApiError(
        f"Kubernetes API error while reading {what} ({status or 'no answer'}: {reason}). "
        "Check that the cluster is up and your kubeconfig context is right (`kubectl cluster-info`)."
    )


def read_cluster(custom: Any, name: str, namespace: str) -> dict[str, Any]:
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


def read_secret(core: Any, secret: str, namespace: str, where: str, user: str) -> dict[str, str]:
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


def secret_key(data: dict[str, str], key: str, secret: str, namespace: str, where: str) -> str:
    if key not in data or not data[key]:
        why = ("the operator adds it when TLS is on: wait a few seconds and retry, or see "
               f"`kubectl -n {namespace} describe graincluster`" if key == "ca.crt" else
               f"recreate it with `kubectl -n {namespace} create secret generic {secret} --from-literal=token=...`")
        raise TokenSecretNotFoundError(f"Secret {namespace}/{secret} of {where} has no key {key!r}: {why}.")
    return base64.b64decode(data[key]).decode().strip() + ("\n" if key == "ca.crt" else "")


def executor_pod(core: Any, name: str, namespace: str) -> tuple[str, int]:
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


# -- the port-forward ----------------------------------------------------------------------------


def _handshake_status(message: str) -> str:
    """The HTTP status in the client's "Handshake status 403 Forbidden" message ("" if none)."""
    m = re.search(r"Handshake status (\d+)", message)
    return m.group(1) if m else ""


def _hang_up(remote: Any) -> None:
    """Close our end of the official client's socket pair without resetting it: say we are
    done (its proxy thread then closes its end), read what it still had for us, then close.
    Closed with bytes unread, or while the proxy still writes, the pair is reset, and the
    proxy thread dies with a traceback on the user's terminal."""
    with contextlib.suppress(OSError):
        remote.shutdown(socket.SHUT_WR)
        remote.settimeout(2.0)
        while remote.recv(65536):
            pass
    with contextlib.suppress(OSError):
        remote.close()


class PortForwarder:
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
        self.pod, self._port = executor_pod(core, cluster, namespace)
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
                    self.pod, self._port = executor_pod(self._core, self._cluster, self._namespace)
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
            sel.register(conn, selectors.EVENT_READ, (conn, remote))
            sel.register(remote._socket, selectors.EVENT_READ, (remote._socket, conn))
            try:
                while not self._closed.is_set():
                    for key, _ in sel.select(timeout=0.5):
                        source, sink = key.data   # what is readable, where its bytes go
                        data = source.recv(65536)
                        if not data:
                            return
                        sink.sendall(data)
            except OSError as e:
                if not self._closed.is_set():
                    log.debug("port-forward connection ended: %s", e)
            finally:
                self._conns.discard(conn)
                with contextlib.suppress(OSError):
                    conn.close()
                _hang_up(remote)
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
