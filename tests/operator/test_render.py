"""Rendering (pure): a GrainCluster spec -> the children, checked as dicts."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest

from grain_operator import render
from grain_operator.model import GrainClusterSpec, parse_spec

pytestmark = pytest.mark.timeout(30)

OWNER = render.Owner(name="demo", namespace="science", uid="uid-1", default_image="grain:default")


def spec_of(raw: dict[str, Any]) -> GrainClusterSpec:
    spec, problems = parse_spec(raw)
    assert spec is not None and not problems, problems
    return spec


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_names_labels_and_owner_references_on_every_child() -> None:
    spec = spec_of({})
    objs = [*render.children(OWNER, spec, "digest"), render.token_secret(OWNER)]
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Service", "demo-executor"), ("Deployment", "demo-executor"), ("DaemonSet", "demo-worker"),
        ("Secret", "demo-token"),
    ]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "science"
        assert meta["ownerReferences"] == [{
            "apiVersion": "grain.dev/v1", "kind": "GrainCluster", "name": "demo", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True,
        }]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "grain"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "grain-operator"
        assert labels["app.kubernetes.io/component"] in ("executor", "worker", "token")


@pytest.mark.parametrize("raw", [
    {},
    {"executor": {"serviceType": "LoadBalancer", "nodePort": 31000}, "auth": {"tls": {"secretName": "tls"}},
     "workers": {"cpus": 4, "memory": "8Gi", "exclusiveCpus": True, "gpus": 2,
                 "tolerations": [{"operator": "Exists"}], "priorityClassName": "high"},
     "imagePullSecrets": ["regcred"], "scheduler": {"heartbeatSeconds": 1.5}},
])
def test_children_are_valid_kubernetes_objects(raw: dict[str, Any]) -> None:
    spec = spec_of(raw)
    for obj in [*render.children(OWNER, spec, "digest"), render.token_secret(OWNER)]:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_executor_deployment() -> None:
    spec = spec_of({"image": "grain:1.2", "executor": {"resources": {"requests": {"cpu": 2, "memory": "1Gi"}},
                                                      "nodeSelector": {"role": "grain"}},
                    "scheduler": {"retries": 5, "waitForWorkersSeconds": 30}})
    dep = render.executor_deployment(OWNER, spec, "abc")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep)
    assert c["image"] == "grain:1.2"
    assert c["command"] == ["grain", "executor"]
    assert c["args"] == ["--listen", "grain://0.0.0.0:4242", "--http", "0.0.0.0:8080",
                         "--retries", "5", "--wait-for-workers", "30"]
    assert env_of(c)["GRAIN_TOKEN"] == {"secretKeyRef": {"name": "demo-token", "key": "token"}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grain": 4242, "http": 8080}
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {}}
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"role": "grain"}
    assert pod["enableServiceLinks"] is False
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_default_image_and_named_token_secret() -> None:
    spec = spec_of({"auth": {"tokenSecret": "mine"}})
    c = container(render.executor_deployment(OWNER, spec))
    assert c["image"] == "grain:default"
    assert env_of(c)["GRAIN_TOKEN"] == {"secretKeyRef": {"name": "mine", "key": "token"}}
    assert env_of(container(render.worker_daemonset(OWNER, spec)))["GRAIN_TOKEN"]["secretKeyRef"]["name"] == "mine"


@pytest.mark.parametrize(("service_type", "node_port"), [("ClusterIP", None), ("NodePort", 30042), ("LoadBalancer", None)])
def test_service(service_type: str, node_port: int | None) -> None:
    raw: dict[str, Any] = {"executor": {"serviceType": service_type, "serviceAnnotations": {"a": "b"}}}
    if node_port:
        raw["executor"]["nodePort"] = node_port
    svc = render.executor_service(OWNER, spec_of(raw))
    assert svc["spec"]["type"] == service_type
    assert svc["metadata"]["annotations"] == {"a": "b"}
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grain"]["port"] == 4242 and ports["http"]["port"] == 8080
    assert ports["grain"].get("nodePort") == node_port
    assert svc["spec"]["selector"] == render.selector_labels(OWNER, "executor")


def test_worker_daemonset() -> None:
    spec = spec_of({"workers": {"cpus": 4, "memory": "8Gi", "reserveCores": 1,
                                "nodeSelector": {"grain.dev/worker": "yes"},
                                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                "env": [{"name": "OMP_PROC_BIND", "value": "true"}]}})
    ds = render.worker_daemonset(OWNER, spec, "abc")
    c = container(ds)
    assert c["command"] == ["grain", "worker"]
    assert c["args"][:4] == ["--executor", "grain://demo-executor.science.svc:4242", "--name", "$(NODE_NAME)"]
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--cores"] == "auto" and args["--reserve-cores"] == "1" and args["--gpus"] == "none"
    assert args["--memory"] == "7.75GB"  # 8Gi less the worker's own 256Mi
    env = env_of(c)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["OMP_PROC_BIND"] == "true"
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"grain.dev/worker": "yes"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Burstable: a cpu request, a memory limit, no cpu limit
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}


def test_exclusive_cpus_means_guaranteed_qos_with_integer_cpus() -> None:
    spec = spec_of({"workers": {"cpus": 6, "memory": "16Gi", "exclusiveCpus": True, "gpus": 1}})
    res = container(render.worker_daemonset(OWNER, spec))["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "6"
    assert res["requests"]["memory"] == res["limits"]["memory"] == "16Gi"
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert str(int(res["limits"]["cpu"])) == res["limits"]["cpu"]  # an integer count: static CPU manager pins


def test_tls_mounts_and_flags() -> None:
    spec = spec_of({"auth": {"tls": {"secretName": "grain-tls", "caKey": "ca.crt"}}})
    ex = container(render.executor_deployment(OWNER, spec))
    assert ex["args"][-4:] == ["--tls-cert", "/etc/grain/tls/tls.crt", "--tls-key", "/etc/grain/tls/tls.key"]
    wk = container(render.worker_daemonset(OWNER, spec))
    assert wk["args"][-2:] == ["--tls-ca", "/etc/grain/tls/ca.crt"]
    assert wk["volumeMounts"] == [{"name": "tls", "mountPath": "/etc/grain/tls", "readOnly": True}]


def _hashes(spec: GrainClusterSpec, token: str = "t") -> tuple[str, str]:
    key = render.TEMPLATE_HASH
    dep = render.executor_deployment(OWNER, spec, render.token_digest(token))
    ds = render.worker_daemonset(OWNER, spec, render.token_digest(token))
    return dep["spec"]["template"]["metadata"]["annotations"][key], ds["spec"]["template"]["metadata"]["annotations"][key]


def test_template_hash_rolls_on_image_env_args_and_not_otherwise() -> None:
    base = _hashes(spec_of({"image": "grain:1"}))
    assert base == _hashes(spec_of({"image": "grain:1"}))  # stable
    assert _hashes(spec_of({"image": "grain:2"})) != base  # both roll on image
    new_env = _hashes(spec_of({"image": "grain:1", "workers": {"env": [{"name": "X", "value": "1"}]}}))
    assert new_env[0] == base[0] and new_env[1] != base[1]  # worker env: workers roll
    new_args = _hashes(spec_of({"image": "grain:1", "scheduler": {"retries": 7}}))
    assert new_args[0] != base[0] and new_args[1] == base[1]  # executor args: executor rolls
    svc_only = _hashes(spec_of({"image": "grain:1", "executor": {"serviceAnnotations": {"a": "b"}}}))
    assert svc_only == base  # a Service-only change rolls no pod
    dep = render.executor_deployment(OWNER, spec_of({}), render.token_digest("other"))
    assert dep["spec"]["template"]["metadata"]["annotations"][render.TOKEN_DIGEST] == render.token_digest("other")


def test_token_secret_is_random_32_bytes() -> None:
    a, b = render.token_secret(OWNER), render.token_secret(OWNER)
    ta = base64.b64decode(a["data"]["token"]).decode()
    tb = base64.b64decode(b["data"]["token"]).decode()
    assert ta != tb
    assert len(base64.urlsafe_b64decode(ta + "=" * (-len(ta) % 4))) == 32
    assert a["metadata"]["name"] == "demo-token" and a["type"] == "Opaque"


def test_no_owner_uid_means_no_uid_field() -> None:
    refs = render.owner_references(render.Owner("x", "ns"))
    assert "uid" not in refs[0]
