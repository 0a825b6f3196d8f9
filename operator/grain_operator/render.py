"""Pure rendering: a GrainCluster spec -> the children's manifests, as plain dicts.

Children of GrainCluster NAME in namespace NS (names pinned in docs/interfaces.md):
the executor Deployment and Service ``NAME-executor``, the worker DaemonSet ``NAME-worker``
and, unless ``spec.auth.tokenSecret`` names one, the token Secret ``NAME-token``.
Every child carries an ownerReference to the GrainCluster and the app.kubernetes.io labels;
pod templates carry a hash annotation of themselves so that any change of image, env or
args rolls the pods. No I/O here: ``reconcile`` (handlers) feeds the results to ``apply``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from grain_operator import model
from grain_operator.model import EnvVar, GrainClusterSpec, Toleration, parse_quantity

MANAGED_BY = "grain-operator"
TEMPLATE_HASH = "grain.dev/template-hash"
TOKEN_DIGEST = "grain.dev/token-digest"
TOKEN_KEY = "token"
TLS_MOUNT = "/etc/grain/tls"
DEFAULT_IMAGE = "grain:1.0.0"


@dataclass(frozen=True)
class Owner:
    """The GrainCluster being rendered: identity, and the operator's defaults."""

    name: str
    namespace: str
    uid: str | None = None
    default_image: str = DEFAULT_IMAGE

    @property
    def executor_name(self) -> str:
        return f"{self.name}-executor"

    @property
    def worker_name(self) -> str:
        return f"{self.name}-worker"

    @property
    def generated_secret_name(self) -> str:
        return f"{self.name}-token"

    def token_secret_name(self, spec: GrainClusterSpec) -> str:
        """The Secret holding the token: the spec's, or the generated one."""
        return spec.auth.token_secret or self.generated_secret_name

    def in_cluster_endpoint(self, spec: GrainClusterSpec) -> str:
        """grain://NAME-executor.NS.svc:PORT, the address inside the cluster."""
        return f"grain://{self.executor_name}.{self.namespace}.svc:{spec.executor.port}"


# ---------------------------------------------------------------------------------------------
# Small helpers


def labels(owner: Owner, component: str) -> dict[str, str]:
    """The labels of every child; the first three select pods and never change."""
    return {
        "app.kubernetes.io/name": "grain",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "grain",
    }


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


def metadata(owner: Owner, name: str, component: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": owner_references(owner),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def digest(data: Any) -> str:
    """A short stable hash of JSON-able data."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def token_digest(token: str) -> str:
    """A hash of the token (safe to show): pods roll when the token changes."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def worker_memory_arg(memory: int | str | None) -> str:
    """``--memory`` of the worker: the pod's memory minus the worker's overhead, in GB (2^30)."""
    if memory is None:
        return "auto"
    usable = max(parse_quantity(memory) - model.WORKER_MEMORY_OVERHEAD, Decimal(0))
    gb = (usable / Decimal(2**30)).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    return f"{gb.normalize():f}GB"


def _env(env: list[EnvVar]) -> list[dict[str, Any]]:
    return [e.model_dump(by_alias=True, exclude_none=True) for e in env]


def _tolerations(tolerations: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]


def _token_env(owner: Owner, spec: GrainClusterSpec) -> dict[str, Any]:
    return {
        "name": "GRAIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": owner.token_secret_name(spec), "key": TOKEN_KEY}},
    }


