"""The GrainCluster model, the CRD and the field reference generated from it."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from grain_operator import crd, docs, model

pytestmark = pytest.mark.timeout(30)


def _all_models() -> list[type[BaseModel]]:
    return docs._models_in_order([model.GrainClusterSpec, model.GrainClusterStatus])


@pytest.mark.parametrize("cls", _all_models(), ids=lambda c: c.__name__)
def test_every_field_and_type_is_described(cls: type[BaseModel]) -> None:
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
    for name, field in cls.model_fields.items():
        assert field.description and len(field.description) > 8, f"{cls.__name__}.{name} has no description"


def test_committed_crd_matches_the_model() -> None:
    text = crd.crd_yaml()
    for path in crd.CRD_PATHS:
        assert path.exists(), f"{path} missing: run `make crd`"
        assert path.read_text() == text, f"{path} differs from the model: run `make crd`"
    assert crd.main(["--check"]) == 0


def test_committed_docs_match_the_model() -> None:
    assert docs.DOC_PATH.read_text() == docs.render_markdown(), "docs/graincluster.md is stale: run `make docs`"
    assert docs.main(["--check"]) == 0


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, sub in node.items():
            yield from _walk(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _walk(sub, f"{path}[{i}]")


def test_crd_is_structural() -> None:
    the_crd = yaml.safe_load(crd.crd_yaml())
    version = the_crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if path.endswith(".properties") or path == "":
            continue
        if "properties" in node or "items" in node or "additionalProperties" in node:
            assert node.get("type") in ("object", "array"), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        assert node.get("additionalProperties") is not False, path
    spec_props = schema["properties"]["spec"]["properties"]
    assert spec_props["executor"]["properties"]["serviceType"]["enum"] == ["ClusterIP", "NodePort", "LoadBalancer"]
    assert spec_props["workers"]["properties"]["memory"]["x-kubernetes-int-or-string"] is True
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_printer_columns() -> None:
    version = yaml.safe_load(crd.crd_yaml())["spec"]["versions"][0]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Workers"] == ".status.workers.summary"
    assert columns["Cores"] == ".status.cores.summary"
    assert columns["Queue"] == ".status.queueLength"
    assert columns["Age"] == ".metadata.creationTimestamp"
    names = yaml.safe_load(crd.crd_yaml())["spec"]["names"]
    assert names["shortNames"] == ["grc"] and names["kind"] == "GrainCluster"


def _validator() -> jsonschema.Validator:
    schema = yaml.safe_load(crd.crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 bounds are draft-4 style


GOOD = {
    "apiVersion": "grain.dev/v1", "kind": "GrainCluster", "metadata": {"name": "demo"},
    "spec": {
        "image": "grain:1.0.0",
        "executor": {"serviceType": "NodePort", "nodePort": 30042, "resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "grain", "effect": "NoSchedule"}]},
        "workers": {"cpus": 4, "memory": "8Gi", "reserveCores": 1, "exclusiveCpus": True, "gpus": 1,
                    "nodeSelector": {"grain.dev/worker": "true"}, "env": [{"name": "OMP_PROC_BIND", "value": "true"}]},
        "scheduler": {"retries": 3, "waitForWorkersSeconds": 30, "clientGraceSeconds": 600, "heartbeatSeconds": 2.5},
        "users": [{"name": "alice", "weight": 2, "maxCores": 64, "maxQueued": 10000},
                  {"name": "bob", "secretName": "bobs-token"}],
        "auth": {"workerTokenSecret": "workers", "tls": {"enabled": True, "secretName": "grain-tls"}},
        "networkPolicy": {"enabled": True, "clientCidrs": ["10.0.0.0/8"], "clientNamespaces": ["ci"],
                          "httpCidrs": ["192.0.2.0/24"], "httpNamespaces": ["monitoring"]},
    },
}


def test_crd_accepts_a_full_spec_and_the_model_agrees() -> None:
    _validator().validate(GOOD)
    spec, problems = model.parse_spec(GOOD["spec"])
    assert problems == [] and spec is not None
    assert spec.workers.cpus == 4 and spec.executor.node_port == 30042 and spec.auth.tls.secret_name == "grain-tls"
    assert [u.name for u in spec.users] == ["alice", "bob"] and spec.users[0].max_cores == 64


def test_a_computed_status_matches_the_crd() -> None:
    from kmock_harness import sample_status

    from grain_operator import render, status

    spec, _ = model.parse_spec(GOOD["spec"])
    assert spec is not None
    obs = status.Observation(
        deployment={"status": {"availableReplicas": 1}}, daemonset={"status": {"desiredNumberScheduled": 1, "numberReady": 1}},
        executor_status=sample_status(users=[{"name": "alice", "running_jobs": 2, "share": 0.5}],
                                      recovering={"waiting_for_workers": ["node-0"]}),
        users=[("alice", "demo-user-alice", 2.0), ("bob", "bobs-token", 1.0)],
        credential_problems=["spec.users[bob].secretName: not labelled"],
    )
    st = status.compute_status(render.Owner("demo", "science"), spec, obs, generation=3)
    _validator().validate({**GOOD, "status": st})
    assert st["users"][0]["runningJobs"] == 2 and st["recovering"]


@pytest.mark.parametrize("bad", [
    {"executor": {"serviceType": "Ingress"}},
    {"executor": {"port": 0}},
    {"workers": {"cpus": 0}},
    {"workers": {"memory": "lots"}},
    {"workers": {"reserveCores": -1}},
    {"imagePullPolicy": "Sometimes"},
    {"auth": {"tokenSecret": "Not_A_Name"}},
    {"users": [{"name": "Alice"}]},
    {"users": [{"name": "alice", "weight": 0}]},
    {"users": [{"weight": 1}]},
    {"workers": {"drainTimeoutSeconds": -1}},
    {"scheduler": {"clientGraceSeconds": -5}},
    {"auth": {"tls": {"secretName": "Not_A_Name"}}},
])
def test_schema_and_model_both_refuse(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate({**GOOD, "spec": bad})
    spec, problems = model.parse_spec(bad)
    assert spec is None and problems and all(p.field.startswith("spec.") for p in problems)


@pytest.mark.parametrize(("spec", "field"), [
    ({"workers": {"cpus": 4, "reserveCores": 4}}, "spec.workers.reserveCores"),
    ({"workers": {"exclusiveCpus": True, "memory": "4Gi"}}, "spec.workers.cpus"),
    ({"workers": {"exclusiveCpus": True, "cpus": 2}}, "spec.workers.memory"),
    ({"workers": {"memory": "128Mi"}}, "spec.workers.memory"),
    ({"executor": {"port": 8080}}, "spec.executor.httpPort"),
    ({"executor": {"nodePort": 30001}}, "spec.executor.nodePort"),
    ({"users": [{"name": "a"}, {"name": "a"}]}, "spec.users"),
    ({"users": [{"name": "a"}], "auth": {"tokenSecret": "t"}}, "spec.auth.tokenSecret"),
    ({"networkPolicy": {"clientCidrs": ["10.0.0.0/40"]}}, "spec.networkPolicy.clientCidrs"),
])
def test_what_the_schema_cannot_say_is_named_by_field(spec: dict[str, Any], field: str) -> None:
    _validator().validate({**GOOD, "spec": spec})  # the schema lets it through...
    parsed, problems = model.parse_spec(spec)  # ...the operator does not
    assert parsed is not None
    assert [p.field for p in problems] == [field]
    assert field in str(problems[0])


def test_empty_spec_is_valid_with_defaults() -> None:
    spec, problems = model.parse_spec(None)
    assert problems == [] and spec is not None
    assert spec.executor.port == 4242 and spec.executor.http_port == 8080
    assert spec.executor.service_type == "ClusterIP" and spec.scheduler.retries == 2
    assert spec.scheduler.wait_for_workers_seconds == 600 and spec.scheduler.client_grace_seconds == 300
    assert spec.workers.drain_timeout_seconds == 60
    assert spec.auth.tls.enabled and spec.network_policy.enabled and spec.users == []


def test_parse_quantity() -> None:
    assert model.parse_quantity("8Gi") == 8 * 2**30
    assert model.parse_quantity("500m") == model.parse_quantity("0.5")
    assert model.parse_quantity(2) == 2 and model.parse_quantity("1k") == 1000
    with pytest.raises(ValueError):
        model.parse_quantity("1.2.3")
