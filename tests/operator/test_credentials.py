"""Credentials (pure parts): token Secrets, the tokens file, named-Secret checks, the CA and certificate."""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from grain_operator import names, tls, tokens
from grain_operator.model import GrainClusterSpec, UserSpec, parse_spec

pytestmark = pytest.mark.timeout(30)

OWNER = names.Owner("demo", "science", uid="uid-1")


def spec_of(raw: dict[str, Any]) -> GrainClusterSpec:
    spec, problems = parse_spec(raw)
    assert spec is not None and not problems, problems
    return spec


def token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


# -- tokens -------------------------------------------------------------------------------------

def test_a_spec_without_users_has_the_user_default_with_todays_secret_name() -> None:
    (user,) = tokens.users_of(OWNER, spec_of({}))
    assert (user.name, user.secret_name, user.generated) == ("default", "demo-token", True)
    (user,) = tokens.users_of(OWNER, spec_of({"auth": {"tokenSecret": "mine"}}))
    assert (user.secret_name, user.generated) == ("mine", False)
    users = tokens.users_of(OWNER, spec_of({"users": [{"name": "alice"}, {"name": "bob", "secretName": "b"}]}))
    assert [(u.name, u.secret_name, u.generated) for u in users] == [
        ("alice", "demo-user-alice", True), ("bob", "b", False)]