def _pod_spec_common(spec: GrainClusterSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # Service links would inject NAME_EXECUTOR_* variables; with NAME "grain" they would
        # read like Grain's own GRAIN_* settings.
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    return pod


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _with_template_hash(template: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    """Annotate a pod template with the hash of itself (and extra annotations)."""
    annotations = {TEMPLATE_HASH: digest(template), **extra}
    template["metadata"]["annotations"] = annotations
    return template


def _tls_volume(spec: GrainClusterSpec, items: list[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if spec.auth.tls is None:
        return [], []
    secret: dict[str, Any] = {"secretName": spec.auth.tls.secret_name}
    if items is not None:
        secret["items"] = [{"key": k, "path": k} for k in items]
    return (
        [{"name": "tls", "secret": secret}],
        [{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}],
    )


# ---------------------------------------------------------------------------------------------
# The children


def executor_args(spec: GrainClusterSpec) -> list[str]:
    """Arguments of ``grain executor`` (docs/interfaces.md)."""
    args = [
        "--listen", f"grain://0.0.0.0:{spec.executor.port}",
        "--http", f"0.0.0.0:{spec.executor.http_port}",
        "--retries", str(spec.scheduler.retries),
        "--wait-for-workers", f"{spec.scheduler.wait_for_workers_seconds:g}",
    ]
    if spec.scheduler.heartbeat_seconds is not None:
        args += ["--heartbeat", f"{spec.scheduler.heartbeat_seconds:g}"]
    if spec.auth.tls is not None:
        args += ["--tls-cert", f"{TLS_MOUNT}/tls.crt", "--tls-key", f"{TLS_MOUNT}/tls.key"]
    return args


def executor_deployment(owner: Owner, spec: GrainClusterSpec, token_hash: str | None = None) -> dict[str, Any]:
    """The executor: a Deployment of one replica, recreated (never two at once) on change."""
    e = spec.executor
    volumes, mounts = _tls_volume(spec, ["tls.crt", "tls.key"])
    probe = {"httpGet": {"path": "/healthz", "port": "http"}}
    container: dict[str, Any] = {
        "name": "executor",
        "image": spec.image or owner.default_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["grain", "executor"],
        "args": executor_args(spec),
        "env": [
            _token_env(owner, spec),
            *_env(e.env),
        ],
        "ports": [
            {"name": "grain", "containerPort": e.port, "protocol": "TCP"},
            {"name": "http", "containerPort": e.http_port, "protocol": "TCP"},
        ],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6},
        "resources": {
            "requests": {k: str(v) for k, v in e.resources.requests.items()},
            "limits": {k: str(v) for k, v in e.resources.limits.items()},
        },
        "securityContext": _container_security(),
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod = _pod_spec_common(spec)
    pod["containers"] = [container]
    if volumes:
        pod["volumes"] = volumes
    if e.node_selector:
        pod["nodeSelector"] = dict(e.node_selector)
    if e.tolerations:
        pod["tolerations"] = _tolerations(e.tolerations)
    template = {"metadata": {"labels": labels(owner, "executor")}, "spec": pod}
    template = _with_template_hash(template, {TOKEN_DIGEST: token_hash} if token_hash else {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, owner.executor_name, "executor"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(owner, "executor")},
            "template": template,
        },
    }


def executor_service(owner: Owner, spec: GrainClusterSpec) -> dict[str, Any]:
    """The executor's Service: ports ``grain`` and ``http``, of the spec's type."""
    e = spec.executor
    grain_port: dict[str, Any] = {"name": "grain", "port": e.port, "targetPort": "grain", "protocol": "TCP"}
    if e.node_port is not None:
        grain_port["nodePort"] = e.node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, owner.executor_name, "executor", e.service_annotations),
        "spec": {
            "type": e.service_type,
            "selector": selector_labels(owner, "executor"),
            "ports": [grain_port, {"name": "http", "port": e.http_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def worker_args(owner: Owner, spec: GrainClusterSpec) -> list[str]:
    """Arguments of ``grain worker`` (docs/interfaces.md); $(NODE_NAME) is expanded by the kubelet."""
    w = spec.workers
    args = [
        "--executor", owner.in_cluster_endpoint(spec),
        "--name", "$(NODE_NAME)",
        "--cores", "auto",
        "--memory", worker_memory_arg(w.memory),
        "--reserve-cores", str(w.reserve_cores),
        "--gpus", "auto" if w.gpus else "none",
    ]
    if spec.auth.tls is not None:
        args += ["--tls-ca", f"{TLS_MOUNT}/{spec.auth.tls.ca_key}"]
    return args


def worker_resources(spec: GrainClusterSpec) -> dict[str, Any]:
    """Worker pod resources: Guaranteed QoS with integer CPUs when exclusiveCpus."""
    w = spec.workers
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if w.cpus is not None:
        requests["cpu"] = str(w.cpus)
    if w.memory is not None:
        requests["memory"] = str(w.memory)
    if w.exclusive_cpus:
        limits = dict(requests)  # requests = limits, integer cpu: the static CPU manager pins
    elif w.memory is not None:
        limits["memory"] = str(w.memory)
    if w.gpus:
        limits[w.gpu_resource] = str(w.gpus)  # extended resources: the limit implies the request
        if w.exclusive_cpus:
            requests[w.gpu_resource] = str(w.gpus)
    return {"requests": requests, "limits": limits}


def worker_daemonset(owner: Owner, spec: GrainClusterSpec, token_hash: str | None = None) -> dict[str, Any]:
    """The workers: a DaemonSet, one pod per matching node, named after its node."""
    w = spec.workers
    volumes, mounts = _tls_volume(spec, [spec.auth.tls.ca_key] if spec.auth.tls else None)
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or owner.default_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["grain", "worker"],
        "args": worker_args(owner, spec),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            _token_env(owner, spec),
            *_env(w.env),
        ],
        "resources": worker_resources(spec),
        "securityContext": _container_security(),
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod = _pod_spec_common(spec)
    pod["containers"] = [container]
    pod["terminationGracePeriodSeconds"] = 30
    if volumes:
        pod["volumes"] = volumes
    if w.node_selector:
        pod["nodeSelector"] = dict(w.node_selector)
    if w.tolerations:
        pod["tolerations"] = _tolerations(w.tolerations)
    if w.priority_class_name:
        pod["priorityClassName"] = w.priority_class_name
    template = {"metadata": {"labels": labels(owner, "worker")}, "spec": pod}
    template = _with_template_hash(template, {TOKEN_DIGEST: token_hash} if token_hash else {})
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(owner, owner.worker_name, "worker"),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner, "worker")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": template,
        },
    }


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_secret(owner: Owner, token: str | None = None) -> dict[str, Any]:
    """The generated token Secret ``NAME-token`` (key ``token``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(owner, owner.generated_secret_name, "token"),
        "data": {TOKEN_KEY: base64.b64encode((token if token is not None else new_token()).encode()).decode()},
    }


def children(owner: Owner, spec: GrainClusterSpec, token_hash: str | None = None) -> list[dict[str, Any]]:
    """Every child except the token Secret (which is created once, never patched)."""
    return [
        executor_service(owner, spec),
        executor_deployment(owner, spec, token_hash),
        worker_daemonset(owner, spec, token_hash),
    ]
