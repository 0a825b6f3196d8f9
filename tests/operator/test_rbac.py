"""RBAC: the chart's rules equal grain_operator.rbac.rules(), and every request the operator
made against KMock (here and in the other operator tests of the session) is allowed by them."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    DAEMONSETS,
    DEPLOYMENTS,
    GRC,
    NS,
    PODS,
    SECRETS,
    SERVICES,
    graincluster,
    wait_for,
)

from grain_operator import rbac, render

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "grain"
TEMPLATE = CHART / "templates" / "rbac.yaml"


def _rules_from_template_text() -> list[dict[str, Any]]:
    """The rules block of templates/rbac.yaml, read with the Helm directives stripped."""
    text = TEMPLATE.read_text()
    block = re.search(r'\{\{-? define "grain\.operator\.rules" -?\}\}(.*?)\{\{-? end -?\}\}', text, re.S)
    assert block, "templates/rbac.yaml has no grain.operator.rules block"
    assert "{{" not in block.group(1), "the rules block must be plain YAML"
    return yaml.safe_load(block.group(1))


def test_template_rules_equal_python_rules_text() -> None:
    if not TEMPLATE.exists():
        pytest.skip("charts/grain/templates/rbac.yaml is not there")
    assert _rules_from_template_text() == rbac.rules()


@pytest.mark.parametrize(("namespaced", "watch"), [(False, []), (True, ["science", "other"]), (True, [])])
def test_rendered_chart_rules_equal_python_rules(namespaced: bool, watch: list[str]) -> None:
    if not (CHART / "Chart.yaml").exists():
        pytest.skip("the chart skeleton (charts/grain/Chart.yaml) is not there yet")
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart offline")
    chart = helm.Chart.load(str(CHART))
    values = {"rbac": {"create": True, "namespaced": namespaced}, "operator": {"watchNamespaces": watch}}
    out = chart.render(values, name="grain", namespace="grain-system")
    docs = [d for d in yaml.safe_load_all(out["grain/templates/rbac.yaml"]) if d]
    kinds = sorted({d["kind"] for d in docs})
    if namespaced:
        assert kinds == ["Role", "RoleBinding"]
        expected = watch or ["grain-system"]
        assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == sorted(expected)
    else:
        assert kinds == ["ClusterRole", "ClusterRoleBinding"]
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            assert doc["rules"] == rbac.rules()
        else:
            assert doc["roleRef"]["name"] == "grain-operator"
            assert doc["subjects"] == [{"kind": "ServiceAccount", "name": "grain-operator", "namespace": "grain-system"}]
    accounts = [d for d in yaml.safe_load_all(out.get("grain/templates/serviceaccount.yaml", "")) if d]
    if accounts:
        assert accounts[0]["metadata"]["name"] == "grain-operator"


def test_access_of_requests() -> None:
    a = rbac.access_of
    assert a("GET", "/apis/grain.dev/v1/namespaces/x/grainclusters?watch=true") == rbac.Access("watch", "grain.dev", "grainclusters", "x")
    assert a("GET", "/apis/grain.dev/v1/grainclusters") == rbac.Access("list", "grain.dev", "grainclusters", None)
    assert a("PATCH", "/apis/grain.dev/v1/namespaces/x/grainclusters/d/status") == rbac.Access("patch", "grain.dev", "grainclusters/status", "x")
    assert a("POST", "/api/v1/namespaces/x/events") == rbac.Access("create", "", "events", "x")
    assert a("GET", "/api/v1/namespaces/x/secrets/s") == rbac.Access("get", "", "secrets", "x")
    assert a("GET", "/apis/apps/v1").group is None and a("GET", "/api").group is None
    assert not rbac.allows(a("GET", "/api/v1/namespaces/x/secrets"))  # no listing of Secrets
    assert not rbac.allows(a("GET", "/apis/grain.dev/v1/grainclusters"), namespaced=True, namespaces=("x",))
    assert not rbac.allows(a("DELETE", "/apis/grain.dev/v1/namespaces/x/grainclusters/d"))


def _scenario(api: Any) -> None:
    """Everything the operator does: create (NodePort), status, update, a named Secret, delete."""
    api.create(SECRETS, NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": NS},
                             "data": {"token": base64.b64encode(b"tok").decode()}})
    api.create(GRC, NS, graincluster("r", spec={"image": "grain:1", "executor": {"serviceType": "NodePort"}}))
    api.create(GRC, NS, graincluster("s", spec={"image": "grain:1", "auth": {"tokenSecret": "mine"}}))
    wait_for(lambda: api.get(DAEMONSETS, NS, "r-worker") and api.get(DAEMONSETS, NS, "s-worker"), 15, "children")
    api.create(PODS, NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "r-executor-1", "namespace": NS, "labels": render.labels(render.Owner("r", NS), "executor")},
        "status": {"hostIP": "192.0.2.1"}})
    ports = api.get(SERVICES, NS, "r-executor")["spec"]["ports"]
    api.patch(SERVICES, NS, "r-executor", {"spec": {"ports": [{**p, "nodePort": 31000 + i} for i, p in enumerate(ports)]}})
    api.patch(DEPLOYMENTS, NS, "r-executor", {"status": {"availableReplicas": 1}}, sub="status")
    wait_for(lambda: "192.0.2.1" in str(api.get(GRC, NS, "r").get("status")), 15, "the status with the node address")
    api.patch(GRC, NS, "r", {"metadata": {"generation": 2}, "spec": {"image": "grain:2"}})
    wait_for(lambda: api.get(DEPLOYMENTS, NS, "r-executor")["spec"]["template"]["spec"]["containers"][0]["image"]
             == "grain:2", 15, "the update")
    api.delete(GRC, NS, "r")
    wait_for(lambda: api.get(GRC, NS, "r") is None, 30, "r to be deleted")
    assert api.get(SERVICES, NS, "r-executor") is None


def _denied(requests: list[Any], namespaces: tuple[str, ...] | None) -> list[str]:
    denied = []
    for req in requests:
        access = rbac.access_of(str(req.method.value if hasattr(req.method, "value") else req.method), str(req.url))
        if not rbac.allows(access, namespaced=namespaces is not None, namespaces=namespaces or ()):
            denied.append(f"{req.method} {req.url.path} -> {access}")
    return denied


def test_every_request_is_allowed_namespaced(api: Any, run_operator: Any) -> None:
    with run_operator(namespaces=(NS,)):
        _scenario(api)
    requests = api.operator_requests()
    assert any(r.url.path.endswith("/pods") for r in requests), "the scenario should exercise the pods list"
    assert _denied(requests, (NS,)) == []


def test_every_request_is_allowed_cluster_wide(api: Any, run_operator: Any) -> None:
    with run_operator(namespaces=(), all_namespaces=True):
        _scenario(api)
    assert _denied(api.operator_requests(), None) == []


def test_every_request_of_the_session_is_allowed(operator_request_log: list[Any]) -> None:
    """The requests recorded by every KMock test that ran before this one in the session."""
    if not operator_request_log:
        pytest.skip("no other operator test ran in this session")
    denied = [d for run in operator_request_log for d in _denied(run.requests, run.namespaces)]
    assert denied == []
