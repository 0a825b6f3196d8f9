"""RBAC: the chart's rules equal grain_operator.rbac's, Secrets are never granted cluster-wide, and
every request the operator made against KMock (here and in the other operator tests of the
session) is allowed by those rules."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SECRET_NAMESPACES
from kmock_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    PODS,
    SECRETS,
    SERVICES,
    graincluster,
    wait_until,
)

from grain_operator import rbac, render

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "grain"
TEMPLATE = CHART / "templates" / "rbac.yaml"


def _block(name: str) -> list[dict[str, Any]]:
    """A rules block of templates/rbac.yaml, read with the Helm directives stripped."""
    text = TEMPLATE.read_text()
    block = re.search(r'\{\{-? define "grain\.operator\.' + name + r'" -?\}\}(.*?)\{\{-? end -?\}\}', text, re.S)
    assert block, f"templates/rbac.yaml has no grain.operator.{name} block"
    assert "{{" not in block.group(1), "the rules blocks must be plain YAML"
    return yaml.safe_load(block.group(1))


def test_template_rules_equal_python_rules_text() -> None:
    assert _block("rules") == rbac.rules()
    assert _block("secretRules") == rbac.secret_rules()


def test_no_cluster_wide_rule_touches_secrets() -> None:
    assert not any("secrets" in r["resources"] or "*" in r["resources"] for r in rbac.rules())
    assert all(r["resources"] == ["secrets"] for r in rbac.secret_rules())
    assert not any(v in ("list", "watch", "*") for r in rbac.secret_rules() for v in r["verbs"])


def _rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart offline")
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="grain", namespace="grain-system")
    return [d for d in yaml.safe_load_all(out["grain/templates/rbac.yaml"]) if d]


@pytest.mark.parametrize(("values", "roles"), [
    ({}, {"grain-system": "all"}),  # the default: namespaced, the release namespace
    ({"operator": {"watchNamespaces": ["science", "other"]}}, {"science": "all", "other": "all"}),
    ({"rbac": {"namespaced": False}}, {}),
    ({"rbac": {"namespaced": False, "secretNamespaces": ["science"]}}, {"science": "secrets"}),
])
def test_rendered_chart_rules(values: dict[str, Any], roles: dict[str, str]) -> None:
    docs = _rendered(values)
    namespaced = values.get("rbac", {}).get("namespaced", True)
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    if namespaced:
        assert not cluster_roles and not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    else:
        (cr,) = cluster_roles
        assert cr["rules"] == rbac.rules()  # no Secrets in it
    found = {d["metadata"]["namespace"]: d["rules"] for d in docs if d["kind"] == "Role"}
    expected = {ns: rbac.rules() + rbac.secret_rules() if kind == "all" else rbac.secret_rules()
                for ns, kind in roles.items()}
    assert found == expected
    for doc in docs:
        if doc["kind"].endswith("Binding"):
            assert doc["roleRef"]["name"] == doc["metadata"]["name"]
            assert doc["subjects"] == [{"kind": "ServiceAccount", "name": "grain-operator", "namespace": "grain-system"}]


def test_access_of_requests() -> None:
    a = rbac.access_of
    assert a("GET", "/apis/grain.dev/v1/namespaces/x/grainclusters?watch=true") == rbac.Access("watch", "grain.dev", "grainclusters", "x")
    assert a("GET", "/apis/grain.dev/v1/grainclusters") == rbac.Access("list", "grain.dev", "grainclusters", None)
    assert a("PATCH", "/apis/grain.dev/v1/namespaces/x/grainclusters/d/status") == rbac.Access("patch", "grain.dev", "grainclusters/status", "x")
    assert a("POST", "/api/v1/namespaces/x/events") == rbac.Access("create", "", "events", "x")
    assert a("GET", "/api/v1/namespaces/x/secrets/s") == rbac.Access("get", "", "secrets", "x")
    assert a("GET", "/apis/apps/v1").group is None and a("GET", "/api").group is None
    assert not rbac.allows(a("GET", "/api/v1/namespaces/x/secrets"), namespaces=("x",))  # no listing of Secrets
    assert rbac.allows(a("GET", "/api/v1/namespaces/x/secrets/s"), namespaces=("x",))
    assert not rbac.allows(a("GET", "/apis/grain.dev/v1/grainclusters"), namespaced=True, namespaces=("x",))
    assert not rbac.allows(a("DELETE", "/apis/grain.dev/v1/namespaces/x/grainclusters/d"), namespaced=False)
    # cluster-wide: everything but Secrets; Secrets only where the Secrets Role is
    assert rbac.allows(a("PATCH", "/apis/apps/v1/namespaces/y/daemonsets/d"), namespaced=False)
    assert not rbac.allows(a("GET", "/api/v1/namespaces/y/secrets/s"), namespaced=False)
    assert rbac.allows(a("GET", "/api/v1/namespaces/y/secrets/s"), namespaced=False, secret_namespaces=("y",))


def _scenario(api: Any) -> None:
    """Everything the operator does: create (NodePort), status, update, a named Secret, delete."""
    api.create(SECRETS, NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "mine", "namespace": NS, "labels": {"grain.dev/cluster": "s"}},
        "data": {"token": base64.b64encode(b"tok").decode()}})
    api.create(GRC, NS, graincluster("r", spec={"image": "grain:1", "executor": {"serviceType": "NodePort"}}))
    api.create(GRC, NS, graincluster("s", spec={"image": "grain:1", "auth": {"tokenSecret": "mine"}}))
    wait_until(lambda: api.get(DAEMONSETS, NS, "r-worker") and api.get(DAEMONSETS, NS, "s-worker"), 15, "children")
    api.create(PODS, NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "r-executor-1", "namespace": NS, "labels": render.labels(render.Owner("r", NS), "executor")},
        "status": {"hostIP": "192.0.2.1"}})
    ports = api.get(SERVICES, NS, "r-executor")["spec"]["ports"]
    api.patch(SERVICES, NS, "r-executor", {"spec": {"ports": [{**p, "nodePort": 31000 + i} for i, p in enumerate(ports)]}})
    api.patch(DEPLOYMENTS, NS, "r-executor", {"status": {"availableReplicas": 1}}, sub="status")
    wait_until(lambda: "192.0.2.1" in str(api.get(GRC, NS, "r").get("status")), 15, "the status with the node address")
    api.patch(GRC, NS, "r", {"metadata": {"generation": 2}, "spec": {
        "image": "grain:2", "users": [{"name": "alice"}], "networkPolicy": {"enabled": False}}})
    wait_until(lambda: api.get(DEPLOYMENTS, NS, "r-executor")["spec"]["template"]["spec"]["containers"][0]["image"]
             == "grain:2", 15, "the update")
    wait_until(lambda: api.get(SECRETS, NS, "r-user-alice") and api.get(SECRETS, NS, "r-token") is None
             and api.get("networking.k8s.io/v1/networkpolicies", NS, "r-executor") is None, 15,
             "the user's Secret, the default user's and the policies gone")
    api.delete(GRC, NS, "r")
    wait_until(lambda: api.get(GRC, NS, "r") is None, 30, "r to be deleted")
    assert api.get(SERVICES, NS, "r-executor") is None


def _denied(requests: list[Any], namespaces: tuple[str, ...] | None,
            secret_namespaces: tuple[str, ...] = SECRET_NAMESPACES) -> list[str]:
    denied = []
    for req in requests:
        access = rbac.access_of(str(req.method.value if hasattr(req.method, "value") else req.method), str(req.url))
        if not rbac.allows(access, namespaced=namespaces is not None, namespaces=namespaces or (),
                           secret_namespaces=secret_namespaces):
            denied.append(f"{req.method} {req.url.path} -> {access}")
    return denied


def test_every_request_is_allowed_namespaced(api: Any, run_operator: Any) -> None:
    with run_operator(namespaces=(NS,)):
        _scenario(api)
    requests = api.operator_requests()
    assert any(r.url.path.endswith("/pods") for r in requests), "the scenario should exercise the pods list"
    assert any("/secrets" in r.url.path for r in requests)
    assert _denied(requests, (NS,)) == []


def test_every_request_is_allowed_cluster_wide(api: Any, run_operator: Any) -> None:
    with run_operator(namespaces=(), all_namespaces=True):
        _scenario(api)
    assert _denied(api.operator_requests(), None, secret_namespaces=(NS,)) == []
    # and the Secrets requests would be refused without the Secrets Role there
    assert any("secrets" in d for d in _denied(api.operator_requests(), None, secret_namespaces=()))


def test_every_request_of_the_session_is_allowed(operator_request_log: list[Any]) -> None:
    """The requests recorded by every KMock test that ran before this one in the session."""
    if not operator_request_log:
        pytest.skip("no other operator test ran in this session")
    denied = [d for run in operator_request_log for d in _denied(run.requests, run.namespaces, run.secret_namespaces)]
    assert denied == []
