"""Credentials by role, as Secrets (pure): the workers' token, one token per user, the tokens file.

- ``NAME-worker-token`` (key ``token``): what workers present; it can never submit jobs.
- ``NAME-user-USER`` (keys ``token`` and, with TLS, ``ca.crt``): one user's client token, the
  Secret ``cluster=`` discovery reads for that user. The user ``default`` of a spec without
  users keeps the name ``NAME-token``.
- ``NAME-client-tokens`` (key ``tokens``): the file the executor reads with
  ``--client-tokens``, one line per user: ``USER TOKEN [weight=W] [max-cores=N] [max-queued=N]``.
  It is derived from the user Secrets and re-applied when a user is added or changed; the
  executor re-reads it when the mounted file changes, so that needs no restart.

Tokens are generated once (32 random bytes) and never rewritten by a reconcile. A Secret an
admin names instead must be labelled ``grain.dev/cluster: NAME`` (and ``grain.dev/user: USER``
for a user's), so that a GrainCluster can never be pointed at an arbitrary Secret of its
namespace (a service-account token, another application's password) and leak it to clients.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from grain_operator import model
from grain_operator.names import CLUSTER_LABEL, USER_LABEL, Owner, metadata, secret_labels

TOKEN_KEY = "token"
CA_KEY = "ca.crt"
TOKENS_FILE_KEY = "tokens"
#: On NAME-client-tokens: the user Secrets the operator generated, comma-separated. The record
#: of which Secrets to delete when a user leaves (the operator may not list Secrets).
USER_SECRETS_ANNOTATION = "grain.dev/user-secrets"
SECRET_TYPES_REFUSED = ("kubernetes.io/service-account-token", "kubernetes.io/dockerconfigjson",
                        "kubernetes.io/dockercfg", "bootstrap.kubernetes.io/token")

Secret = dict[str, object]


@dataclass(frozen=True)
class User:
    """A user as the operator serves them: the spec entry and the Secret holding the token."""

    spec: model.UserSpec
    secret_name: str
    generated: bool  # False: named by the admin (spec.users[].secretName or spec.auth.tokenSecret)

    @property
    def name(self) -> str:
        return self.spec.name


def users_of(owner: Owner, spec: model.GrainClusterSpec) -> list[User]:
    """The users of a spec: the listed ones, or the single user ``default`` (Secret NAME-token)."""
    if not spec.users:
        named = spec.auth.token_secret
        default = model.UserSpec(name=model.DEFAULT_USER)
        return [User(default, named or owner.generated_secret_name, generated=named is None)]
    return [
        User(u, u.secret_name or owner.user_secret_name(u.name), generated=u.secret_name is None)
        for u in spec.users
    ]


def worker_token_secret_name(owner: Owner, spec: model.GrainClusterSpec) -> str:
    """The Secret holding the workers' token: the admin's, or NAME-worker-token."""
    return spec.auth.worker_token_secret or owner.worker_token_name


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe: no space, so it fits the tokens file)."""
    return secrets.token_urlsafe(32)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decode(secret: dict[str, object], key: str) -> str | None:
    """A key of a Secret, decoded; None when absent or not text."""
    data = secret.get("data") or {}
    raw = data.get(key) if isinstance(data, dict) else None
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    string_data = secret.get("stringData") or {}  # only on servers that do not convert it
    value = string_data.get(key) if isinstance(string_data, dict) else None
    return value if isinstance(value, str) else None


def worker_token_secret(owner: Owner, token: str | None = None) -> Secret:
    """The generated ``NAME-worker-token``."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {**metadata(owner, owner.worker_token_name, "worker-token"),
                     "labels": secret_labels(owner, "worker-token")},
        "data": {TOKEN_KEY: _b64(token if token is not None else new_token())},
    }


def user_secret(owner: Owner, user: str, token: str | None = None, ca_pem: str | None = None) -> Secret:
    """The generated token Secret of one user (``NAME-user-USER``, or ``NAME-token``)."""
    data = {TOKEN_KEY: _b64(token if token is not None else new_token())}
    if ca_pem:
        data[CA_KEY] = _b64(ca_pem)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {**metadata(owner, owner.user_secret_name(user), "client-token"),
                     "labels": secret_labels(owner, "client-token", user)},
        "data": data,
    }


def tokens_file(entries: list[tuple[model.UserSpec, str]]) -> str:
    """The executor's ``--client-tokens`` file: ``USER TOKEN [weight=W] [max-cores=N] [max-queued=N]``."""
    lines = ["# Generated by the Grain operator from the GrainCluster's spec.users and their Secrets."]
    for user, token in entries:
        fields = [user.name, token]
        if user.weight != 1.0:
            fields.append(f"weight={user.weight:g}")
        if user.max_cores is not None:
            fields.append(f"max-cores={user.max_cores}")
        if user.max_queued is not None:
            fields.append(f"max-queued={user.max_queued}")
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def client_tokens_secret(owner: Owner, entries: list[tuple[model.UserSpec, str]],
                         generated: list[str] | None = None) -> Secret:
    """``NAME-client-tokens``: the tokens file the executor mounts (applied on every change).

    ``generated``: the names of the user Secrets the operator made, kept in an annotation.
    """
    annotations = {USER_SECRETS_ANNOTATION: ",".join(sorted(generated or []))}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {**metadata(owner, owner.client_tokens_name, "client-tokens", annotations),
                     "labels": secret_labels(owner, "client-tokens")},
        "data": {TOKENS_FILE_KEY: _b64(tokens_file(entries))},
    }


def generated_user_secrets(client_tokens: dict[str, object] | None) -> list[str]:
    """The user Secrets a live ``NAME-client-tokens`` records as generated."""
    meta = (client_tokens or {}).get("metadata") or {}
    annotations = (meta.get("annotations") if isinstance(meta, dict) else None) or {}
    return [n for n in str(annotations.get(USER_SECRETS_ANNOTATION, "")).split(",") if n]


def named_secret_problem(
    secret: dict[str, object] | None, name: str, owner: Owner, field: str, user: str | None = None,
    keys: tuple[str, ...] = (TOKEN_KEY,),
) -> str | None:
    """Why a Secret named in the spec cannot be used (None when it can).

    It must exist, carry ``grain.dev/cluster: NAME`` (and ``grain.dev/user: USER``), not be a
    service-account token or a registry credential, and hold the keys.
    """
    if secret is None:
        return f"{field}: Secret {name!r} not found in {owner.namespace}"
    meta = secret.get("metadata") or {}
    found = (meta.get("labels") if isinstance(meta, dict) else None) or {}
    label_hint = f"`kubectl -n {owner.namespace} label secret {name} {CLUSTER_LABEL}={owner.name}" + (
        f" {USER_LABEL}={user}`" if user is not None else "`")
    if secret.get("type") in SECRET_TYPES_REFUSED:
        return f"{field}: Secret {name!r} is of type {secret.get('type')}, never a Grain token"
    if found.get(CLUSTER_LABEL) != owner.name:
        return (f"{field}: Secret {name!r} is not labelled {CLUSTER_LABEL}={owner.name}; only Secrets "
                f"labelled for this GrainCluster are used ({label_hint})")
    if user is not None and found.get(USER_LABEL) != user:
        return f"{field}: Secret {name!r} is not labelled {USER_LABEL}={user} ({label_hint})"
    for key in keys:
        value = decode(secret, key)
        if not value or not value.strip():
            return f"{field}: Secret {name!r} has no key {key!r}"
        if key == TOKEN_KEY and any(c.isspace() for c in value.strip()):
            return f"{field}: the token in Secret {name!r} contains white space"
    return None
