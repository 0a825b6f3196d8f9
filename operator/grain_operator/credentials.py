"""Ensure a GrainCluster's Secrets: TLS, the workers' token, one token per user, the tokens file.

``ensure_credentials`` runs before the workloads are applied (the pods mount these Secrets):

1. TLS (unless ``spec.auth.tls.enabled`` is false): the admin's labelled Secret is checked;
   otherwise ``NAME-tls`` is read and, when missing or due (``tls.renewal_reason``), a new CA
   and certificate are issued and applied.
2. The workers' token: ``NAME-worker-token`` created once, or the admin's labelled Secret.
3. Each user's token: ``NAME-user-USER`` (``NAME-token`` for ``default``) created once, or
   the admin's labelled Secret; its ``ca.crt`` follows the CA (the one key ever rewritten).
   Generated Secrets from before labels existed get ``grain.dev/cluster``/``grain.dev/user``.
4. ``NAME-client-tokens`` applied from the users that have a usable token (after step 5).
5. Generated Secrets of users removed from the spec are deleted (their names are recorded on
   ``NAME-client-tokens``, and in the previous status: the operator may not list Secrets);
   ``NAME-tls``, once TLS is off, is left in ``after_apply`` for the caller to delete when the
   pod templates no longer mount it.

A Secret that cannot be used is a *problem* (shown in the status, retried); a problem with the
workers' token or TLS *blocks* the workloads (their pods could not start), a problem with one
user leaves that user out of the tokens file and the others working.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

from grain_operator import apply, tls, tokens
from grain_operator.kube import Kube
from grain_operator.model import GrainClusterSpec
from grain_operator.names import (
    CLUSTER_LABEL,
    USER_LABEL,
    Owner,
    controlled_by,
    digest,
    secret_labels,
)
from grain_operator.render import SecretRefs

logger = logging.getLogger(__name__)


@dataclass
class Credentials:
    """What the workloads mount, and what could not be ensured."""

    refs: SecretRefs | None  # None: blocked (the workers' token or TLS is not usable)
    users: list[tokens.User] = field(default_factory=list)
    usable_users: list[str] = field(default_factory=list)
    ca_pem: str | None = None
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what was created or changed, for people
    #: Secrets to delete once the workloads no longer mount them (after they are applied).
    after_apply: list[apply.Ref] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.refs is None


def _decoded(secret: dict[str, Any], *keys: str) -> dict[str, str | None]:
    return {k: tokens.decode(secret, k) for k in keys}


def _ours_or_labelled(secret: dict[str, Any], owner: Owner) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return controlled_by(secret, owner) or labels.get(CLUSTER_LABEL) == owner.name


def _ensure_labels(kube: Kube, owner: Owner, secret: dict[str, Any], component: str, user: str | None) -> None:
    """Add the grain.dev labels to a generated Secret made before they existed."""
    want = secret_labels(owner, component, user)
    have = (secret.get("metadata") or {}).get("labels") or {}
    missing = {k: v for k, v in want.items() if k in (CLUSTER_LABEL, USER_LABEL) and have.get(k) != v}
    if missing:
        meta = secret["metadata"]
        kube.patch("v1", "Secret", owner.namespace, meta["name"], {"metadata": {"labels": missing}})


def _ensure_tls(kube: Kube, owner: Owner, spec: GrainClusterSpec, creds: Credentials) -> tuple[str | None, str]:
    """(the TLS Secret's name, a digest of its certificate); problems are recorded in ``creds``."""
    cfg = spec.auth.tls
    if cfg.secret_name:
        secret = kube.get("v1", "Secret", owner.namespace, cfg.secret_name)
        keys = (tls.CA_KEY, tls.CERT_KEY, tls.PRIVATE_KEY)
        problem = tokens.named_secret_problem(secret, cfg.secret_name, owner, "spec.auth.tls.secretName", keys=keys)
        if problem is None and secret is not None:
            data = _decoded(secret, *keys)
            cert_problem = tls.named_secret_names_problem(data[tls.CERT_KEY] or "", owner)
            if cert_problem:
                problem = f"spec.auth.tls.secretName: Secret {cfg.secret_name!r}: {cert_problem}"
            else:
                creds.ca_pem = data[tls.CA_KEY]
                return cfg.secret_name, digest([data[tls.CA_KEY], data[tls.CERT_KEY]])
        creds.problems.append(problem or "spec.auth.tls.secretName: unusable")
        return None, ""
    names = tls.dns_names(owner, spec.executor.external_host)
    live = kube.get("v1", "Secret", owner.namespace, owner.tls_name)
    if live is not None and not _ours_or_labelled(live, owner):
        creds.problems.append(f"Secret {owner.tls_name!r} exists and is not this GrainCluster's: rename or remove it")
        return None, ""
    issued = tls.from_secret(_decoded(live, tls.CA_KEY, tls.CERT_KEY, tls.PRIVATE_KEY)) if live else None
    reason = tls.renewal_reason(issued, names)
    if reason is not None:
        issued = tls.issue(owner, names)
        kube.apply(apply.stamped(tls.secret(owner, issued)))
        creds.events.append(f"issued a CA and certificate in Secret/{owner.tls_name} ({reason})")
    assert issued is not None
    creds.ca_pem = issued.ca_pem
    return owner.tls_name, digest([issued.ca_pem, issued.cert_pem])


def _ensure_worker_token(kube: Kube, owner: Owner, spec: GrainClusterSpec, creds: Credentials) -> tuple[str | None, str]:
    """(the workers' token Secret, a digest of the token)."""
    named = spec.auth.worker_token_secret
    if named:
        secret = kube.get("v1", "Secret", owner.namespace, named)
        problem = tokens.named_secret_problem(secret, named, owner, "spec.auth.workerTokenSecret")
        if problem is not None or secret is None:
            creds.problems.append(problem or "spec.auth.workerTokenSecret: unusable")
            return None, ""
        return named, digest(tokens.decode(secret, tokens.TOKEN_KEY))
    secret, created = apply.ensure_created(kube, tokens.worker_token_secret(owner))
    if created:
        creds.events.append(f"created Secret/{owner.worker_token_name}")
    if not _ours_or_labelled(secret, owner):
        creds.problems.append(f"Secret {owner.worker_token_name!r} exists and is not this GrainCluster's")
        return None, ""
    token = tokens.decode(secret, tokens.TOKEN_KEY)
    if not token:
        creds.problems.append(f"Secret {owner.worker_token_name!r} has no key 'token': delete it to get a new one")
        return None, ""
    _ensure_labels(kube, owner, secret, "worker-token", None)
    return owner.worker_token_name, digest(token)


def _ensure_user(kube: Kube, owner: Owner, user: tokens.User, ca_pem: str | None, creds: Credentials) -> str | None:
    """The user's token (None, with a problem recorded, when their Secret is not usable)."""
    field_name = "spec.auth.tokenSecret" if not user.spec.secret_name else f"spec.users[{user.name}].secretName"
    if user.generated:
        secret, created = apply.ensure_created(kube, tokens.user_secret(owner, user.name, ca_pem=ca_pem))
        if created:
            creds.events.append(f"created Secret/{user.secret_name} for user {user.name}")
        if not _ours_or_labelled(secret, owner):
            creds.problems.append(f"Secret {user.secret_name!r} exists and is not this GrainCluster's")
            return None
        _ensure_labels(kube, owner, secret, "client-token", user.name)
    else:
        secret = kube.get("v1", "Secret", owner.namespace, user.secret_name)
        problem = tokens.named_secret_problem(secret, user.secret_name, owner, field_name, user=user.name)
        if problem is not None or secret is None:
            creds.problems.append(problem or f"{field_name}: unusable")
            return None
    token = (tokens.decode(secret, tokens.TOKEN_KEY) or "").strip()
    if not token:
        creds.problems.append(f"Secret {user.secret_name!r} has no key 'token'")
        return None
    if tokens.decode(secret, tokens.CA_KEY) != ca_pem:  # the CA changed, or TLS was turned on/off
        value = base64.b64encode(ca_pem.encode()).decode() if ca_pem else None
        kube.patch("v1", "Secret", owner.namespace, user.secret_name, {"data": {tokens.CA_KEY: value}})
    return token


def ensure_credentials(
    kube: Kube, owner: Owner, spec: GrainClusterSpec, previous_user_secrets: list[str] | None = None,
) -> Credentials:
    """Ensure every Secret of the GrainCluster; see the module docstring."""
    creds = Credentials(refs=None, users=tokens.users_of(owner, spec))
    tls_name, tls_digest = (None, "")
    if spec.auth.tls.enabled:
        tls_name, tls_digest = _ensure_tls(kube, owner, spec, creds)
    worker_secret, worker_digest = _ensure_worker_token(kube, owner, spec, creds)
    blocked = worker_secret is None or (spec.auth.tls.enabled and tls_name is None)

    live_tokens = kube.get("v1", "Secret", owner.namespace, owner.client_tokens_name)
    entries = []
    for user in creds.users:
        token = _ensure_user(kube, owner, user, creds.ca_pem if spec.auth.tls.enabled else None, creds)
        if token is not None:
            entries.append((user.spec, token))
            creds.usable_users.append(user.name)

    # Users who left: delete the Secrets generated for them before the record of them goes.
    current = {u.secret_name for u in creds.users}
    recorded = set(tokens.generated_user_secrets(live_tokens)) | set(previous_user_secrets or [])
    stale = [("v1", "Secret", n) for n in sorted(recorded - current)]
    if not spec.auth.tls.enabled:  # once no pod template mounts it any more
        creds.after_apply.append(("v1", "Secret", owner.tls_name))
    for gone in apply.delete_owned(kube, owner, stale):
        creds.events.append(f"deleted {gone}")
    generated = [u.secret_name for u in creds.users if u.generated]
    outcome = apply.ensure(kube, tokens.client_tokens_secret(owner, entries, generated), live=live_tokens)
    if outcome.action != "unchanged":
        creds.events.append(f"{outcome.action} Secret/{owner.client_tokens_name} ({len(entries)} users)")

    if not blocked:
        assert worker_secret is not None
        creds.refs = SecretRefs(
            worker_token=worker_secret, client_tokens=owner.client_tokens_name, tls=tls_name,
            digest=digest([worker_digest, tls_digest]),
        )
    return creds
