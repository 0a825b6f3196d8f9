"""The GrainCluster's status: observe the children and the executor, then say how it is doing.

``observe`` (I/O) reads the executor Deployment, the worker DaemonSet, the Service (and, for
NodePort, the executor pod's node address) and ``GET /status`` of the executor (JSON shape in
docs/interfaces.md, short timeout). ``compute_status`` (pure) turns an ``Observation`` into
the status dict: phase, conditions with observedGeneration and lastTransitionTime, workers,
cores, memory, queue, endpoints, per-worker cpusets, per-user jobs and share, recovery.
Fields an executor does not report yet (``users``, ``recovering``) are simply absent there:
the status then shows the users from the spec with zero counts. Called by the handlers.
"""

from __future__ import annotations

import datetime
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from grain_operator import render
from grain_operator.diff import merge_patch
from grain_operator.kube import Kube
from grain_operator.model import (
    DEFAULT_USER,
    Condition,
    CoresStatus,
    Endpoints,
    GrainClusterSpec,
    GrainClusterStatus,
    MemoryStatus,
    Phase,
    SpecProblem,
    UserStatus,
    WorkersStatus,
    WorkerStatus,
)

logger = logging.getLogger(__name__)

DEFAULT_STATUS_URL = "http://{name}-executor.{namespace}.svc:{http_port}/status"


@dataclass
class Observation:
    """Everything the status is computed from (filled by ``observe``, or by tests)."""

    deployment: dict[str, Any] | None = None
    daemonset: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    executor_host_ip: str | None = None
    executor_status: dict[str, Any] | None = None
    executor_error: str | None = None
    blocker: str | None = None  # a reconcile problem worth showing (e.g. the API refused)
    #: Secrets that could not be used (named but not labelled, missing keys...).
    credential_problems: list[str] = field(default_factory=list)
    #: The users, as (name, Secret name, weight), from the spec.
    users: list[tuple[str, str, float]] = field(default_factory=list)


def now_rfc3339() -> str:
    """The current time, as Kubernetes writes it."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def compact_cpuset(cpus: list[int] | None) -> str:
    """[2, 3, 4, 5, 8] -> "2-5,8"."""
    if not cpus:
        return ""
    ordered = sorted(set(int(c) for c in cpus))
    ranges: list[str] = []
    start = prev = ordered[0]
    following: list[int | None] = [*ordered[1:], None]
    for cpu in following:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(ranges)


# ---------------------------------------------------------------------------------------------
# I/O


def status_url(template: str, owner: render.Owner, spec: GrainClusterSpec) -> str:
    """The executor's /status URL (the template can point elsewhere, e.g. in tests)."""
    return template.format(
        name=owner.name, namespace=owner.namespace, http_port=spec.executor.http_port, port=spec.executor.port
    )


def fetch_executor_status(url: str, timeout: float = 3.0) -> tuple[dict[str, Any] | None, str | None]:
    """GET the executor's /status: (the JSON, None) or (None, why it could not be read)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) URL from config
            body = resp.read(4 * 2**20)
    except urllib.error.HTTPError as exc:
        return None, f"GET {url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        return None, f"GET {url}: {type(reason).__name__}: {reason}".rstrip(": ")
    try:
        data = json.loads(body)
    except ValueError as exc:
        return None, f"GET {url}: not JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"GET {url}: not a JSON object"
    return data, None


def observe(kube: Kube, owner: render.Owner, spec: GrainClusterSpec, url_template: str, timeout: float = 3.0) -> Observation:
    """Read the children and the executor's /status."""
    ns = owner.namespace
    deployment = kube.get("apps/v1", "Deployment", ns, owner.executor_name)
    daemonset = kube.get("apps/v1", "DaemonSet", ns, owner.worker_name)
    service = kube.get("v1", "Service", ns, owner.executor_name)
    obs = Observation(deployment=deployment, daemonset=daemonset, service=service)
    if spec.executor.service_type == "NodePort" and not spec.executor.external_host:
        pods = kube.list("v1", "Pod", ns, render.selector_labels(owner, "executor"))
        ips = [p.get("status", {}).get("hostIP") for p in pods if p.get("status", {}).get("hostIP")]
        obs.executor_host_ip = sorted(ips)[0] if ips else None
    if deployment is not None:
        url = status_url(url_template, owner, spec)
        obs.executor_status, obs.executor_error = fetch_executor_status(url, timeout)
    else:
        obs.executor_error = "the executor Deployment does not exist yet"
    return obs


