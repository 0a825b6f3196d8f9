"""Make the live children match the rendered ones: server-side apply, only when they differ.

``ensure`` reads the live object and applies the desired one (server-side apply, field
manager ``grain-operator``, forced) when it is missing or does not cover the desired fields.
The API server does the merging: fields the operator applied before and no longer renders are
removed, fields others own (defaults, an assigned nodePort, status) are kept, a field changed
by hand is taken back. The read-and-compare first is not needed for correctness; it keeps a
steady cluster free of writes (the timer reconciles every 15 s, for every GrainCluster): each
desired object carries ``grain.dev/applied-hash``, a digest of itself, so a change of the
operator's intent is seen even where the live object still covers the old one.

``ensure_created`` is for Secrets holding generated tokens: created once, never rewritten.
``delete_children`` and ``delete_absent`` remove what the GrainCluster controls (checked by
its ownerReference) and no longer wants. Called by ``handlers`` and ``credentials``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

from grain_operator.diff import covers
from grain_operator.kube import ApiException, Kube
from grain_operator.names import Owner, controlled_by, digest

APPLIED_HASH = "grain.dev/applied-hash"

logger = logging.getLogger(__name__)

Action = Literal["created", "applied", "unchanged"]
#: (apiVersion, kind, name) of a child.
Ref = tuple[str, str, str]


@dataclass(frozen=True)
class Outcome:
    """What ``ensure`` did, and the live object afterwards."""

    action: Action
    obj: dict[str, Any]


def stamped(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` with ``grain.dev/applied-hash``: a digest of everything else in it."""
    out = copy.deepcopy(desired)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations.pop(APPLIED_HASH, None)
    annotations[APPLIED_HASH] = digest(out)
    return out


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether ``live`` (None: missing) lacks something of the stamped ``desired``."""
    return live is None or not covers(desired, live)


_READ = object()  # ``ensure``'s default: read the live object itself


def ensure(kube: Kube, desired: dict[str, Any], live: Any = _READ) -> Outcome:
    """Make the live object cover ``desired`` (one server-side apply when it does not).

    ``live``: the object as just read (None: missing), when the caller has it already.
    """
    meta = desired["metadata"]
    want = stamped(desired)
    if live is _READ:
        live = kube.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    if not needs_apply(want, live):
        assert live is not None
        return Outcome("unchanged", live)
    result = kube.apply(want)
    action: Action = "created" if live is None else "applied"
    logger.info("%s %s %s/%s", action, desired["kind"], meta["namespace"], meta["name"])
    return Outcome(action, result)


def ensure_created(kube: Kube, desired: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The live object, created from ``desired`` when missing; never changed otherwise.

    Returns (live, created). A 409 from a concurrent create is not an error: the other
    creator's object is returned.
    """
    meta = desired["metadata"]
    ident = (desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    live = kube.get(*ident)
    if live is not None:
        return live, False
    try:
        created = kube.create(desired)
        logger.info("created %s %s/%s", desired["kind"], meta["namespace"], meta["name"])
        return created, True
    except ApiException as exc:
        if exc.status != 409:
            raise
    live = kube.get(*ident)
    if live is None:  # pragma: no cover - created and deleted in between
        raise RuntimeError(f"{desired['kind']} {meta['namespace']}/{meta['name']} vanished while created")
    return live, False


def delete_owned(kube: Kube, owner: Owner, refs: list[Ref]) -> list[str]:
    """Delete those of ``refs`` that this GrainCluster controls; returns ``Kind/name`` of each."""
    gone: list[str] = []
    for api_version, kind, name in refs:
        live = kube.get(api_version, kind, owner.namespace, name)
        if live is None or not controlled_by(live, owner):
            continue
        if kube.delete(api_version, kind, owner.namespace, name):
            gone.append(f"{kind}/{name}")
    return gone


def all_children(owner: Owner, extra_secrets: tuple[str, ...] = ()) -> list[Ref]:
    """Every child a GrainCluster may have (whatever its spec), for the delete handler."""
    return [
        ("apps/v1", "DaemonSet", owner.worker_name),
        ("apps/v1", "Deployment", owner.executor_name),
        ("v1", "Service", owner.executor_name),
        ("networking.k8s.io/v1", "NetworkPolicy", owner.executor_name),
        ("networking.k8s.io/v1", "NetworkPolicy", owner.worker_name),
        ("v1", "Secret", owner.generated_secret_name),
        ("v1", "Secret", owner.worker_token_name),
        ("v1", "Secret", owner.client_tokens_name),
        ("v1", "Secret", owner.tls_name),
        *(("v1", "Secret", name) for name in extra_secrets),
    ]


def delete_children(kube: Kube, owner: Owner, user_secrets: list[str] | None = None) -> list[str]:
    """Delete every child this GrainCluster controls (Secrets an admin named are not)."""
    return delete_owned(kube, owner, all_children(owner, tuple(user_secrets or ())))
