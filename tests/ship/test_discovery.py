"""grain.client.discovery against KMock: each way in, users and TLS, and each error with its advice."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import socketserver
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from kmock_harness import KMock
from process_tools import Processes
from support.waiting import free_port

import grain.errors
from grain.client import discovery, kubeapi
from grain.client.discovery import (
    ClusterDiscoveryError,
    ClusterNotFoundError,
    ClusterNotRunningError,
    ExecutorPodNotFoundError,
    KubeconfigNotFoundError,
    PortForwardRefusedError,
    TokenSecretForbiddenError,
    TokenSecretNotFoundError,
    UnknownUserError,
    open_cluster,
    resolve_cluster,
)

from .conftest import StandInExecutor

FakeApi = KMock

NS = "science"
GRC = "grain.dev/v1/grainclusters"
SELECTOR = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "executor"}


def _cluster(api: FakeApi, phase: str = "Running", **status: Any) -> None:
    status = {
        "phase": phase,
        "endpoints": {"inCluster": f"grain://demo-executor.{NS}.svc:4242"},
        "tokenSecret": "demo-token",
        **status,
    }
    api.put(
        GRC,
        NS,
        "demo",
        {"apiVersion": "grain.dev/v1", "kind": "GrainCluster", "spec": {}, "status": status},
    )


def _secret(api: FakeApi, name: str = "demo-token", token: str = "s3cret", ca: str | None = None) -> None:
    data = {"token": base64.b64encode(token.encode()).decode()}
    if ca is not None:
        data["ca.crt"] = base64.b64encode(ca.encode()).decode()
    api.put("v1/secrets", NS, name, {"apiVersion": "v1", "kind": "Secret", "data": data})


def _executor_pod(api: FakeApi, name: str = "demo-executor-abc", labels: dict[str, str] | None = None) -> None:
    container = {"name": "executor", "image": "grain", "ports": [{"name": "grain", "containerPort": 4242}]}
    api.put("v1/pods", NS, name, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"labels": labels or SELECTOR},
        "spec": {"containers": [container]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })


def _executor_objects(api: FakeApi, target_port: Any = 4242) -> None:
    api.put(
        "v1/services",
        NS,
        "demo-executor",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "spec": {
                "selector": SELECTOR,
                "ports": [
                    {"name": "grain", "port": 4242, "targetPort": target_port},
                    {"name": "http", "port": 8080, "targetPort": 8080},
                ],
            },
        },
    )
    container = {
        "name": "executor",
        "image": "grain",
        "ports": [{"name": "grain", "containerPort": 4242}],
    }
    api.put(
        "v1/pods",
        NS,
        "demo-executor-abc",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"labels": SELECTOR},
            "spec": {"containers": [container]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    # A pod of another cluster in the same namespace is never chosen (KMock ignores selectors).
    api.put(
        "v1/pods",
        NS,
        "other-executor-xyz",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"labels": {**SELECTOR, "app.kubernetes.io/instance": "other"}},
            "spec": {"containers": [container]},
            "status": {"phase": "Running"},
        },
    )


def _roundtrip(address: str) -> bytes:
    host, port = address.removeprefix("grain://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"hello")
        return s.recv(100)


@pytest.fixture
def kubeconfig(api: FakeApi, tmp_path: Path) -> str:
    return api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)


def test_external_endpoint_used_when_reachable(api, kubeconfig, executor: StandInExecutor):
    _cluster(api, endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    _secret(api)
    with open_cluster("demo", kubeconfig=kubeconfig) as conn:  # namespace from the context
        assert (conn.via, conn.namespace, conn.token) == ("external", NS, "s3cret")
        assert conn.address == f"grain://127.0.0.1:{executor.port}"
        assert _roundtrip(conn.address) == b"executor:hello"
    assert "s3cret" not in repr(conn)


def test_secret_name_defaults_to_name_token(api, kubeconfig, executor):
    _cluster(api, tokenSecret=None, endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    _secret(api, "demo-token", "from-default-name")
    with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert conn.token == "from-default-name"


def test_port_forward_when_external_unreachable(api, kubeconfig, executor):
    _cluster(
        api,
        endpoints={
            "inCluster": "grain://demo-executor.science.svc:4242",
            "external": f"grain://127.0.0.1:{free_port()}",
        },
    )
    _secret(api)
    _executor_objects(api, target_port="grain")  # a named targetPort, resolved in the pod
    api.km.forward_to = executor.port
    with open_cluster("demo", NS, kubeconfig=kubeconfig, connect_timeout=0.2) as conn:
        assert conn.via == "port-forward"
        assert conn.address.startswith("grain://127.0.0.1:")
        assert _roundtrip(conn.address) == b"executor:hello"
        assert _roundtrip(conn.address) == b"executor:hello"  # a second connection, new stream
        local_port = int(conn.address.rsplit(":", 1)[1])
    assert api.km.forwards == [f"{NS}/demo-executor-abc:4242"] * 2
    with pytest.raises(OSError):  # closed on exit
        socket.create_connection(("127.0.0.1", local_port), timeout=1).close()


def test_in_cluster_uses_service_dns(api, kubeconfig, monkeypatch):
    _cluster(api)
    _secret(api)
    real = discovery._load_api_client
    monkeypatch.setattr(discovery, "_load_api_client", lambda cfg: (real(kubeconfig)[0], True, NS))
    conn = resolve_cluster("demo")
    assert (conn.via, conn.address) == ("in-cluster", f"grain://demo-executor.{NS}.svc:4242")


def test_explicit_token_skips_the_secret(api, kubeconfig, executor):
    _cluster(api, endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    with open_cluster("demo", NS, kubeconfig=kubeconfig, token="given") as conn:
        assert conn.token == "given"


# -- errors: each a ClusterDiscoveryError whose message says what to do ----------------------


def test_no_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeconfigNotFoundError, match=r"KUBECONFIG.*address="):
        resolve_cluster("demo")


def test_no_such_cluster(api, kubeconfig):
    api.km.resources[GRC] = {"kind": "GrainCluster", "namespaced": True}
    with pytest.raises(ClusterNotFoundError, match=r"science/nope.*kubectl get grainclusters -A"):
        resolve_cluster("nope", kubeconfig=kubeconfig)


@pytest.mark.parametrize("phase", ["Pending", "Failed"])
def test_cluster_not_running(api, kubeconfig, phase):
    conditions = [{"type": "ExecutorReady", "status": "False", "message": "image pull backoff"}]
    _cluster(api, phase=phase, conditions=conditions)
    with pytest.raises(ClusterNotRunningError, match=rf"is {phase}.*image pull backoff.*Wait"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


def test_degraded_cluster_is_usable(api, kubeconfig, executor):
    _cluster(api, phase="Degraded", endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    _secret(api)
    with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert conn.phase == "Degraded"


def test_secret_forbidden(api, kubeconfig):
    _cluster(api)
    api.km["get", kmock_resource("v1/secrets")] << kmock_forbidden()
    with pytest.raises(TokenSecretForbiddenError, match=r"403.*create role.*token="):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


def test_secret_missing(api, kubeconfig):
    _cluster(api)
    api.km.resources["v1/secrets"] = {"kind": "Secret", "namespaced": True}
    with pytest.raises(TokenSecretNotFoundError, match="does not exist"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


@pytest.mark.parametrize("status, advice", [(403, "pods/portforward"), (400, "WebSocket")])
def test_port_forward_refused(api, kubeconfig, status, advice):
    _cluster(api)
    _secret(api)
    _executor_objects(api)
    api.km.refuse_with = status
    with pytest.raises(PortForwardRefusedError, match=rf"refused a port-forward.*{advice}"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


def test_no_executor_pod(api, kubeconfig):
    _cluster(api)
    _secret(api)
    _executor_objects(api)
    del api.km.objects["v1/pods", NS, "demo-executor-abc"]
    with pytest.raises(ExecutorPodNotFoundError, match="No running executor pod"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


def test_every_error_is_a_discovery_error():
    defined_in = (discovery.__name__, kubeapi.__name__)   # kubeapi: the API reads, port-forward
    errors = [
        v
        for v in {**vars(discovery), **vars(kubeapi)}.values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ in defined_in
    ]
    assert len(errors) >= 8
    assert all(issubclass(e, ClusterDiscoveryError) for e in errors)
    assert issubclass(ClusterDiscoveryError, grain.errors.GrainError)
    assert all(e.__doc__ for e in errors)


def kmock_resource(name: str):
    import kmock

    return kmock.resource(name)


def kmock_forbidden():
    import kmock

    return kmock.KubernetesError(
        status=403, reason="Forbidden", message='secrets "demo-token" is forbidden'
    )


# -- users, TLS, and the executor pod being replaced ---------------------------------------------


def _users(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "secretName": "demo-token" if n == "default" else f"demo-user-{n}"} for n in names]


def test_each_user_reads_their_own_secret(api, kubeconfig, executor, monkeypatch):
    _cluster(api, users=_users("alice", "bob"), endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    _secret(api, "demo-user-alice", "alice-token")
    _secret(api, "demo-user-bob", "bob-token")
    with open_cluster("demo", NS, kubeconfig=kubeconfig, user="alice") as conn:
        assert (conn.user, conn.token) == ("alice", "alice-token")
    monkeypatch.setenv("GRAIN_USER", "bob")
    with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert (conn.user, conn.token) == ("bob", "bob-token")
    monkeypatch.delenv("GRAIN_USER")
    with pytest.raises(UnknownUserError, match=r"no user 'default' \(its users: alice, bob\).*GRAIN_USER"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)
    gets = [str(r.url.path) for r in api.requests() if "/secrets/" in str(r.url.path)]
    assert gets and all(p.endswith(("/demo-user-alice", "/demo-user-bob")) for p in gets)  # never another's


def test_tls_ca_in_a_private_file_and_the_service_name_to_verify(api, kubeconfig, executor):
    _cluster(api, users=_users("default"), endpoints={
        "external": f"grain://127.0.0.1:{executor.port}", "tlsServerName": "demo-executor.science.svc"})
    _secret(api, ca="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----")
    with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert conn.tls and conn.server_hostname == "demo-executor.science.svc"
        path = Path(conn.ca_file)
        assert path.read_text().startswith("-----BEGIN CERTIFICATE-----\nCA")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists() and conn.ca_file is None  # removed on close


def test_tls_without_ca_in_the_secret_says_so(api, kubeconfig):
    _cluster(api, endpoints={"tlsServerName": "demo-executor.science.svc"})
    _secret(api)
    with pytest.raises(TokenSecretNotFoundError, match=r"no key 'ca.crt'.*TLS"):
        resolve_cluster("demo", NS, kubeconfig=kubeconfig)


def _tls_echo(tmp_path: Path) -> tuple[Any, int, Any]:
    """A TLS echo server with a certificate as the operator makes it; (issued, port, stop)."""
    tls = pytest.importorskip("grain_operator.tls")
    names = pytest.importorskip("grain_operator.names")
    owner = names.Owner("demo", NS)
    issued = tls.issue(owner, tls.dns_names(owner))
    (tmp_path / "tls.crt").write_text(issued.cert_pem)
    (tmp_path / "tls.key").write_text(issued.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.sendall(b"executor:" + conn.recv(100))
            except (ssl.SSLError, OSError):
                pass
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return issued, listener.getsockname()[1], stop


def test_tls_through_the_port_forward_verifies_the_service_name(api, kubeconfig, tmp_path):
    issued, port, stop = _tls_echo(tmp_path)
    try:
        _cluster(api, endpoints={"inCluster": "grain://demo-executor.science.svc:4242",
                                 "tlsServerName": "demo-executor.science.svc"})
        _secret(api, ca=issued.ca_pem)
        _executor_objects(api)
        api.km.forward_to = port
        with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
            assert conn.via == "port-forward" and conn.address.startswith("grain://127.0.0.1:")
            host, local = conn.address.removeprefix("grain://").rsplit(":", 1)
            client = ssl.create_default_context(cafile=conn.ca_file)
            with socket.create_connection((host, int(local)), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname=conn.server_hostname) as tls_conn:
                tls_conn.sendall(b"hello")
                assert tls_conn.recv(100) == b"executor:hello"
    finally:
        stop.set()


def test_the_port_forward_follows_a_replaced_executor_pod(api, kubeconfig, executor):
    _cluster(api)
    _secret(api)
    _executor_objects(api)
    api.km.forward_to = executor.port
    with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert _roundtrip(conn.address) == b"executor:hello"
        # the executor pod is replaced (a rollout, an OOM kill): same address, new pod
        del api.km.objects["v1/pods", NS, "demo-executor-abc"]
        _executor_pod(api, "demo-executor-def")
        assert _roundtrip(conn.address) == b"executor:hello"
        # while no executor pod exists, a connection is closed at once (the client retries)
        del api.km.objects["v1/pods", NS, "demo-executor-def"]
        host, port = conn.address.removeprefix("grain://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        _executor_pod(api, "demo-executor-ghi")
        assert _roundtrip(conn.address) == b"executor:hello"
    assert [f.split("/")[1] for f in api.km.forwards] == [
        "demo-executor-abc:4242", "demo-executor-def:4242", "demo-executor-ghi:4242"]


def test_refresh_reads_the_status_again(api, kubeconfig, executor):
    _cluster(api, endpoints={"external": f"grain://127.0.0.1:{executor.port}"})
    _secret(api)
    with StandInExecutor() as moved, open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
        assert conn.address == f"grain://127.0.0.1:{executor.port}"
        _cluster(api, endpoints={"external": f"grain://127.0.0.1:{moved.port}"})
        _secret(api, token="rotated-by-the-admin")
        assert conn.refresh() is conn
        assert conn.address == f"grain://127.0.0.1:{moved.port}" and conn.token == "rotated-by-the-admin"
        assert _roundtrip(conn.address) == b"executor:hello"


# -- cluster= and `grain status --cluster` on a real TLS executor --------------------------------


@pytest.fixture
def real(api, tmp_path):
    """A real executor (TLS, per-user tokens) and one worker behind KMock's port-forward."""
    from .real_cluster import RealCluster

    pytest.importorskip("grain_operator.tls")
    with Processes() as procs:
        cluster = RealCluster(api, procs, tmp_path, users={"alice": "alice-token-" + "a" * 16, "bob": "bob-token-" + "b" * 16})
        cluster.start_executor()
        cluster.start_worker("node-a", sorted(os.sched_getaffinity(0))[0])
        cluster.wait_workers({"node-a"})
        cluster.publish()
        cluster.publish_executor_pod("demo-executor-abc")
        yield cluster


