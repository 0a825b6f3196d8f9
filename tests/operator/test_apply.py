"""apply: server-side apply through the official client (kube.Kube) against KMock's API.

KMock 0.8 answers server-side apply with 200 and changes nothing; the harness adds it (for
one field manager, lists atomic), and the first tests here pin that emulation down, so the
operator tests further on rest on known behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kmock_harness import DEPLOYMENTS, NS, SECRETS, KMock, server_side_apply

from grain_operator import apply, kube, render, tokens
from grain_operator.model import parse_spec

pytestmark = pytest.mark.timeout(60)

OWNER = render.Owner("demo", NS, uid="u-1")


@pytest.fixture
def api() -> Iterator[KMock]:
    with KMock() as server:
        yield server


@pytest.fixture
def client(api: KMock, tmp_path: Path) -> Iterator[kube.Kube]:
    k = kube.Kube(kube.load_configuration(api.kubeconfig(tmp_path / "kubeconfig")))
    yield k
    k.close()


def deployment(raw: dict[str, Any]) -> dict[str, Any]:
    spec, problems = parse_spec(raw)
    assert spec and not problems
    return render.executor_deployment(OWNER, spec)


def pod_spec(obj: dict[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return obj["spec"]["template"]["spec"]


# -- the emulation -------------------------------------------------------------------------------

def test_emulated_apply_removes_what_the_manager_dropped_and_keeps_the_rest() -> None:
    live = {"spec": {"a": 1, "b": 2, "theirs": 3, "m": {"x": 1, "y": 2}}, "status": {"ok": True}}
    before = {"spec": {"a": 1, "b": 2, "m": {"x": 1, "y": 2}}}
    after = {"spec": {"a": 5, "m": {"x": 1}}}
    assert server_side_apply(live, before, after) == {"spec": {"a": 5, "theirs": 3, "m": {"x": 1}},
                                                      "status": {"ok": True}}
    assert server_side_apply(None, None, after) == after
    assert server_side_apply({"l": [1, 2, 3]}, {"l": [1, 2, 3]}, {"l": [4]}) == {"l": [4]}  # lists atomic


# -- apply.ensure ---------------------------------------------------------------------------------

def test_stamp_changes_with_the_intent() -> None:
    a, b = apply.stamped(deployment({"image": "a"})), apply.stamped(deployment({"image": "b"}))
    key = apply.APPLIED_HASH
    assert a["metadata"]["annotations"][key] != b["metadata"]["annotations"][key]
    assert apply.stamped(a) == a  # stamping is idempotent
    assert not apply.needs_apply(a, {**a, "status": {"x": 1}})  # server-added fields are fine
    assert apply.needs_apply(a, None) and apply.needs_apply(a, b)


def test_create_then_unchanged_then_applied(api: KMock, client: kube.Kube) -> None:
    assert apply.ensure(client, deployment({"image": "a"})).action == "created"
    api.patch(DEPLOYMENTS, NS, "demo-executor", {"spec": {"revisionHistoryLimit": 10}})  # a server default
    writes = len(api.requests())
    assert apply.ensure(client, deployment({"image": "a"})).action == "unchanged"
    assert all(str(r.method).endswith("GET") for r in api.requests()[writes:])  # a read, no write
    assert apply.ensure(client, deployment({"image": "b"})).action == "applied"
    live = api.get(DEPLOYMENTS, NS, "demo-executor")
    assert pod_spec(live)["containers"][0]["image"] == "b"
    assert live is not None and live["spec"]["revisionHistoryLimit"] == 10  # others' fields are kept
    applies = [r for r in api.requests() if str(r.headers.get("Content-Type", "")).startswith("application/apply-patch")]
    assert applies and all(r.params.get("fieldManager") == "grain-operator" and r.params.get("force") == "true"
                           for r in applies)


def test_fields_dropped_from_the_spec_are_removed(api: KMock, client: kube.Kube) -> None:
    apply.ensure(client, deployment({"executor": {"nodeSelector": {"a": "1", "b": "2"}}}))
    apply.ensure(client, deployment({"executor": {"nodeSelector": {"a": "1"}}}))
    assert pod_spec(api.get(DEPLOYMENTS, NS, "demo-executor"))["nodeSelector"] == {"a": "1"}
    apply.ensure(client, deployment({}))
    assert "nodeSelector" not in pod_spec(api.get(DEPLOYMENTS, NS, "demo-executor"))


def test_hand_edits_are_taken_back(api: KMock, client: kube.Kube) -> None:
    apply.ensure(client, deployment({"image": "a"}))
    good = pod_spec(api.get(DEPLOYMENTS, NS, "demo-executor"))["containers"]
    api.patch(DEPLOYMENTS, NS, "demo-executor", {"spec": {"template": {"spec": {"containers": [
        {**good[0], "image": "evil:1"}]}}}})
    assert apply.ensure(client, deployment({"image": "a"})).action == "applied"
    assert pod_spec(api.get(DEPLOYMENTS, NS, "demo-executor"))["containers"] == good


def test_ensure_created_never_rewrites(api: KMock, client: kube.Kube) -> None:
    first, created = apply.ensure_created(client, tokens.user_secret(OWNER, "alice"))
    again, created_again = apply.ensure_created(client, tokens.user_secret(OWNER, "alice"))
    assert created and not created_again
    assert first["data"]["token"] == again["data"]["token"]
    assert not any(str(r.method).endswith("PATCH") and "/secrets/" in str(r.url) for r in api.requests())


def test_a_racing_create_is_not_an_error(api: KMock, client: kube.Kube) -> None:
    mine = tokens.user_secret(OWNER, "alice")
    theirs = tokens.user_secret(OWNER, "alice")

    real_get = client.get
    calls = {"n": 0}

    def get_then_race(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # not there yet... and someone else creates it right now
            api.create(SECRETS, NS, theirs)
            return None
        return real_get(*args)

    client.get = get_then_race  # type: ignore[method-assign]
    live, created = apply.ensure_created(client, mine)
    assert not created and live["data"]["token"] == theirs["data"]["token"]


def test_delete_owned_only_deletes_what_it_controls(api: KMock, client: kube.Kube) -> None:
    spec, _ = parse_spec({})
    assert spec
    for child in render.children(OWNER, spec):
        apply.ensure(client, child)
    apply.ensure_created(client, tokens.worker_token_secret(OWNER))
    api.patch("v1/services", NS, "demo-executor", {"metadata": {"ownerReferences": None}})  # adopted by someone
    gone = apply.delete_children(client, OWNER)
    assert sorted(gone) == ["DaemonSet/demo-worker", "Deployment/demo-executor", "NetworkPolicy/demo-executor",
                            "NetworkPolicy/demo-worker", "Secret/demo-worker-token"]
    assert api.get("v1/services", NS, "demo-executor") is not None
