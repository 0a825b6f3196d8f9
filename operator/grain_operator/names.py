"""Names, labels and ownership of a GrainCluster's children (pure).

GrainCluster NAME in namespace NS owns (names pinned in docs/interfaces.md):

- Deployment, Service and NetworkPolicy ``NAME-executor``; DaemonSet and NetworkPolicy
  ``NAME-worker``;
- Secrets: ``NAME-worker-token`` (the workers' token), one per user ``NAME-user-USER``
  (``NAME-token`` for the user ``default`` of a spec without users, today's name),
  ``NAME-client-tokens`` (the executor's tokens file) and ``NAME-tls`` (CA and certificate).

Secrets carry ``grain.dev/cluster: NAME`` (and ``grain.dev/user: USER``) besides the usual
``app.kubernetes.io`` labels: it is how an admin marks a Secret of their own as Grain's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from grain_operator import model

MANAGED_BY = "grain-operator"
CLUSTER_LABEL = "grain.dev/cluster"
USER_LABEL = "grain.dev/user"
#: Pods with this label (value: the GrainCluster's name) may reach the executor's grain port.
CLIENT_LABEL = "grain.dev/client"
DEFAULT_IMAGE = "grain:1.0.0"


@dataclass(frozen=True)
class Owner:
    """The GrainCluster being rendered: identity, and the operator's defaults."""

    name: str
    namespace: str
    uid: str | None = None
    default_image: str = DEFAULT_IMAGE
    #: Where the operator runs (its pods may reach the executor's http port); None: unknown.
    operator_namespace: str | None = None

    @property
    def executor_name(self) -> str:
        return f"{self.name}-executor"

    @property
    def worker_name(self) -> str:
        return f"{self.name}-worker"

    @property
    def generated_secret_name(self) -> str:
        """The default user's token Secret when generated (the name Grain always used)."""
        return f"{self.name}-token"

    @property
    def worker_token_name(self) -> str:
        return f"{self.name}-worker-token"

    @property
    def client_tokens_name(self) -> str:
        return f"{self.name}-client-tokens"

    @property
    def tls_name(self) -> str:
        return f"{self.name}-tls"

    def user_secret_name(self, user: str) -> str:
        """The generated token Secret of ``user``."""
        return self.generated_secret_name if user == model.DEFAULT_USER else f"{self.name}-user-{user}"

    @property
    def service_host(self) -> str:
        """The executor Service's DNS name, the one the TLS certificate is checked against."""
        return f"{self.executor_name}.{self.namespace}.svc"

    def in_cluster_endpoint(self, spec: model.GrainClusterSpec) -> str:
        """grain://NAME-executor.NS.svc:PORT, the address inside the cluster."""
        return f"grain://{self.service_host}:{spec.executor.port}"


def labels(owner: Owner, component: str) -> dict[str, str]:
    """The labels of every child; the first three select pods and never change."""
    return {
        "app.kubernetes.io/name": "grain",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "grain",
    }


def secret_labels(owner: Owner, component: str, user: str | None = None) -> dict[str, str]:
    """Labels of a Secret: the usual ones, plus the cluster (and user) it belongs to."""
    out = {**labels(owner, component), CLUSTER_LABEL: owner.name}
    if user is not None:
        out[USER_LABEL] = user
    return out


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """Labels that select a component's pods (immutable in Deployments and DaemonSets)."""
    return {k: v for k, v in labels(owner, component).items() if k in (
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")}


def owner_references(owner: Owner) -> list[dict[str, Any]]:
    """The controller reference to the GrainCluster (deleting it deletes the children)."""
    ref: dict[str, Any] = {
        "apiVersion": f"{model.API_GROUP}/{model.API_VERSION}",
        "kind": model.KIND,
        "name": owner.name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if owner.uid:
        ref["uid"] = owner.uid
    return [ref]


def metadata(
    owner: Owner, name: str, component: str, annotations: dict[str, str] | None = None,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """metadata of a child."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, component), **(extra_labels or {})},
        "ownerReferences": owner_references(owner),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def controlled_by(obj: dict[str, Any], owner: Owner) -> bool:
    """Whether ``obj`` has the controller reference to this GrainCluster."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == model.KIND and ref.get("name") == owner.name and ref.get("controller"):
            return owner.uid is None or ref.get("uid") in (None, owner.uid)
    return False


def digest(data: Any) -> str:
    """A short stable hash of JSON-able data (safe to show even when the data is a secret)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
