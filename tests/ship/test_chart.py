"""The Helm chart charts/grain: schema, lint, rendering with default and other values.

Rendered offline with helm-python-sdk; every object is validated with kubernetes-validate
--strict (the GrainCluster, a custom resource, against the CRD's own schema instead).
"""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from .chart_tools import CHART, KUBE_VERSION, by_kind, check_against_crd, notes, render

CUSTOM = {
    "fullnameOverride": "sched",
    "image": {"repository": "registry.example/grain", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"annotations": {"iam.example/role": "grain"}},
    "rbac": {"namespaced": True},
    "operator": {
        "networkPolicy": {"enabled": False},
        "watchNamespaces": ["science", "physics"],
        "verbose": True,
        "extraArgs": ["--log-format=json"],
        "extraEnv": [{"name": "GRAIN_LOG", "value": "debug"}],
        "healthPort": 9090,
        "podAnnotations": {"prometheus.io/scrape": "false"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "cluster": {
        "create": True,
        "name": "lab",
        "namespace": "science",
        "spec": {},
    },
}
VARIANTS = {
    "defaults": {},
    "custom": CUSTOM,
    "cluster-wide": {"rbac": {"namespaced": False, "secretNamespaces": ["science"]}},
    "cluster": {"cluster": {"create": True}},
}


def _operator(objects):
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_values_carry_the_keys_rbac_uses():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["rbac"]["namespaced"] is True  # least privilege by default
    assert values["rbac"]["secretNamespaces"] == []
    assert values["operator"]["watchNamespaces"] == []


def test_default_values_pass_the_schema():
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.values)
        assert chart.metadata["name"] == "grain"


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"rbac": {"namespaced": "yes"}}, "namespaced"),
        ({"rbac": {"secretNamespaces": ["Bad_NS"]}}, "secretNamespaces"),
        ({"operator": {"watchNamespaces": "science"}}, "watchNamespaces"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"cluster": {"name": "UPPER"}}, "name"),
        ({"typo": 1}, "typo"),
    ],
)
def test_schema_rejects_bad_values(bad, key):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError, match=key):
        chart.validate_schema(chart.merge_values(bad))


@pytest.mark.parametrize("values", [{}, CUSTOM], ids=["defaults", "custom"])
def test_lint_is_clean(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_object_validates_strictly(values):
    objects = render(values)
    assert {"ServiceAccount", "Deployment"} <= {o["kind"] for o in objects}
    for obj in objects:
        if obj["kind"] == "GrainCluster":
            continue  # a custom resource: checked against the CRD in test_sample_matches_crd
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_operator_deployment_defaults():
    objects = render()
    deployment, container = _operator(objects)
    (sa,) = by_kind(objects, "ServiceAccount")
    assert sa["metadata"]["name"] == "grain-operator"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "grain-operator"
    assert container["command"] == ["python", "-m", "grain_operator"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--namespace=grain-system"]
    probe = container["livenessProbe"]["httpGet"]
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert (probe["path"], port["containerPort"]) == ("/healthz", 8080)
    assert container["image"] == "grain:1.0.0"  # the chart's appVersion
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two operators at once
    assert not by_kind(objects, "GrainCluster")
    env = {e["name"]: e.get("valueFrom", e.get("value")) for e in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}  # for the executors' policy
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_cluster_wide_is_opt_in():
    _, container = _operator(render({"rbac": {"namespaced": False}}))
    assert "--all-namespaces" in container["args"]


def test_operator_deployment_custom_values():
    objects = render(CUSTOM, release="rel", namespace="ops")
    deployment, container = _operator(objects)
    (sa,) = by_kind(objects, "ServiceAccount")
    assert deployment["metadata"]["name"] == "sched-operator"
    assert (
        sa["metadata"]["name"]
        == "sched-operator"
        == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    )
    assert sa["metadata"]["annotations"] == {"iam.example/role": "grain"}
    assert container["image"] == "registry.example/grain:1.2.3"
    assert container["args"] == [
        "--liveness=http://0.0.0.0:9090/healthz",
        "--namespace=science",
        "--namespace=physics",
        "--verbose",
        "--log-format=json",
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GRAIN_LOG"] == "debug" and env["GRAIN_IMAGE"] == "registry.example/grain:1.2.3"
    assert container["ports"][0]["containerPort"] == 9090
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert all(
        o["metadata"].get("namespace") in ("ops", "science", "physics", None) for o in objects
    )
    assert not by_kind(objects, "NetworkPolicy")  # operator.networkPolicy.enabled: false


def test_namespaced_without_list_watches_release_namespace():
    _, container = _operator(render({"rbac": {"namespaced": True}}, namespace="team"))
    assert "--namespace=team" in container["args"] and "--all-namespaces" not in container["args"]


def test_optional_graincluster():
    (grc,) = by_kind(render(CUSTOM), "GrainCluster")
    assert grc["apiVersion"] == "grain.dev/v1"
    assert (grc["metadata"]["name"], grc["metadata"]["namespace"]) == ("lab", "science")
    assert grc["spec"]["image"] == "registry.example/grain:1.2.3"  # defaults to the chart's image
    mine = {"cluster": {"create": True, "spec": {"image": "other:9"}}}
    (grc,) = by_kind(render(mine, namespace="x"), "GrainCluster")
    assert grc["spec"]["image"] == "other:9" and grc["metadata"]["namespace"] == "x"


def test_notes_say_what_to_do_next():
    text = notes()
    assert "rollout status deployment/grain-operator" in text
    assert "kind: GrainCluster" in text and 'cluster="demo"' in text
    assert "does not upgrade the CRD" in text and "NAMESPACE" in text
    created = notes({"cluster": {"create": True, "name": "lab"}})
    assert 'GrainCluster "lab" was created' in created
    assert "grain://lab-executor.grain-system.svc:4242" in created and "NAMESPACE" not in created
    assert "grain.dev/client=lab" in created and "lab-user-alice" in created and 'tls_ca="' in created
    assert "port-forward svc/lab-executor 8080" in created
    wide = notes({"rbac": {"namespaced": False}})
    assert "all namespaces" in wide and "may manage Secrets only in: no namespace yet" in wide


def test_rbac_binds_the_operator_service_account():
    objects = render()
    bindings = by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding")
    if not bindings:
        pytest.skip("charts/grain/templates/rbac.yaml (the operator's) renders no bindings yet")
    subjects = [s for b in bindings for s in b["subjects"]]
    assert {
        "kind": "ServiceAccount",
        "name": "grain-operator",
        "namespace": "grain-system",
    } in subjects
    namespaced = render({"rbac": {"namespaced": True}, "operator": {"watchNamespaces": ["a", "b"]}})
    assert not by_kind(namespaced, "ClusterRoleBinding") or by_kind(namespaced, "RoleBinding")


def test_sample_matches_crd():
    for values in ({"cluster": {"create": True}}, CUSTOM):
        (grc,) = by_kind(render(values), "GrainCluster")
        check_against_crd(grc)


def test_cluster_outside_watched_namespaces_is_refused():
    values = {"cluster": {"create": True, "namespace": "x"}, "operator": {"watchNamespaces": ["a"]}}
    with pytest.raises(helm.HelmRenderError, match="not watched by the operator"):
        render(values)
    (grc,) = by_kind(
        render({**values, "operator": {"watchNamespaces": ["a", "x"]}}), "GrainCluster"
    )
    assert grc["metadata"]["namespace"] == "x"