def _number(value: Any, kind: type[int] | type[float] = int) -> Any:
    """A number from an executor's JSON, 0 when absent or not a number (old executors)."""
    try:
        return kind(value or 0)
    except (TypeError, ValueError):
        return kind(0)


def recovering_text(value: Any) -> str | None:
    """The executor's ``recovering`` object as one line; None when it is not recovering.

    ``{"waiting_for_workers": {"node-1": 3}, "jobs_held_back": 0, "sessions_waiting_for_their_client": 2}``
    -> ``waiting for workers: node-1 (3); sessions waiting for their client: 2`` (zeros left out).
    """
    if not value:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return "recovering"
    parts = []
    for key, item in value.items():
        if not item:
            continue
        if isinstance(item, dict):
            shown = [f"{k} ({v})" for k, v in list(item.items())[:10]]
            item = ", ".join(shown) + (f" (+{len(item) - 10} more)" if len(item) > 10 else "")
        elif isinstance(item, list):
            item = ", ".join(map(str, item[:10])) + (f" (+{len(item) - 10} more)" if len(item) > 10 else "")
        parts.append(f"{str(key).replace('_', ' ')}: {item}")
    return "; ".join(parts) or "recovering"


def user_statuses(users: list[tuple[str, str, float]], reported: Any) -> list[UserStatus]:
    """Each user of the spec with the executor's counts (zeros where it reports none)."""
    by_name = {str(u.get("name")): u for u in reported if isinstance(u, dict)} if isinstance(reported, list) else {}
    out = []
    for name, secret, weight in users:
        u = by_name.get(name, {})
        out.append(UserStatus(
            name=name, secret_name=secret, weight=_number(u.get("weight", weight), float) or weight,
            running_jobs=_number(u.get("running_jobs")), queued_jobs=_number(u.get("queued_jobs")),
            cores_in_use=_number(u.get("cores_in_use")), share=round(_number(u.get("share"), float), 4),
        ))
    return out


def dashboard_hint(owner: render.Owner, spec: GrainClusterSpec) -> str:
    """How to open the executor's web page from a workstation."""
    port = spec.executor.http_port
    return (f"kubectl -n {owner.namespace} port-forward svc/{owner.executor_name} {port}, "
            f"then http://localhost:{port}/")


# ---------------------------------------------------------------------------------------------
# Pure


def _external_endpoint(owner: render.Owner, spec: GrainClusterSpec, obs: Observation) -> str | None:
    e = spec.executor
    svc = obs.service or {}
    if e.service_type == "ClusterIP":
        return f"grain://{e.external_host}:{e.port}" if e.external_host else None
    if e.service_type == "NodePort":
        ports = (svc.get("spec") or {}).get("ports") or []
        node_port = next((p.get("nodePort") for p in ports if p.get("name") == "grain"), None)
        host = e.external_host or obs.executor_host_ip
        return f"grain://{host}:{node_port}" if host and node_port else None
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    host = e.external_host or next((i.get("hostname") or i.get("ip") for i in ingress if i.get("hostname") or i.get("ip")), None)
    return f"grain://{host}:{e.port}" if host else None


