"""Idempotent create-or-patch of the rendered children (level-triggered reconciliation).

``ensure`` compares one desired object with the live one and does the least needed: create it
when missing (a 409 from a concurrent create is not an error: it re-reads and compares),
nothing when the desired fields are already there, else one JSON merge patch. What the
operator applied last is kept in the annotation ``grain.dev/last-applied`` so that a field
dropped from the desired state is removed (set to null) rather than left behind; fields that
the API server or others add (defaults, status, nodePort...) are left alone. The diff itself is
pure (``diff.merge_patch``), tested without a server. Called by ``handlers``.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from grain_operator import render
from grain_operator.diff import merge_patch
from grain_operator.kube import ApiError, KubeApi

LAST_APPLIED = "grain.dev/last-applied"

logger = logging.getLogger(__name__)

Action = Literal["created", "patched", "unchanged"]


@dataclass(frozen=True)
class Outcome:
    """What ``ensure`` did, and the live object afterwards."""

    action: Action
    obj: dict[str, Any]


def _last_applied(obj: dict[str, Any]) -> dict[str, Any]:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _with_last_applied(desired: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(desired)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations[LAST_APPLIED] = json.dumps(recorded, sort_keys=True, separators=(",", ":"))
    return out


def _recordable(desired: dict[str, Any]) -> dict[str, Any]:
    """What is remembered as last applied: never a Secret's data."""
    return {k: v for k, v in desired.items() if k not in ("data", "stringData")}


async def ensure(api: KubeApi, desired: dict[str, Any], *, create_only: tuple[str, ...] = ()) -> Outcome:
    """Make the live object cover ``desired``; fields in ``create_only`` are set at creation only."""
    meta = desired["metadata"]
    ident = (desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    recorded = _recordable(desired)
    live = await api.get(*ident)
    if live is None:
        try:
            created = await api.create(_with_last_applied(desired, recorded))
            logger.info("created %s %s/%s", desired["kind"], meta["namespace"], meta["name"])
            return Outcome("created", created)
        except ApiError as exc:
            if exc.status != 409:
                raise
            live = await api.get(*ident)  # created meanwhile (a racing timer): compare with it
            if live is None:  # pragma: no cover - created and deleted in between
                raise
    comparable = {k: v for k, v in recorded.items() if k not in create_only}
    last = {k: v for k, v in _last_applied(live).items() if k not in create_only}
    patch = merge_patch(last, comparable, live)
    if not patch:
        return Outcome("unchanged", live)
    patch.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = json.dumps(
        recorded, sort_keys=True, separators=(",", ":")
    )
    patched = await api.patch(*ident, patch)
    logger.info("patched %s %s/%s: %s", desired["kind"], meta["namespace"], meta["name"], sorted(patch))
    return Outcome("patched", patched)


def secret_value(secret: dict[str, Any], key: str) -> str | None:
    """A key of a Secret, decoded; None when absent."""
    data = secret.get("data") or {}
    if key in data and data[key] is not None:
        try:
            return base64.b64decode(data[key]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    string_data = secret.get("stringData") or {}  # only on servers that do not convert it
    value = string_data.get(key)
    return value if isinstance(value, str) else None


class TokenMissing(Exception):
    """The Secret named by spec.auth.tokenSecret is missing or has no key 'token'."""


async def ensure_token(api: KubeApi, owner: render.Owner, secret_name: str | None) -> str:
    """The token: read from the named Secret, or from NAME-token which is created when absent.

    A generated Secret is never rewritten (its token must stay stable); only its labels and
    ownerReference are kept up to date. Raises ``TokenMissing`` for a named Secret not usable.
    """
    if secret_name:
        secret = await api.get("v1", "Secret", owner.namespace, secret_name)
        if secret is None:
            raise TokenMissing(f"spec.auth.tokenSecret: Secret {secret_name!r} not found in {owner.namespace}")
        token = secret_value(secret, render.TOKEN_KEY)
        if not token:
            raise TokenMissing(f"spec.auth.tokenSecret: Secret {secret_name!r} has no key {render.TOKEN_KEY!r}")
        return token
    outcome = await ensure(api, render.token_secret(owner), create_only=("data", "type"))
    token = secret_value(outcome.obj, render.TOKEN_KEY)
    if not token:  # someone emptied it: write a new one (pods roll through the token digest)
        fresh = render.token_secret(owner)
        await api.patch("v1", "Secret", owner.namespace, owner.generated_secret_name, {"data": fresh["data"]})
        token = secret_value(fresh, render.TOKEN_KEY)
        assert token is not None
    return token


async def delete_children(api: KubeApi, owner: render.Owner) -> list[str]:
    """Delete the children this GrainCluster controls (by name, checking the ownerReference)."""
    gone: list[str] = []
    for api_version, kind, name in (
        ("apps/v1", "DaemonSet", owner.worker_name),
        ("apps/v1", "Deployment", owner.executor_name),
        ("v1", "Service", owner.executor_name),
        ("v1", "Secret", owner.generated_secret_name),
    ):
        live = await api.get(api_version, kind, owner.namespace, name)
        if live is None or not _controlled_by(live, owner):
            continue
        if await api.delete(api_version, kind, owner.namespace, name):
            gone.append(f"{kind}/{name}")
    return gone


def _controlled_by(obj: dict[str, Any], owner: render.Owner) -> bool:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "GrainCluster" and ref.get("name") == owner.name and ref.get("controller"):
            return owner.uid is None or ref.get("uid") in (None, owner.uid)
    return False
