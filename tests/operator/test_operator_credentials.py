"""The real operator on KMock: the Secrets by role, named Secrets, TLS on and off, an upgrade."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from kmock_harness import DAEMONSETS, DEPLOYMENTS, GRC, NS, SECRETS, graincluster, wait_until
from test_operator_kmock import cond, grc, pod_template

from grain_operator import names, render

pytestmark = pytest.mark.timeout(120)


def data(api: Any, name: str, key: str) -> str | None:
    secret = api.get(SECRETS, NS, name)
    if secret is None or key not in (secret.get("data") or {}):
        return None
    return base64.b64decode(secret["data"][key]).decode()


def tokens_file(api: Any) -> dict[str, str]:
    """User -> the rest of their line in the executor's tokens file."""
    text = data(api, "demo-client-tokens", "tokens") or ""
    lines = [line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {user: rest for user, rest in lines}


def volume_secret(obj: dict[str, Any] | None, volume: str) -> str | None:
    for v in pod_template(obj)["spec"]["volumes"]:
        if v["name"] == volume:
            return str(v["secret"]["secretName"])
    return None


def test_users_get_their_own_tokens_and_the_executor_a_tokens_file(api: Any, run_operator: Any) -> None:
    spec = {"image": "grain:1", "users": [{"name": "alice", "weight": 2, "maxCores": 8}, {"name": "bob"}]}
    with run_operator():
        api.create(GRC, NS, graincluster(spec=spec))
        wait_until(lambda: len(tokens_file(api)) == 2 and api.get(DEPLOYMENTS, NS, "demo-executor"), 15, "the tokens file")
        alice, bob = data(api, "demo-user-alice", "token"), data(api, "demo-user-bob", "token")
        worker = data(api, "demo-worker-token", "token")
        assert alice and bob and worker and len({alice, bob, worker}) == 3  # one secret per role and user
        assert tokens_file(api) == {"alice": f"{alice} weight=2 max-cores=8", "bob": bob}
        labels = api.get(SECRETS, NS, "demo-user-alice")["metadata"]["labels"]
        assert labels["grain.dev/cluster"] == "demo" and labels["grain.dev/user"] == "alice"
        assert labels["app.kubernetes.io/managed-by"] == "grain-operator"
        ca = data(api, "demo-tls", "ca.crt")
        assert ca and data(api, "demo-user-alice", "ca.crt") == ca == data(api, "demo-user-bob", "ca.crt")
        assert api.get(SECRETS, NS, "demo-token") is None  # no user 'default' here
        hash0 = pod_template(api.get(DEPLOYMENTS, NS, "demo-executor"))["metadata"]["annotations"][render.TEMPLATE_HASH]

        # bob leaves, carol joins: their Secrets follow, alice's token stays, the executor keeps running
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {
            "users": [{"name": "alice", "weight": 2, "maxCores": 8}, {"name": "carol", "maxQueued": 100}]}})
        wait_until(lambda: set(tokens_file(api)) == {"alice", "carol"}, 15, "the new tokens file")
        wait_until(lambda: api.get(SECRETS, NS, "demo-user-bob") is None, 15, "bob's Secret to go")
        assert data(api, "demo-user-alice", "token") == alice  # never rotated by a reconcile
        assert tokens_file(api)["carol"].endswith(" max-queued=100")
        assert pod_template(api.get(DEPLOYMENTS, NS, "demo-executor"))["metadata"]["annotations"][
            render.TEMPLATE_HASH] == hash0  # the executor re-reads its tokens file: no restart
        st = wait_until(lambda: [u["name"] for u in grc(api)["status"].get("users", [])] == ["alice", "carol"]
                      and grc(api)["status"], 15, "the users in the status")
        assert [u["secretName"] for u in st["users"]] == ["demo-user-alice", "demo-user-carol"]