def _squares(**where: Any) -> list[Any]:
    import grain
    from grain.resource import Cores

    async def main() -> list[Any]:
        async with grain.open_waitgroup() as wg:
            for i in range(4):
                wg.submit(Cores(1), pow, i, 2)  # a builtin: importable on the worker
        return list(wg.results)

    return list(grain.run_combine(main, ship_project=False, progress=False, output="off", **where))


def test_cluster_reaches_a_tls_executor_as_the_user_given(real, kubeconfig):
    """The default GrainCluster has TLS on: through the port-forward on 127.0.0.1 the client
    trusts the CA from alice's Secret and verifies the executor Service's name."""
    import tempfile

    ca_files = lambda: set(Path(tempfile.gettempdir()).glob("grain-demo-ca-*"))  # noqa: E731
    before = ca_files()
    assert _squares(cluster="demo", namespace=NS, kubeconfig=kubeconfig, user="alice") == [0, 1, 4, 9]
    assert real.api.km.forwards and set(real.api.km.forwards) == {f"{NS}/demo-executor-abc:4242"}
    # the session's end closed the connection: no port-forward thread left, no CA file
    assert not [t.name for t in threading.enumerate() if t.name.startswith("grain-portforward")]
    assert ca_files() == before
    gets = [str(r.url.path) for r in real.api.requests() if "/secrets/" in str(r.url.path)]
    assert gets and all(p.endswith("/demo-user-alice") for p in gets)  # user= went to discovery


