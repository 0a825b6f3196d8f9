"""The operator's least-privilege RBAC rules, and a checker of requests against them.

Two lists: ``rules()`` (GrainClusters, the workloads, NetworkPolicies, pods, events) and
``secret_rules()`` (the Secrets). ``charts/grain/templates/rbac.yaml`` writes the same lists
(a test keeps them equal):

- namespaced mode (the default, ``rbac.namespaced: true``): a Role with both lists in each
  watched namespace (``operator.watchNamespaces``, else the release namespace);
- cluster-wide mode: a ClusterRole with ``rules()`` only, and a Role with ``secret_rules()``
  in each of ``rbac.secretNamespaces``. Secrets are never granted cluster-wide: Kubernetes
  RBAC cannot scope a grant by label, and the names of the Secrets are not known in advance,
  so a cluster-wide grant would reach every Secret of the cluster (service-account tokens
  included). A GrainCluster in a namespace without that Role is told so in its status.

``allows`` answers whether a request (method + path) is allowed by those rules in either
mode; the operator tests feed it every request the operator made.

Why each rule: kopf lists and watches GrainClusters and patches them (finalizer, progress
annotations) and their status; the operator gets, creates, patches (server-side apply is a
PATCH; creating through it needs ``create``) and deletes its children; it lists the executor's
pods (their node address, for a NodePort endpoint); kopf posts events. No ``list``/``watch``
of Secrets (a list returns their data): the operator reads its Secrets by name only.
Discovery (``/api``, ``/apis/...``) is open to every authenticated user (system:discovery).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

CHILD_VERBS = ["get", "create", "patch", "delete"]


def rules() -> list[dict[str, Any]]:
    """The PolicyRules of the operator's (Cluster)Role, Secrets excepted."""
    return [
        {"apiGroups": ["grain.dev"], "resources": ["grainclusters"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["grain.dev"], "resources": ["grainclusters/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"], "verbs": list(CHILD_VERBS)},
        {"apiGroups": [""], "resources": ["services"], "verbs": list(CHILD_VERBS)},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": list(CHILD_VERBS)},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def secret_rules() -> list[dict[str, Any]]:
    """The PolicyRules on Secrets: only ever in a (namespaced) Role."""
    return [{"apiGroups": [""], "resources": ["secrets"], "verbs": list(CHILD_VERBS)}]


@dataclass(frozen=True)
class Access:
    """What one HTTP request to the API server asks for, in RBAC terms."""

    verb: str
    group: str | None  # None: a non-resource (discovery) request
    resource: str = ""  # "grainclusters" or "grainclusters/status"
    namespace: str | None = None

    def __str__(self) -> str:
        if self.group is None:
            return f"{self.verb} (discovery)"
        where = f" in {self.namespace}" if self.namespace else " cluster-wide"
        return f"{self.verb} {self.resource}.{self.group or 'core'}{where}"


_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update"}


def access_of(method: str, url: str) -> Access:
    """Translate a request to the API server into (verb, group, resource, namespace)."""
    split = urlsplit(url)
    parts = [p for p in split.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        rest, group = [], None
    if group is None or not rest:
        return Access(method.lower(), None)
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    method = method.upper()
    if method == "GET":
        watch = parse_qs(split.query).get("watch", ["false"])[0] in ("true", "1")
        verb = "watch" if watch else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return Access(verb, group, f"{resource}/{sub}" if sub else resource, namespace)


def _granted(access: Access, rule_list: list[dict[str, Any]]) -> bool:
    for rule in rule_list:
        if (access.group in rule["apiGroups"] or "*" in rule["apiGroups"]) and \
                (access.resource in rule["resources"] or "*" in rule["resources"]) and \
                (access.verb in rule["verbs"] or "*" in rule["verbs"]):
            return True
    return False


def allows(
    access: Access, *, namespaced: bool = True, namespaces: tuple[str, ...] = (),
    secret_namespaces: tuple[str, ...] = (),
) -> bool:
    """Whether the operator's roles grant ``access``.

    Namespaced mode: Roles with both lists in ``namespaces``. Cluster-wide mode: a ClusterRole
    with ``rules()`` and Roles with ``secret_rules()`` in ``secret_namespaces``.
    """
    if access.group is None:
        return access.verb == "get"  # discovery
    if namespaced:
        in_scope = access.namespace is not None and access.namespace in namespaces
        return in_scope and _granted(access, rules() + secret_rules())
    if _granted(access, rules()):
        return True
    return access.namespace in secret_namespaces and _granted(access, secret_rules())


def main() -> int:
    """Print the rules as YAML (to paste into a Role by hand)."""
    sys.stdout.write(yaml.safe_dump({"rules": rules() + secret_rules()}, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