def test_generated_tokens_are_random_32_bytes_and_labelled_by_role() -> None:
    a, b = tokens.user_secret(OWNER, "alice"), tokens.user_secret(OWNER, "alice")
    assert token_of(a) != token_of(b)
    raw = token_of(a)
    assert len(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) == 32
    assert a["metadata"]["name"] == "demo-user-alice" and a["type"] == "Opaque"
    assert a["metadata"]["labels"]["grain.dev/cluster"] == "demo"
    assert a["metadata"]["labels"]["grain.dev/user"] == "alice"
    assert a["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "grain-operator"
    assert "ca.crt" not in a["data"]
    with_ca = tokens.user_secret(OWNER, "default", ca_pem="PEM")
    assert with_ca["metadata"]["name"] == "demo-token" and base64.b64decode(with_ca["data"]["ca.crt"]) == b"PEM"
    worker = tokens.worker_token_secret(OWNER)
    assert worker["metadata"]["name"] == "demo-worker-token" and "grain.dev/user" not in worker["metadata"]["labels"]
    for obj in (a, worker, tokens.client_tokens_secret(OWNER, [])):
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_tokens_file_format() -> None:
    entries = [(UserSpec(name="alice", weight=2, max_cores=64, max_queued=10000), "tA"),
               (UserSpec(name="bob"), "tB"), (UserSpec(name="carol", weight=0.5), "tC")]
    text = tokens.tokens_file(entries)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["alice tA weight=2 max-cores=64 max-queued=10000", "bob tB", "carol tC weight=0.5"]
    secret = tokens.client_tokens_secret(OWNER, entries)
    assert base64.b64decode(secret["data"]["tokens"]).decode() == text
    assert secret["metadata"]["name"] == "demo-client-tokens"


def _named(labels: dict[str, str] | None, data: dict[str, str] | None = None, kind: str = "Opaque") -> dict[str, Any]:
    return {"type": kind, "metadata": {"name": "mine", "labels": labels or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in (data or {"token": "t0k3n"}).items()}}


@pytest.mark.parametrize(("secret", "user", "problem"), [
    (None, None, "not found"),
    (_named({}), None, "not labelled grain.dev/cluster=demo"),
    (_named({"grain.dev/cluster": "other"}), None, "not labelled grain.dev/cluster=demo"),
    (_named({"grain.dev/cluster": "demo"}, kind="kubernetes.io/service-account-token"), None, "never a Grain token"),
    (_named({"grain.dev/cluster": "demo"}), "alice", "not labelled grain.dev/user=alice"),
    (_named({"grain.dev/cluster": "demo", "grain.dev/user": "bob"}), "alice", "not labelled grain.dev/user=alice"),
    (_named({"grain.dev/cluster": "demo"}, {"other": "x"}), None, "has no key 'token'"),
    (_named({"grain.dev/cluster": "demo"}, {"token": "two words"}), None, "white space"),
    (_named({"grain.dev/cluster": "demo"}), None, None),
    (_named({"grain.dev/cluster": "demo", "grain.dev/user": "alice"}, {"token": "t0k3n\n"}), "alice", None),
])
def test_only_secrets_labelled_for_the_cluster_are_accepted(secret: Any, user: str | None, problem: str | None) -> None:
    found = tokens.named_secret_problem(secret, "mine", OWNER, "spec.auth.tokenSecret", user=user)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and found.startswith("spec.auth.tokenSecret:")
        if "not labelled" in problem:
            assert "kubectl -n science label secret mine" in found  # says how


def test_spec_problems_of_users() -> None:
    _, problems = parse_spec({"users": [{"name": "a"}, {"name": "a"}]})
    assert [str(p) for p in problems] == ["spec.users: user 'a' is listed more than once"]
    _, problems = parse_spec({"users": [{"name": "a"}], "auth": {"tokenSecret": "x"}})
    assert problems[0].field == "spec.auth.tokenSecret"
    _, problems = parse_spec({"users": [{"name": "a", "secretName": "s"}], "auth": {"workerTokenSecret": "s"}})
    assert "more than one token" in str(problems[0])
    spec, problems = parse_spec({"users": [{"name": "Not_OK"}]})
    assert spec is None and problems[0].field.startswith("spec.users[0].name")
    _, problems = parse_spec({"networkPolicy": {"clientCidrs": ["10.0.0.0/33"], "httpNamespaces": ["Bad_NS"]}})
    assert {p.field for p in problems} == {"spec.networkPolicy.clientCidrs", "spec.networkPolicy.httpNamespaces"}


# -- TLS ----------------------------------------------------------------------------------------

def test_certificate_names_the_service_and_is_signed_by_the_ca() -> None:
    names_ = tls.dns_names(OWNER, "grain.example.org")
    assert names_ == ["demo-executor", "demo-executor.science", "demo-executor.science.svc",
                      "demo-executor.science.svc.cluster.local", "grain.example.org"]
    assert tls.dns_names(OWNER, "192.0.2.7")[-1] == "demo-executor.science.svc.cluster.local"  # no IPs
    issued = tls.issue(OWNER, names_)
    assert tls.renewal_reason(issued, names_) is None
    secret = tls.secret(OWNER, issued)
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert "PRIVATE KEY" not in issued.ca_pem  # the CA's key is nowhere
    kubernetes_validate.validate(secret, "1.30.0", strict=True)


def test_renewal_reasons() -> None:
    names_ = tls.dns_names(OWNER)
    issued = tls.issue(OWNER, names_)
    assert tls.renewal_reason(None, names_) == "no certificate yet"
    assert "does not name grain.example.org" in (tls.renewal_reason(issued, [*names_, "grain.example.org"]) or "")
    later = datetime.datetime.now(datetime.UTC) + tls.VALIDITY - datetime.timedelta(days=10)
    assert "expires on" in (tls.renewal_reason(issued, names_, now=later) or "")
    other = tls.issue(OWNER, names_)
    assert "not signed by ca.crt" in (tls.renewal_reason(tls.Issued(other.ca_pem, issued.cert_pem, issued.key_pem), names_) or "")
    assert "key does not match" in (tls.renewal_reason(tls.Issued(issued.ca_pem, issued.cert_pem, other.key_pem), names_) or "")
    assert "unreadable" in (tls.renewal_reason(tls.Issued("junk", "junk", "junk"), names_) or "")


def _serve_once(cert: Path, key: Path) -> tuple[int, threading.Thread]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_a_client_verifies_the_service_name_through_a_loopback_address(tmp_path: Path) -> None:
    """What a client does through a port-forward: dial 127.0.0.1, check the Service's name."""
    issued = tls.issue(OWNER, tls.dns_names(OWNER))
    for name, text in (("ca.crt", issued.ca_pem), ("tls.crt", issued.cert_pem), ("tls.key", issued.key_pem)):
        (tmp_path / name).write_text(text)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    port, thread = _serve_once(tmp_path / "tls.crt", tmp_path / "tls.key")
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client.wrap_socket(raw, server_hostname=OWNER.service_host) as conn:
        assert conn.recv(5) == b"hello"
    thread.join(5)
    port, thread = _serve_once(tmp_path / "tls.crt", tmp_path / "tls.key")
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        client.wrap_socket(raw, server_hostname="127.0.0.1")  # the address itself is not in the certificate
    thread.join(5)
