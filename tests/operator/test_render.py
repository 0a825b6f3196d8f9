"""Rendering (pure): a GrainCluster spec -> the children, checked as dicts."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from grain_operator import netpol, render
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
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def pairs(args: list[str]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2], strict=True))


def volumes(obj: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in obj["spec"]["template"]["spec"]["volumes"]}


def mounts(obj: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container(obj)["volumeMounts"]}


def test_names_labels_and_owner_references_on_every_child() -> None:
    spec = spec_of({})
    objs = render.children(OWNER, spec)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Service", "demo-executor"), ("Deployment", "demo-executor"), ("DaemonSet", "demo-worker"),
        ("NetworkPolicy", "demo-executor"), ("NetworkPolicy", "demo-worker"),
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
        assert labels["app.kubernetes.io/component"] in ("executor", "worker")


@pytest.mark.parametrize("raw", [
    {},
    {"auth": {"tls": {"enabled": False}}, "networkPolicy": {"enabled": False}},
    {"executor": {"serviceType": "LoadBalancer", "nodePort": 31000}, "auth": {"tls": {"secretName": "tls"}},
     "networkPolicy": {"clientCidrs": ["10.0.0.0/8"], "clientNamespaces": ["ci"], "httpCidrs": ["192.0.2.0/24"],
                       "httpNamespaces": ["monitoring"]},
     "workers": {"cpus": 4, "memory": "8Gi", "exclusiveCpus": True, "gpus": 2,
                 "tolerations": [{"operator": "Exists"}], "priorityClassName": "high"},
     "imagePullSecrets": ["regcred"], "scheduler": {"heartbeatSeconds": 1.5}},
])
def test_children_are_valid_kubernetes_objects(raw: dict[str, Any]) -> None:
    spec = spec_of(raw)
    for obj in render.children(OWNER, spec, render.refs_for(OWNER, spec, "digest")):
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_executor_deployment() -> None:
    spec = spec_of({"image": "grain:1.2", "executor": {"resources": {"requests": {"cpu": 2, "memory": "1Gi"}},
                                                      "nodeSelector": {"role": "grain"}},
                    "scheduler": {"retries": 5, "waitForWorkersSeconds": 30, "clientGraceSeconds": 450}})
    dep = render.executor_deployment(OWNER, spec)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep)
    assert c["image"] == "grain:1.2"
    assert c["command"] == ["grain", "executor"]
    assert c["args"] == ["--listen", "grain://0.0.0.0:4242", "--http", "0.0.0.0:8080",
                         "--client-tokens", "/etc/grain/clients/tokens",
                         "--worker-token-file", "/etc/grain/worker/token",
                         "--tls-cert", "/etc/grain/tls/tls.crt", "--tls-key", "/etc/grain/tls/tls.key",
                         "--retries", "5", "--wait-for-workers", "30", "--client-grace", "450"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grain": 4242, "http": 8080}
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {}}
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"role": "grain"}
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_defaults_wait_for_workers_and_keep_clients() -> None:
    args = pairs(container(render.executor_deployment(OWNER, spec_of({})))["args"])
    assert args["--wait-for-workers"] == "600"  # never 0: a restarting worker must not fail the sweep
    assert args["--client-grace"] == "300"


@pytest.mark.parametrize("role", ["executor", "worker"])
def test_pods_are_hardened(role: str) -> None:
    spec = spec_of({})
    obj = render.executor_deployment(OWNER, spec) if role == "executor" else render.worker_daemonset(OWNER, spec)
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    c = container(obj)
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert volumes(obj)["tmp"] == {"name": "tmp", "emptyDir": {}} and mounts(obj)["/tmp"] == "tmp"


def test_secrets_are_read_only_files_never_environment_variables() -> None:
    spec = spec_of({"workers": {"env": [{"name": "OMP_NUM_THREADS", "value": "1"}]}})
    dep, ds = render.executor_deployment(OWNER, spec), render.worker_daemonset(OWNER, spec)
    for obj in (dep, ds):
        env = container(obj).get("env", [])
        assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in env)
        assert not any(e["name"].startswith("GRAIN_") for e in env)
        for m in container(obj)["volumeMounts"]:
            assert m.get("readOnly") is True or m["name"] == "tmp"
        for v in volumes(obj).values():
            if "secret" in v:
                assert v["secret"]["defaultMode"] == 0o440  # owner root, group fsGroup; nobody else
    ex = volumes(dep)
    assert ex["client-tokens"]["secret"] == {"secretName": "demo-client-tokens", "defaultMode": 0o440,
                                             "items": [{"key": "tokens", "path": "tokens"}]}
    assert ex["worker-token"]["secret"]["secretName"] == "demo-worker-token"
    assert ex["tls"]["secret"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
    wk = volumes(ds)
    assert "client-tokens" not in wk  # a worker (and so a job) never has a client token
    assert wk["tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # not the key
    assert mounts(dep) == {"/tmp": "tmp", "/etc/grain/clients": "client-tokens", "/etc/grain/worker": "worker-token",
                           "/etc/grain/tls": "tls"}


def test_default_image_and_named_secrets() -> None:
    spec = spec_of({"auth": {"tokenSecret": "mine", "workerTokenSecret": "workers", "tls": {"secretName": "certs"}}})
    dep, ds = render.executor_deployment(OWNER, spec), render.worker_daemonset(OWNER, spec)
    assert container(dep)["image"] == "grain:default"
    assert volumes(dep)["worker-token"]["secret"]["secretName"] == "workers"
    assert volumes(ds)["worker-token"]["secret"]["secretName"] == "workers"
    assert volumes(dep)["tls"]["secret"]["secretName"] == volumes(ds)["tls"]["secret"]["secretName"] == "certs"


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
    spec = spec_of({"workers": {"cpus": 4, "memory": "8Gi", "reserveCores": 1, "drainTimeoutSeconds": 120,
                                "nodeSelector": {"grain.dev/worker": "yes"},
                                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                "env": [{"name": "OMP_PROC_BIND", "value": "true"}]}})
    ds = render.worker_daemonset(OWNER, spec)
    c = container(ds)
    assert c["command"] == ["grain", "worker"]
    assert c["args"][:4] == ["--executor", "grain://demo-executor.science.svc:4242", "--name", "$(NODE_NAME)"]
    args = pairs(c["args"])
    assert args["--cores"] == "auto" and args["--reserve-cores"] == "1" and args["--gpus"] == "none"
    assert args["--memory"] == "7.75GB"  # 8Gi less the worker's own 256Mi
    assert args["--token-file"] == "/etc/grain/worker/token" and args["--tls-ca"] == "/etc/grain/tls/ca.crt"
    assert args["--drain-timeout"] == "120"
    env = env_of(c)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["OMP_PROC_BIND"] == "true"
    pod = ds["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120 + render.DRAIN_MARGIN_SECONDS  # the drain fits
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


def test_tls_off_means_no_tls_flags_and_mounts() -> None:
    spec = spec_of({"auth": {"tls": {"enabled": False}}})
    ex, wk = render.executor_deployment(OWNER, spec), render.worker_daemonset(OWNER, spec)
    assert not any(a.startswith("--tls") for a in container(ex)["args"] + container(wk)["args"])
    assert "tls" not in volumes(ex) and "tls" not in volumes(wk)


def _hashes(spec: GrainClusterSpec, credentials: str = "c") -> tuple[str, str]:
    key = render.TEMPLATE_HASH
    refs = render.refs_for(OWNER, spec, credentials)
    dep = render.executor_deployment(OWNER, spec, refs)
    ds = render.worker_daemonset(OWNER, spec, refs)
    return dep["spec"]["template"]["metadata"]["annotations"][key], ds["spec"]["template"]["metadata"]["annotations"][key]


def test_template_hash_rolls_on_image_env_args_and_not_otherwise() -> None:
    base = _hashes(spec_of({"image": "grain:1"}))
    assert base == _hashes(spec_of({"image": "grain:1"}))  # stable
    assert _hashes(spec_of({"image": "grain:2"})) != base  # both roll on image
    new_env = _hashes(spec_of({"image": "grain:1", "workers": {"env": [{"name": "X", "value": "1"}]}}))
    assert new_env[0] == base[0] and new_env[1] != base[1]  # worker env: workers roll
    new_args = _hashes(spec_of({"image": "grain:1", "scheduler": {"retries": 7}}))
    assert new_args[0] != base[0] and new_args[1] == base[1]  # executor args: executor rolls
    grace = _hashes(spec_of({"image": "grain:1", "scheduler": {"clientGraceSeconds": 900}}))
    assert grace[0] != base[0] and grace[1] == base[1]
    drain = _hashes(spec_of({"image": "grain:1", "workers": {"drainTimeoutSeconds": 5}}))
    assert drain[0] == base[0] and drain[1] != base[1]
    svc_only = _hashes(spec_of({"image": "grain:1", "executor": {"serviceAnnotations": {"a": "b"}}}))
    assert svc_only == base  # a Service-only change rolls no pod
    users = _hashes(spec_of({"image": "grain:1", "users": [{"name": "alice", "weight": 3}]}))
    assert users == base  # users reach the executor through its tokens file: no restart
    dep = render.executor_deployment(OWNER, spec_of({}), render.refs_for(OWNER, spec_of({}), "other"))
    assert dep["spec"]["template"]["metadata"]["annotations"][render.CREDENTIALS_DIGEST] == "other"


def test_network_policies() -> None:
    owner = render.Owner("demo", "science", operator_namespace="grain-system")
    spec = spec_of({"networkPolicy": {"clientCidrs": ["203.0.113.0/24"], "clientNamespaces": ["ci", "science"],
                                      "httpCidrs": ["192.0.2.0/24"], "httpNamespaces": ["monitoring"]}})
    ex, wk = netpol.network_policies(owner, spec)
    assert ex["spec"]["podSelector"]["matchLabels"] == render.selector_labels(owner, "executor")
    grain_rule, http_rule = ex["spec"]["ingress"]
    assert grain_rule["ports"] == [{"port": 4242, "protocol": "TCP"}]
    assert grain_rule["from"] == [
        {"podSelector": {"matchLabels": render.selector_labels(owner, "worker")}},
        {"podSelector": {"matchLabels": {"grain.dev/client": "demo"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}},
         "podSelector": {"matchLabels": {"grain.dev/client": "demo"}}},
        {"ipBlock": {"cidr": "203.0.113.0/24"}},
    ]
    assert http_rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert http_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "grain-system"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "grain", "app.kubernetes.io/component": "operator"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}},
    ]
    assert wk["spec"] == {"podSelector": {"matchLabels": render.selector_labels(owner, "worker")},
                          "policyTypes": ["Ingress"], "ingress": []}
    # by default: only workers and labelled clients on the grain port; nobody on http but the operator
    plain = netpol.executor_policy(render.Owner("demo", "science"), spec_of({}))
    assert len(plain["spec"]["ingress"]) == 1 and len(plain["spec"]["ingress"][0]["from"]) == 2
    assert netpol.network_policies(owner, spec_of({"networkPolicy": {"enabled": False}})) == []


def test_no_owner_uid_means_no_uid_field() -> None:
    refs = render.owner_references(render.Owner("x", "ns"))
    assert "uid" not in refs[0]
