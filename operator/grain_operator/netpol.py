"""NetworkPolicies of a GrainCluster (pure): who may reach the executor; nobody reaches a worker.

``NAME-executor`` selects the executor pod and allows, on the grain port: the worker pods;
pods labelled ``grain.dev/client: NAME`` in the GrainCluster's namespace and in
``spec.networkPolicy.clientNamespaces``; and ``clientCidrs`` (clients outside the cluster,
through a NodePort or LoadBalancer). On the http port (/healthz, /status, /metrics, the web
page): the operator's pods (it reads /status), ``httpNamespaces`` and ``httpCidrs``.
Everything else is refused where the network plugin enforces NetworkPolicy.

``NAME-worker`` selects the worker pods and allows no ingress at all: workers dial the
executor, nothing dials them, and a job's listening socket is not reachable from other pods.

What a NetworkPolicy never filters (Kubernetes' own rules): the kubelet's probes and
``kubectl port-forward`` (both enter through the node), so the laptop client's port-forward
and the readiness probe keep working. Egress is left open: jobs may need the network.
"""

from __future__ import annotations

from typing import Any

from grain_operator.model import GrainClusterSpec
from grain_operator.names import CLIENT_LABEL, Owner, metadata, selector_labels

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
#: The operator's pods, as the chart labels them.
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "grain", "app.kubernetes.io/component": "operator"}


def _in_namespace(namespace: str, pods: dict[str, str]) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}},
            "podSelector": {"matchLabels": dict(pods)}}


def executor_policy(owner: Owner, spec: GrainClusterSpec) -> dict[str, Any]:
    """``NAME-executor``: workers and labelled clients to the grain port; the operator to http."""
    np = spec.network_policy
    clients = {CLIENT_LABEL: owner.name}
    grain_from: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": selector_labels(owner, "worker")}},
        {"podSelector": {"matchLabels": clients}},
        *(_in_namespace(ns, clients) for ns in np.client_namespaces if ns != owner.namespace),
        *({"ipBlock": {"cidr": cidr}} for cidr in np.client_cidrs),
    ]
    http_from: list[dict[str, Any]] = []
    if owner.operator_namespace:
        http_from.append(_in_namespace(owner.operator_namespace, OPERATOR_POD_LABELS))
    http_from += [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: ns}}} for ns in np.http_namespaces]
    http_from += [{"ipBlock": {"cidr": cidr}} for cidr in np.http_cidrs]
    ingress: list[dict[str, Any]] = [
        {"ports": [{"port": spec.executor.port, "protocol": "TCP"}], "from": grain_from},
    ]
    if http_from:
        ingress.append({"ports": [{"port": spec.executor.http_port, "protocol": "TCP"}], "from": http_from})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, owner.executor_name, "executor"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, "executor")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def worker_policy(owner: Owner) -> dict[str, Any]:
    """``NAME-worker``: no ingress to the worker pods."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, owner.worker_name, "worker"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, "worker")},
            "policyTypes": ["Ingress"],
            "ingress": [],
        },
    }


def network_policies(owner: Owner, spec: GrainClusterSpec) -> list[dict[str, Any]]:
    """Both policies, or none when ``spec.networkPolicy.enabled`` is false."""
    if not spec.network_policy.enabled:
        return []
    return [executor_policy(owner, spec), worker_policy(owner)]