def test_named_secrets_must_be_labelled_for_the_cluster(api: Any, run_operator: Any) -> None:
    def secret(name: str, labels: dict[str, str], kind: str = "Opaque") -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": name, "namespace": NS,
                "labels": labels}, "data": {"token": base64.b64encode(b"t0k3n").decode()}}

    api.create(SECRETS, NS, secret("sa", {"grain.dev/cluster": "demo"}, "kubernetes.io/service-account-token"))
    api.create(SECRETS, NS, secret("theirs", {}))
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "auth": {"workerTokenSecret": "sa"},
                                               "users": [{"name": "alice", "secretName": "theirs"}]}))
        wait_until(lambda: "never a Grain token" in (cond(api.get(GRC, NS, "demo"), "CredentialsReady") or {})
                 .get("message", ""), 15, "the service-account token to be refused")
        c = cond(grc(api), "CredentialsReady")
        assert c["status"] == "False" and "'theirs' is not labelled grain.dev/cluster=demo" in c["message"]
        assert api.get(DEPLOYMENTS, NS, "demo-executor") is None  # no workers without a usable worker token
        assert "t0k3n" not in (data(api, "demo-client-tokens", "tokens") or "")  # nor alice, unlabelled

        api.create(SECRETS, NS, secret("workers", {"grain.dev/cluster": "demo"}))
        api.patch(SECRETS, NS, "theirs", {"metadata": {"labels": {"grain.dev/cluster": "demo", "grain.dev/user": "alice"}}})
        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {"auth": {"workerTokenSecret": "workers"}}})
        wait_until(lambda: api.get(DAEMONSETS, NS, "demo-worker"), 15, "the workers once the Secrets are labelled")
        assert volume_secret(api.get(DAEMONSETS, NS, "demo-worker"), "worker-token") == "workers"
        wait_until(lambda: tokens_file(api).get("alice") == "t0k3n", 15, "alice in the tokens file")
        wait_until(lambda: cond(grc(api), "CredentialsReady")["status"] == "True", 15, "CredentialsReady")
        assert data(api, "theirs", "ca.crt") == data(api, "demo-tls", "ca.crt")  # discovery finds the CA there
        assert api.get(SECRETS, NS, "demo-worker-token") is None


def test_tls_off_and_on_again(api: Any, run_operator: Any) -> None:
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1", "executor": {"externalHost": "grain.example.org"}}))
        wait_until(lambda: api.get(DAEMONSETS, NS, "demo-worker") and data(api, "demo-token", "ca.crt"), 15, "TLS")
        cert = x509.load_pem_x509_certificate((data(api, "demo-tls", "tls.crt") or "").encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert "demo-executor.science.svc" in sans and "grain.example.org" in sans
        ca0 = data(api, "demo-tls", "ca.crt")
        wait_until(lambda: grc(api)["status"]["endpoints"]["tlsServerName"] == "demo-executor.science.svc", 15,
                 "the TLS server name in the status")

        api.patch(GRC, NS, "demo", {"metadata": {"generation": 2}, "spec": {"auth": {"tls": {"enabled": False}}}})
        wait_until(lambda: api.get(SECRETS, NS, "demo-tls") is None, 15, "the TLS Secret to go")
        # it went only once no pod template mounted it any more
        for obj in (api.get(DAEMONSETS, NS, "demo-worker"), api.get(DEPLOYMENTS, NS, "demo-executor")):
            assert volume_secret(obj, "tls") is None
            assert not any(a.startswith("--tls") for a in pod_template(obj)["spec"]["containers"][0]["args"])
        wait_until(lambda: data(api, "demo-token", "ca.crt") is None, 15, "ca.crt to leave the client Secret")
        wait_until(lambda: "tlsServerName" not in grc(api)["status"]["endpoints"], 15, "the status without TLS")

        api.patch(GRC, NS, "demo", {"metadata": {"generation": 3}, "spec": {"auth": {"tls": {"enabled": True}}}})
        wait_until(lambda: data(api, "demo-token", "ca.crt"), 15, "a new CA")
        assert data(api, "demo-token", "ca.crt") == data(api, "demo-tls", "ca.crt") != ca0


def test_upgrade_from_a_shared_token_keeps_the_users_token(api: Any, run_operator: Any) -> None:
    """A cluster made by the previous operator: one token Secret NAME-token (no grain.dev labels),
    in both pods' environment. Its token stays the default user's; the workers get their own."""
    owner = names.Owner("demo", NS, uid="uid-demo")
    old = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {**names.metadata(owner, "demo-token", "token")},
           "data": {"token": base64.b64encode(b"the-old-shared-token").decode()}}
    api.create(SECRETS, NS, old)
    with run_operator():
        api.create(GRC, NS, graincluster(spec={"image": "grain:1"}))
        wait_until(lambda: api.get(DEPLOYMENTS, NS, "demo-executor"), 15, "the executor")
        wait_until(lambda: (api.get(SECRETS, NS, "demo-token")["metadata"]["labels"].get("grain.dev/user")) == "default",
                 15, "the old Secret to be labelled")
        assert data(api, "demo-token", "token") == "the-old-shared-token"
        assert data(api, "demo-worker-token", "token") not in (None, "the-old-shared-token")
        assert tokens_file(api) == {"default": "the-old-shared-token"}
        container = pod_template(api.get(DEPLOYMENTS, NS, "demo-executor"))["spec"]["containers"][0]
        assert "env" not in container  # no GRAIN_TOKEN any more
        wait_until(lambda: grc(api)["status"]["tokenSecret"] == "demo-token", 15,
                 "the status to name the Secret (cluster= discovery keeps working)")
