"""apply.ensure / ensure_token / delete_children against an in-memory API (no HTTP)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from grain_operator import apply, render
from grain_operator.kube import ApiError
from grain_operator.model import parse_spec

pytestmark = pytest.mark.timeout(30)

OWNER = render.Owner("demo", "science", uid="u-1")


class FakeApi:
    """Objects in a dict; merge patches applied like the API server; optional create race."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.race_on_create = False

    async def get(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.calls.append(f"create {key[0]}/{key[2]}")
        if self.race_on_create:  # someone else created it first (a racing timer)
            self.race_on_create = False
            self.objects[key] = _defaulted(copy.deepcopy(obj))
            raise ApiError(409, "AlreadyExists", "exists")
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", "exists")
        self.objects[key] = _defaulted(copy.deepcopy(obj))
        return copy.deepcopy(self.objects[key])

    async def patch(self, api_version: str, kind: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"patch {kind}/{name}")
        self.objects[(kind, ns, name)] = _merge(self.objects[(kind, ns, name)], patch)
        return copy.deepcopy(self.objects[(kind, ns, name)])

    async def delete(self, api_version: str, kind: str, ns: str, name: str) -> bool:
        self.calls.append(f"delete {kind}/{name}")
        return self.objects.pop((kind, ns, name), None) is not None


def _defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    """What an API server adds: uid, defaults, status."""
    obj["metadata"]["uid"] = "server-uid"
    obj.setdefault("status", {})
    if obj["kind"] == "Deployment":
        obj["spec"]["revisionHistoryLimit"] = 10
        obj["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    return obj


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def deployment(raw: dict[str, Any]) -> dict[str, Any]:
    spec, problems = parse_spec(raw)
    assert spec and not problems
    return render.executor_deployment(OWNER, spec, "digest")


def test_create_then_unchanged_then_patch() -> None:
    api = FakeApi()
    assert run(apply.ensure(api, deployment({"image": "a"}))).action == "created"  # type: ignore[arg-type]
    assert run(apply.ensure(api, deployment({"image": "a"}))).action == "unchanged"  # type: ignore[arg-type]
    out = run(apply.ensure(api, deployment({"image": "b"})))  # type: ignore[arg-type]
    assert out.action == "patched"
    live = api.objects[("Deployment", "science", "demo-executor")]
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "b"
    assert live["spec"]["revisionHistoryLimit"] == 10  # server defaults are left alone
    recorded = json.loads(live["metadata"]["annotations"][apply.LAST_APPLIED])
    assert recorded["spec"]["template"]["spec"]["containers"][0]["image"] == "b"


def test_removed_fields_are_removed() -> None:
    api = FakeApi()
    run(apply.ensure(api, deployment({"executor": {"nodeSelector": {"a": "1", "b": "2"}}})))  # type: ignore[arg-type]
    run(apply.ensure(api, deployment({"executor": {"nodeSelector": {"a": "1"}}})))  # type: ignore[arg-type]
    live = api.objects[("Deployment", "science", "demo-executor")]
    assert live["spec"]["template"]["spec"]["nodeSelector"] == {"a": "1"}
    run(apply.ensure(api, deployment({})))  # type: ignore[arg-type]
    assert "nodeSelector" not in api.objects[("Deployment", "science", "demo-executor")]["spec"]["template"]["spec"]


def test_conflict_on_create_is_not_an_error() -> None:
    api = FakeApi()
    api.race_on_create = True
    out = run(apply.ensure(api, deployment({"image": "a"})))  # type: ignore[arg-type]
    assert out.action in ("unchanged", "patched")
    assert ("Deployment", "science", "demo-executor") in api.objects


def test_generated_token_is_stable_and_named_one_is_read() -> None:
    api = FakeApi()
    first = run(apply.ensure_token(api, OWNER, None))  # type: ignore[arg-type]
    again = run(apply.ensure_token(api, OWNER, None))  # type: ignore[arg-type]
    assert first == again and len(first) >= 43
    assert not any(c.startswith("patch Secret") for c in api.calls)  # never rewritten
    with pytest.raises(apply.TokenMissing, match="'theirs' not found"):
        run(apply.ensure_token(api, OWNER, "theirs"))  # type: ignore[arg-type]
    api.objects[("Secret", "science", "theirs")] = {"data": {"other": "eA=="}}
    with pytest.raises(apply.TokenMissing, match="no key 'token'"):
        run(apply.ensure_token(api, OWNER, "theirs"))  # type: ignore[arg-type]
    api.objects[("Secret", "science", "theirs")] = {"data": {"token": "c2VjcmV0"}}
    assert run(apply.ensure_token(api, OWNER, "theirs")) == "secret"  # type: ignore[arg-type]


def test_delete_children_only_deletes_what_it_controls() -> None:
    api = FakeApi()
    spec, _ = parse_spec({})
    assert spec
    for child in [*render.children(OWNER, spec), render.token_secret(OWNER)]:
        run(apply.ensure(api, child))  # type: ignore[arg-type]
    api.objects[("Service", "science", "demo-executor")]["metadata"]["ownerReferences"] = []  # adopted by someone
    gone = run(apply.delete_children(api, OWNER))  # type: ignore[arg-type]
    assert sorted(gone) == ["DaemonSet/demo-worker", "Deployment/demo-executor", "Secret/demo-token"]
    assert ("Service", "science", "demo-executor") in api.objects
