"""Pure rendering: a GrainCluster spec -> the executor and worker workloads, as plain dicts.

Children rendered here (names in ``names``): the executor Deployment and Service
``NAME-executor``, the worker DaemonSet ``NAME-worker`` and the NetworkPolicies
(``netpol``). The Secrets they mount come from ``tokens`` and ``tls`` and are ensured by
``credentials``, which hands over their names and a digest (``SecretRefs``).

Pods are hardened: non-root (the image's user 10001), a read-only root filesystem with an
``emptyDir`` at ``/tmp``, every capability dropped, no privilege escalation, seccomp
RuntimeDefault, no service links. Secrets reach the containers as read-only files
(``defaultMode`` 0440, group = the pod's fsGroup), never as environment variables: a job
inherits its worker's environment, and must not find a Grain secret there.

Every pod template carries a hash of itself (``grain.dev/template-hash``) and the digest of
the credentials it mounts (``grain.dev/credentials-digest``: the worker token, the TLS
certificate), so a change of image, args, env or credentials rolls the pods. The client
tokens file is not in the digest: the executor re-reads it when it changes. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from grain_operator import model, netpol
from grain_operator.model import EnvVar, GrainClusterSpec, Toleration, parse_quantity
from grain_operator.names import (
    DEFAULT_IMAGE,
    MANAGED_BY,
    Owner,
    digest,
    labels,
    metadata,
    owner_references,
    selector_labels,
)
from grain_operator.tls import CA_KEY, CERT_KEY, PRIVATE_KEY
from grain_operator.tokens import TOKEN_KEY, TOKENS_FILE_KEY

__all__ = [
    "DEFAULT_IMAGE", "MANAGED_BY", "Owner", "SecretRefs", "children", "digest", "executor_args",
    "executor_deployment", "executor_service", "labels", "metadata", "owner_references",
    "selector_labels", "worker_args", "worker_daemonset", "worker_memory_arg", "worker_resources",
]

TEMPLATE_HASH = "grain.dev/template-hash"
CREDENTIALS_DIGEST = "grain.dev/credentials-digest"
#: The image's user (Dockerfile: USER 10001:10001); also the fsGroup that may read the Secrets.
RUN_AS = 10001
#: Secret files: readable by their owner (root) and the pod's fsGroup, nobody else.
SECRET_MODE = 0o440
TLS_MOUNT = "/etc/grain/tls"
WORKER_TOKEN_MOUNT = "/etc/grain/worker"
CLIENT_TOKENS_MOUNT = "/etc/grain/clients"
WORKER_TOKEN_FILE = f"{WORKER_TOKEN_MOUNT}/{TOKEN_KEY}"
CLIENT_TOKENS_FILE = f"{CLIENT_TOKENS_MOUNT}/{TOKENS_FILE_KEY}"
#: Time a worker gets after its drain time to hand back its jobs and exit.
DRAIN_MARGIN_SECONDS = 15


@dataclass(frozen=True)
class SecretRefs:
    """The Secrets the pods mount (ensured by ``credentials``) and a digest that rolls the pods."""

    worker_token: str
    client_tokens: str
    tls: str | None = None  # None: TLS is off
    digest: str = ""


def refs_for(owner: Owner, spec: GrainClusterSpec, credentials_digest: str = "") -> SecretRefs:
    """The SecretRefs the operator would use for a spec (its default names)."""
    tls = spec.auth.tls
    return SecretRefs(
        worker_token=spec.auth.worker_token_secret or owner.worker_token_name,
        client_tokens=owner.client_tokens_name,
        tls=(tls.secret_name or owner.tls_name) if tls.enabled else None,
        digest=credentials_digest,
    )


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


def _pod_spec_common(spec: GrainClusterSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # Service links would inject NAME_EXECUTOR_* variables; with NAME "grain" they would
        # read like Grain's own GRAIN_* settings.
        "enableServiceLinks": False,
        # Pods talk to the executor with their own files; they need no Kubernetes API token.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    return pod


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _secret_volume(name: str, secret: str, keys: list[str]) -> dict[str, Any]:
    return {"name": name, "secret": {
        "secretName": secret, "defaultMode": SECRET_MODE, "items": [{"key": k, "path": k} for k in keys],
    }}


def _volumes(role: str, refs: SecretRefs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volumes and mounts of the executor or a worker: /tmp, and the Secrets it reads."""
    volumes = [{"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if role == "executor":
        volumes.append(_secret_volume("client-tokens", refs.client_tokens, [TOKENS_FILE_KEY]))
        mounts.append({"name": "client-tokens", "mountPath": CLIENT_TOKENS_MOUNT, "readOnly": True})
    volumes.append(_secret_volume("worker-token", refs.worker_token, [TOKEN_KEY]))
    mounts.append({"name": "worker-token", "mountPath": WORKER_TOKEN_MOUNT, "readOnly": True})
    if refs.tls is not None:
        keys = [CERT_KEY, PRIVATE_KEY] if role == "executor" else [CA_KEY]
        volumes.append(_secret_volume("tls", refs.tls, keys))
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    return volumes, mounts


def _template(owner: Owner, component: str, pod: dict[str, Any], refs: SecretRefs) -> dict[str, Any]:
    """A pod template annotated with the hash of itself and the credentials' digest."""
    template: dict[str, Any] = {"metadata": {"labels": labels(owner, component)}, "spec": pod}
    annotations = {TEMPLATE_HASH: digest(template)}
    if refs.digest:
        annotations[CREDENTIALS_DIGEST] = refs.digest
    template["metadata"]["annotations"] = annotations
    return template


# ---------------------------------------------------------------------------------------------
# The executor


def executor_args(spec: GrainClusterSpec, refs: SecretRefs) -> list[str]:
    """Arguments of ``grain executor`` (docs/interfaces.md)."""
    s = spec.scheduler
    args = [
        "--listen", f"grain://0.0.0.0:{spec.executor.port}",
        "--http", f"0.0.0.0:{spec.executor.http_port}",
        "--client-tokens", CLIENT_TOKENS_FILE,
        "--worker-token-file", WORKER_TOKEN_FILE,
    ]
    if refs.tls is not None:
        args += ["--tls-cert", f"{TLS_MOUNT}/{CERT_KEY}", "--tls-key", f"{TLS_MOUNT}/{PRIVATE_KEY}"]
    args += [
        "--retries", str(s.retries),
        "--wait-for-workers", f"{s.wait_for_workers_seconds:g}",
        "--client-grace", f"{s.client_grace_seconds:g}",
    ]
    if s.heartbeat_seconds is not None:
        args += ["--heartbeat", f"{s.heartbeat_seconds:g}"]
    return args


def executor_deployment(owner: Owner, spec: GrainClusterSpec, refs: SecretRefs | None = None) -> dict[str, Any]:
    """The executor: a Deployment of one replica, recreated (never two at once) on change."""
    refs = refs or refs_for(owner, spec)
    e = spec.executor
    volumes, mounts = _volumes("executor", refs)
    probe = {"httpGet": {"path": "/healthz", "port": "http"}}
    container: dict[str, Any] = {
        "name": "executor",
        "image": spec.image or owner.default_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["grain", "executor"],
        "args": executor_args(spec, refs),
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
        "volumeMounts": mounts,
    }
    if e.env:
        container["env"] = _env(e.env)
    pod = _pod_spec_common(spec)
    pod["containers"] = [container]
    pod["volumes"] = volumes
    if e.node_selector:
        pod["nodeSelector"] = dict(e.node_selector)
    if e.tolerations:
        pod["tolerations"] = _tolerations(e.tolerations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, owner.executor_name, "executor"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(owner, "executor")},
            "template": _template(owner, "executor", pod, refs),
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


# ---------------------------------------------------------------------------------------------
# The workers


def worker_args(owner: Owner, spec: GrainClusterSpec, refs: SecretRefs | None = None) -> list[str]:
    """Arguments of ``grain worker`` (docs/interfaces.md); $(NODE_NAME) is expanded by the kubelet."""
    refs = refs or refs_for(owner, spec)
    w = spec.workers
    args = [
        "--executor", owner.in_cluster_endpoint(spec),
        "--name", "$(NODE_NAME)",
        "--cores", "auto",
        "--memory", worker_memory_arg(w.memory),
        "--reserve-cores", str(w.reserve_cores),
        "--gpus", "auto" if w.gpus else "none",
        "--token-file", WORKER_TOKEN_FILE,
    ]
    if refs.tls is not None:
        args += ["--tls-ca", f"{TLS_MOUNT}/{CA_KEY}"]
    args += ["--drain-timeout", str(w.drain_timeout_seconds)]
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


def worker_daemonset(owner: Owner, spec: GrainClusterSpec, refs: SecretRefs | None = None) -> dict[str, Any]:
    """The workers: a DaemonSet, one pod per matching node, named after its node."""
    refs = refs or refs_for(owner, spec)
    w = spec.workers
    volumes, mounts = _volumes("worker", refs)
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or owner.default_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["grain", "worker"],
        "args": worker_args(owner, spec, refs),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            *_env(w.env),
        ],
        "resources": worker_resources(spec),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    pod = _pod_spec_common(spec)
    pod["containers"] = [container]
    # SIGTERM starts the drain: running jobs get drainTimeoutSeconds to finish, then are
    # handed back; the margin covers the hand-back and the exit.
    pod["terminationGracePeriodSeconds"] = w.drain_timeout_seconds + DRAIN_MARGIN_SECONDS
    pod["volumes"] = volumes
    if w.node_selector:
        pod["nodeSelector"] = dict(w.node_selector)
    if w.tolerations:
        pod["tolerations"] = _tolerations(w.tolerations)
    if w.priority_class_name:
        pod["priorityClassName"] = w.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(owner, owner.worker_name, "worker"),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner, "worker")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": _template(owner, "worker", pod, refs),
        },
    }


def children(owner: Owner, spec: GrainClusterSpec, refs: SecretRefs | None = None) -> list[dict[str, Any]]:
    """The workloads and their NetworkPolicies (the Secrets are ``credentials``' business)."""
    refs = refs or refs_for(owner, spec)
    return [
        executor_service(owner, spec),
        executor_deployment(owner, spec, refs),
        worker_daemonset(owner, spec, refs),
        *netpol.network_policies(owner, spec),
    ]