def test_cluster_without_user_asks_discovery_for_default_not_the_login_name(real, kubeconfig, monkeypatch):
    for var in ("LOGNAME", "USER"):
        monkeypatch.setenv(var, "someone-logged-in")
    with pytest.raises(UnknownUserError, match=r"no user 'default' \(its users: alice, bob\)"):
        _squares(cluster="demo", namespace=NS, kubeconfig=kubeconfig)
    monkeypatch.setenv("GRAIN_USER", "bob")
    assert _squares(cluster="demo", namespace=NS, kubeconfig=kubeconfig) == [0, 1, 4, 9]


def test_cluster_checks_the_certificate_against_the_service_name(real, kubeconfig):
    """The name verified is the status's tlsServerName: a name the certificate does not carry
    is refused, though the CA is right and the address is the same."""
    real.publish(tlsServerName="impostor.science.svc")
    with pytest.raises(OSError, match="(?i)certificate verify failed"):
        _squares(cluster="demo", namespace=NS, kubeconfig=kubeconfig, user="alice")


def test_grain_status_cluster_verifies_the_service_name(real, kubeconfig, monkeypatch):
    from grain.cli.status import fetch_status

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setenv("GRAIN_USER", "alice")
    doc = fetch_status(cluster="demo", namespace=NS)
    assert [w["name"] for w in doc["workers"]] == ["node-a"]