def _condition(ctype: str, ok: bool | None, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    status = "Unknown" if ok is None else "True" if ok else "False"
    return {"type": ctype, "status": status, "reason": reason, "message": message, "observedGeneration": generation}


def _keep_transition_times(new: list[dict[str, Any]], old: list[dict[str, Any]] | None, now: str) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in old or []}
    for cond in new:
        before = previous.get(cond["type"])
        if before and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            cond["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            cond["lastTransitionTime"] = now
    return new


def compute_status(
    owner: render.Owner,
    spec: GrainClusterSpec | None,
    obs: Observation,
    *,
    generation: int | None,
    problems: list[SpecProblem] | None = None,
    previous: dict[str, Any] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The whole status dict (camelCase), stable when nothing changed (transition times kept)."""
    now = now or now_rfc3339()
    spec = spec or GrainClusterSpec()
    problems = problems or []
    conditions: list[dict[str, Any]] = []

    # SpecValid
    if problems:
        conditions.append(_condition("SpecValid", False, "InvalidSpec", "; ".join(map(str, problems)), generation))
    else:
        conditions.append(_condition("SpecValid", True, "Valid", "", generation))

    # CredentialsReady (not while the spec is invalid: nothing was ensured)
    if not problems:
        if obs.credential_problems:
            conditions.append(_condition(
                "CredentialsReady", False, "SecretNotUsable", "; ".join(obs.credential_problems), generation))
        else:
            conditions.append(_condition("CredentialsReady", True, "Ready", "", generation))

    # ExecutorReady
    dep_status = (obs.deployment or {}).get("status") or {}
    available = int(dep_status.get("availableReplicas") or dep_status.get("readyReplicas") or 0)
    es = obs.executor_status
    if obs.deployment is None:
        executor = _condition("ExecutorReady", False, "NotCreated", "the executor Deployment does not exist yet", generation)
    elif available < 1:
        executor = _condition("ExecutorReady", False, "DeploymentNotReady", "0/1 executor pods available", generation)
    elif es is None:
        executor = _condition("ExecutorReady", False, "StatusUnreachable", obs.executor_error or "no /status", generation)
    else:
        executor = _condition(
            "ExecutorReady", True, "Ready",
            f"executor {es.get('version', '?')} answers /status",
            generation,
        )
    conditions.append(executor)

    # Recovering (only while the executor says so)
    recovering = recovering_text((es or {}).get("recovering"))
    if recovering:
        conditions.append(_condition("Recovering", True, "RebuildingState", recovering, generation))
    ds_status = (obs.daemonset or {}).get("status") or {}
    desired = int(ds_status.get("desiredNumberScheduled") or 0)
    ready = int(ds_status.get("numberReady") or 0)
    reported = list((es or {}).get("workers") or [])
    registered = len(reported)
    if obs.daemonset is None:
        workers = _condition("WorkersReady", False, "NotCreated", "the worker DaemonSet does not exist yet", generation)
    elif desired == 0:
        workers = _condition(
            "WorkersReady", False, "NoMatchingNodes",
            "no node runs a worker: check spec.workers.nodeSelector and tolerations", generation,
        )
    elif ready < desired:
        workers = _condition("WorkersReady", False, "PodsNotReady", f"{ready}/{desired} worker pods ready", generation)
    elif es is not None and registered < ready:
        workers = _condition(
            "WorkersReady", False, "NotRegistered",
            f"{ready} worker pods ready, {registered} registered with the executor", generation,
        )
    else:
        suffix = f", {registered} registered" if es is not None else ""
        workers = _condition("WorkersReady", True, "AllReady", f"{ready}/{desired} worker pods ready{suffix}", generation)
    conditions.append(workers)

    # ExclusiveCpus (only when asked)
    shared = sorted(str(w.get("name")) for w in reported if not w.get("exclusive_cpuset"))
    exclusive: dict[str, Any] | None = None
    if spec.workers.exclusive_cpus:
        if es is None or not reported:
            exclusive = _condition("ExclusiveCpus", None, "NoWorkerReport", "no worker has reported its cpuset yet", generation)
        elif shared:
            exclusive = _condition(
                "ExclusiveCpus", False, "StaticCPUManagerNotInForce",
                f"exclusiveCpus is set but worker(s) {', '.join(shared)} see all the node's CPUs: the kubelet's "
                "static CPU manager (cpuManagerPolicy: static) is not in force there, so cores are shared",
                generation,
            )
        else:
            exclusive = _condition("ExclusiveCpus", True, "Exclusive", "every worker has exclusive cores", generation)
        conditions.append(exclusive)

    # Phase and Degraded
    phase: Phase
    degraded: list[tuple[str, str]] = []  # (reason, message)
    if executor["reason"] == "StatusUnreachable":
        degraded.append(("ExecutorStatusUnreachable", f"executor status unreachable ({obs.executor_error})"))
    if workers["status"] != "True" and ready > 0:
        degraded.append(("WorkersNotReady", workers["message"]))
    if exclusive is not None and exclusive["status"] == "False":
        degraded.append((
            "CoresNotExclusive", f"cores not exclusive on {', '.join(shared)} (static CPU manager not in force)"
        ))
    if recovering:
        degraded.append(("Recovering", f"the executor is recovering ({recovering})"))
    if obs.credential_problems:
        degraded.append(("CredentialsNotReady", "; ".join(obs.credential_problems)))
    if problems:
        phase, message = "Failed", "invalid spec: " + "; ".join(map(str, problems))
    elif executor["reason"] in ("NotCreated", "DeploymentNotReady"):
        phase, message = "Pending", executor["message"]
        if obs.credential_problems:
            message = f"{message}; " + "; ".join(obs.credential_problems)
    elif ready == 0:
        phase, message = "Pending", workers["message"]
    elif degraded:
        phase, message = "Degraded", "; ".join(m for _, m in degraded)
    else:
        total = int(((es or {}).get("cores") or {}).get("total") or 0)
        phase, message = "Running", f"{registered or ready} workers, {total} cores"
    if obs.blocker:
        message = f"{obs.blocker}; {message}"
    if phase == "Degraded":
        conditions.append(_condition("Degraded", True, degraded[0][0], "; ".join(m for _, m in degraded), generation))
    else:
        conditions.append(_condition("Degraded", False, "AsExpected" if phase == "Running" else phase, "", generation))

    nodes = sorted(
        (WorkerStatus(
            name=str(w.get("name", "?")),
            cpuset=compact_cpuset(w.get("cpuset")),
            exclusive=bool(w.get("exclusive_cpuset")),
            cores_total=int(w.get("cores_total") or 0),
            cores_free=int(w.get("cores_free") or 0),
            running_jobs=int(w.get("running_jobs") or 0),
        ) for w in reported),
        key=lambda n: n.name,
    )
    cores = (es or {}).get("cores") or {}
    memory = (es or {}).get("memory_gb") or {}
    status = GrainClusterStatus(
        phase=phase,
        message=message,
        observed_generation=generation,
        conditions=[Condition.model_validate(c) for c in _keep_transition_times(conditions, (previous or {}).get("conditions"), now)],
        endpoints=Endpoints(
            in_cluster=owner.in_cluster_endpoint(spec), external=_external_endpoint(owner, spec, obs),
            tls_server_name=owner.service_host if spec.auth.tls.enabled else None,
            dashboard=dashboard_hint(owner, spec),
        ),
        token_secret=next((secret for name, secret, _ in obs.users if name == DEFAULT_USER), None),
        users=user_statuses(obs.users, (es or {}).get("users")),
        recovering=recovering,
        workers=WorkersStatus(desired=desired, ready=ready, registered=registered, summary=f"{ready}/{desired}", nodes=nodes),
        cores=CoresStatus(
            total=int(cores.get("total") or 0), free=int(cores.get("free") or 0),
            summary=f"{int(cores.get('free') or 0)}/{int(cores.get('total') or 0)}",
        ),
        memory=MemoryStatus(total_gb=float(memory.get("total") or 0.0), free_gb=float(memory.get("free") or 0.0)),
        queue_length=int((es or {}).get("queue_length") or 0),
        running_jobs=int((es or {}).get("running_jobs") or 0),
        clients=int((es or {}).get("clients") or 0),
        executor_version=(es or {}).get("version"),
    )
    return status.model_dump(by_alias=True, exclude_none=True)


def status_patch(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """The merge patch of status from ``old`` to ``new``; {} when nothing changed (no write).

    Fields of ``old`` that ``new`` lacks are removed (null), except foreign top-level keys.
    """
    old = old or {}
    return merge_patch({k: v for k, v in old.items() if k in _OWN_KEYS}, new, old)


_OWN_KEYS = frozenset(GrainClusterStatus.model_json_schema(by_alias=True)["properties"])