class _Chatty(socketserver.BaseRequestHandler):
    """A pod that answers far more than the client will read (a status page, a stream)."""

    def handle(self) -> None:
        self.request.recv(100)
        with contextlib.suppress(OSError):
            for _ in range(64):
                self.request.sendall(b"x" * 65536)


def test_a_client_that_hangs_up_mid_answer_leaves_no_thread_error(api, kubeconfig, monkeypatch):
    """The client closes while the pod is still sending: the relay must not close its end of
    the official client's socket pair with bytes unread (that resets it, and the client's
    proxy thread dies with a traceback on the user's terminal)."""
    errors: list[str] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda a: errors.append(f"{a.thread.name if a.thread else '?'}: {a.exc_value!r}"))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Chatty)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    try:
        _cluster(api)
        _secret(api)
        _executor_objects(api)
        api.km.forward_to = server.server_address[1]
        before = set(threading.enumerate())
        with open_cluster("demo", NS, kubeconfig=kubeconfig) as conn:
            host, port = conn.address.removeprefix("grain://").rsplit(":", 1)
            for _ in range(3):
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(b"hello")
                    assert s.recv(100).startswith(b"x")
        proxies = [t for t in set(threading.enumerate()) - before
                   if t.name.startswith("Kubernetes port forward proxy")]
        for t in proxies:
            t.join(10)
        assert not [t for t in proxies if t.is_alive()]
    finally:
        server.shutdown()
        server.server_close()
    assert errors == []
