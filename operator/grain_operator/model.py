"""The GrainCluster resource: the one source of its schema (spec and status), as pydantic models.

The CRD (``crd.py``) and the field reference (``docs.py``) are generated from these classes,
so every field carries a description. ``parse_spec`` turns a raw ``spec`` dict (as kopf hands
it over) into a ``GrainClusterSpec`` plus the list of problems that the CRD schema cannot
express (e.g. ``reserveCores >= cpus``), each naming its field. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

API_GROUP = "grain.dev"
API_VERSION = "v1"
KIND = "GrainCluster"
PLURAL = "grainclusters"
SINGULAR = "graincluster"
SHORT_NAMES = ["grc"]

#: A Kubernetes quantity ("500m", "2", "8Gi"), given as a string or an integer.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_SUFFIXES = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(value: int | str) -> Decimal:
    """A Kubernetes quantity as a number ("8Gi" -> 8589934592, "500m" -> 0.5); ValueError if none."""
    text = str(value).strip()
    try:
        for suffix in sorted(_SUFFIXES, key=len, reverse=True):
            if suffix and text.endswith(suffix):
                return Decimal(text[: -len(suffix)]) * Decimal(_SUFFIXES[suffix])
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)") from None


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    parse_quantity(value)
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]

#: Memory a worker keeps for itself (agent and runner overhead), not offered to jobs.
WORKER_MEMORY_OVERHEAD = 256 * 2**20
#: A DNS-1123 subdomain (the names of Secrets and most objects).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: A DNS-1123 label (the names of namespaces).
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: The user of a spec without users (its token Secret keeps the name NAME-token).
DEFAULT_USER = "default"


class _Model(BaseModel):
    """Common configuration: camelCase names in Kubernetes, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",  # the API server prunes unknown fields; do the same
    )


# ---------------------------------------------------------------------------------------------
# Small Kubernetes shapes (the subset of core/v1 that a GrainCluster lets you set)


class Toleration(_Model):
    """A toleration, as in a Pod's spec.tolerations."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists (any value) or Equal (the value below).")
    value: str | None = Field(None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(_Model):
    """Compute resources of a container, as in a Pod's resources."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: 500m, memory: 512Mi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources, e.g. {memory: 1Gi}."
    )


class KeyRef(_Model):
    """A key of a Secret or ConfigMap."""

    name: str = Field(description="Name of the Secret or ConfigMap, in the GrainCluster's namespace.")
    key: str = Field(description="Key inside it.")
    optional: bool | None = Field(None, description="Start the container even when the key is missing.")


class FieldRef(_Model):
    """A field of the pod (downward API)."""

    field_path: str = Field(description="Path of the field, e.g. metadata.name or spec.nodeName.")


class EnvVarSource(_Model):
    """Where an environment variable's value comes from (exactly one of these)."""

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(None, description="A field of the pod.")


class EnvVar(_Model):
    """An environment variable of a container."""

    name: str = Field(description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(None, description="Value taken from a Secret, ConfigMap or pod field instead.")


# ---------------------------------------------------------------------------------------------
# spec


class ExecutorSpec(_Model):
    """The executor: one pod (a Deployment of 1 replica) that queues and places jobs, and its Service."""

    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "2Gi"}
        ),
        description="Compute resources of the executor container.",
    )
    port: int = Field(4242, ge=1, le=65535, description="Port of the grain protocol (clients and workers connect here).")
    http_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP endpoints /healthz, /status and /metrics.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="Type of the executor's Service; NodePort or LoadBalancer also reach it from outside the cluster."
    )
    node_port: int | None = Field(
        None, ge=30000, le=32767,
        description="Fixed node port for the grain port (NodePort and LoadBalancer only); empty lets Kubernetes choose.",
    )
    external_host: str | None = Field(
        None,
        description="Host name or address advertised in status.endpoints.external (e.g. a DNS name in front of the nodes); empty: the load balancer's address, or the executor node's address for NodePort.",
    )
    service_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the Service (e.g. to configure a cloud load balancer)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the executor pod must run on.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the executor pod tolerates.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables of the executor container.")


class WorkersSpec(_Model):
    """The workers: a DaemonSet, one pod per matching node, each pinned to the cores it was given."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels a node needs to run a worker.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the worker pods tolerate.")
    cpus: int | None = Field(
        None, ge=1,
        description="CPU cores each worker pod requests (and is limited to when exclusiveCpus); empty: no request, the worker uses the cores it sees.",
    )
    memory: Quantity | None = Field(
        None, description="Memory of each worker pod (request, and limit when exclusiveCpus), e.g. 8Gi; also what the worker offers to jobs. Empty: what the worker sees."
    )
    reserve_cores: int = Field(
        0, ge=0, description="Cores of each worker kept for the worker itself and not given to jobs; less than cpus."
    )
    exclusive_cpus: bool = Field(
        False,
        description="Guaranteed QoS with integer CPUs (requests = limits for cpu and memory), so that the kubelet's static CPU manager gives each worker exclusive cores. Needs cpus and memory.",
    )
    gpus: int = Field(0, ge=0, description="GPUs each worker pod requests (of gpuResource); 0: none.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPUs.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the worker pods.")
    drain_timeout_seconds: int = Field(
        60, ge=0, le=86400,
        description="On SIGTERM (node drain, rollout) a worker takes no new jobs and lets its running jobs finish for this long, then hands the rest back to be run elsewhere. The pod's terminationGracePeriodSeconds is this plus a margin.",
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables of the worker containers (and so of the jobs). Never put a secret here: every job can read it.")


class SchedulerSpec(_Model):
    """How the executor schedules jobs."""

    retries: int = Field(
        2, ge=0, description="How many times a job is started again when the worker running it is lost (0: it fails at once)."
    )
    wait_for_workers_seconds: float = Field(
        600.0, ge=0,
        description="How long jobs stay queued while no worker can run them (no worker registered yet, or workers restarting) before they fail as unschedulable; 0: they fail at once.",
    )
    client_grace_seconds: float = Field(
        300.0, ge=0,
        description="How long the executor keeps a disconnected client's jobs (running and queued) while the client reconnects, e.g. across an executor restart or a network blip; after it they are cancelled.",
    )
    heartbeat_seconds: float | None = Field(
        None, ge=0.05, description="Heartbeat interval on every connection; empty: the executor's default."
    )


#: A user name: it names Secrets (NAME-user-USER) and appears in the executor's status.
USER_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class UserSpec(_Model):
    """One user of the cluster: a client token of their own, a fair-share weight and limits."""

    name: str = Field(
        pattern=USER_PATTERN, max_length=40,
        description="User name (lowercase letters, digits and '-'), shown and accounted by the executor.",
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Fair-share weight: a user of weight 2 gets twice the share of a user of weight 1 when both have work queued.")
    max_cores: int | None = Field(None, ge=1, description="Most cores this user's jobs may hold at once; empty: no limit.")
    max_queued: int | None = Field(None, ge=1, description="Most jobs this user may have queued; past it a submission fails with a clear error. Empty: no limit.")
    secret_name: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="An existing Secret holding this user's token (key 'token'), labelled grain.dev/cluster=NAME and grain.dev/user=USER (any other Secret is refused); empty: the operator creates NAME-user-USER.",
    )


class TLSSpec(_Model):
    """TLS between every pod (and from clients): on by default."""

    enabled: bool = Field(True, description="Encrypt and authenticate the grain protocol with TLS; false: plain TCP, authenticated by the tokens only.")
    secret_name: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="An existing Secret with ca.crt, tls.crt and tls.key (e.g. written by a cert-manager Certificate), labelled grain.dev/cluster=NAME; its certificate must name NAME-executor.NAMESPACE.svc. Empty: the operator makes a CA and a certificate (Secret NAME-tls).",
    )


class AuthSpec(_Model):
    """Credentials: one token per user for clients, one for the workers, and TLS."""

    token_secret: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="With no spec.users: an existing Secret holding the token of the user 'default' (key 'token'), labelled grain.dev/cluster=NAME; empty: the operator creates NAME-token.",
    )
    worker_token_secret: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="An existing Secret holding the workers' token (key 'token'), labelled grain.dev/cluster=NAME; empty: the operator creates NAME-worker-token.",
    )
    tls: TLSSpec = Field(default_factory=TLSSpec, description="TLS for the grain protocol.")


class NetworkPolicySpec(_Model):
    """Who may reach the executor: a NetworkPolicy on its pod (and one closing the workers)."""

    enabled: bool = Field(True, description="Create the NetworkPolicies NAME-executor and NAME-worker; they take effect where the cluster's network plugin enforces NetworkPolicy.")
    client_namespaces: list[str] = Field(
        default_factory=list,
        description="Other namespaces whose pods labelled grain.dev/client=NAME may reach the grain port (pods so labelled in the GrainCluster's own namespace always may).",
    )
    client_cidrs: list[str] = Field(
        default_factory=list,
        description="Address ranges (CIDR) outside the cluster allowed to reach the grain port, e.g. through a NodePort or LoadBalancer. A port-forward is not affected.",
    )
    http_cidrs: list[str] = Field(
        default_factory=list,
        description="Address ranges (CIDR) allowed to reach the http port (/status, /metrics, the web page); the operator's own pods always may.",
    )
    http_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces whose pods may reach the http port, e.g. where Prometheus runs.",
    )


class GrainClusterSpec(_Model):
    """Desired state of a Grain cluster."""

    image: str | None = Field(
        None, description="Image with the grain command, for the executor and the workers; empty: the operator's default image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When the kubelet pulls the image."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of Secrets for pulling the image from a private registry."
    )
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, description="The executor and its Service.")
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="The worker DaemonSet.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Scheduling behaviour of the executor.")
    users: list[UserSpec] = Field(
        default_factory=list,
        description="The users, each with a client token of their own (Secret NAME-user-USER), a weight and limits. Empty: one user 'default' whose token is in Secret NAME-token.",
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Tokens and TLS.")
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, description="NetworkPolicies of the executor and the workers.")


# ---------------------------------------------------------------------------------------------
# status

Phase = Literal["Pending", "Running", "Degraded", "Failed"]


class Condition(_Model):
    """One aspect of the cluster's state, in the usual Kubernetes form."""

    type: str = Field(description="SpecValid, CredentialsReady, ExecutorReady, WorkersReady, Recovering, ExclusiveCpus or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(description="Why, in CamelCase, for programs.")
    message: str = Field("", description="Why, for people.")
    observed_generation: int | None = Field(None, description="metadata.generation of the spec this was computed for.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"})


class Endpoints(_Model):
    """Where clients connect."""

    in_cluster: str | None = Field(None, description="Address inside the cluster, grain://NAME-executor.NAMESPACE.svc:PORT.")
    external: str | None = Field(
        None, description="Address from outside the cluster (NodePort or LoadBalancer), grain://HOST:PORT; absent otherwise or while not yet assigned."
    )
    tls_server_name: str | None = Field(
        None, description="With TLS: the name the executor's certificate is checked against (NAME-executor.NAMESPACE.svc), whatever address is dialled (a port-forward, a node port)."
    )
    dashboard: str | None = Field(
        None, description="How to open the executor's web page from a workstation (a kubectl port-forward command and the URL)."
    )


class WorkerStatus(_Model):
    """One registered worker, as the executor reports it."""

    name: str = Field(description="Worker name (the node name).")
    cpuset: str = Field("", description="CPUs the worker really has, e.g. 2-5,8.")
    exclusive: bool = Field(False, description="Whether those CPUs are exclusive (the static CPU manager is in force).")
    cores_total: int = Field(0, description="Cores the worker offers to jobs.")
    cores_free: int = Field(0, description="Of those, cores not in use.")
    running_jobs: int = Field(0, description="Jobs running on the worker.")


class WorkersStatus(_Model):
    """Worker pods and registered workers."""

    desired: int = Field(0, description="Worker pods the DaemonSet wants (nodes that match).")
    ready: int = Field(0, description="Worker pods that are ready.")
    registered: int = Field(0, description="Workers registered with the executor.")
    summary: str = Field("0/0", description="ready/desired, for kubectl get.")
    nodes: list[WorkerStatus] = Field(default_factory=list, description="Each registered worker.")


class CoresStatus(_Model):
    """Cores registered by the workers."""

    total: int = Field(0, description="Cores registered by all workers.")
    free: int = Field(0, description="Of those, cores not in use.")
    summary: str = Field("0/0", description="free/total, for kubectl get.")


class MemoryStatus(_Model):
    """Memory registered by the workers."""

    total_gb: float = Field(0.0, alias="totalGB", description="Memory registered by all workers, in GB.")
    free_gb: float = Field(0.0, alias="freeGB", description="Of that, memory not reserved by running jobs, in GB.")


class UserStatus(_Model):
    """One user: their Secret, and what the executor reports of their jobs."""

    name: str = Field(description="User name.")
    secret_name: str = Field(description="Secret holding the user's token (key 'token', and 'ca.crt' with TLS): what cluster= discovery reads.")
    weight: float = Field(1.0, description="Fair-share weight.")
    running_jobs: int = Field(0, description="The user's jobs running now.")
    queued_jobs: int = Field(0, description="The user's jobs waiting in the queue.")
    cores_in_use: int = Field(0, description="Cores held by the user's running jobs.")
    share: float = Field(0.0, description="The user's current share of the cluster (dominant resource), as the executor computes it.")


class GrainClusterStatus(_Model):
    """Observed state of a Grain cluster, refreshed by the operator."""

    phase: Phase = Field("Pending", description="Pending, Running, Degraded or Failed.")
    message: str = Field("", description="What is going on, for people.")
    observed_generation: int | None = Field(None, description="metadata.generation this status was computed for.")
    conditions: list[Condition] = Field(default_factory=list, description="SpecValid, CredentialsReady, ExecutorReady, WorkersReady, Recovering, ExclusiveCpus, Degraded.")
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Where clients connect.")
    token_secret: str | None = Field(None, description="Secret holding the token of the user 'default' (key 'token'), when there is such a user.")
    users: list[UserStatus] = Field(default_factory=list, description="Each user: Secret, weight, jobs running and queued, cores in use, share.")
    recovering: str | None = Field(None, description="While the executor rebuilds its state after a restart: what it is waiting for; absent otherwise.")
    workers: WorkersStatus = Field(default_factory=WorkersStatus, description="Worker pods and registered workers.")
    cores: CoresStatus = Field(default_factory=CoresStatus, description="Cores registered and free.")
    memory: MemoryStatus = Field(default_factory=MemoryStatus, description="Memory registered and free.")
    queue_length: int = Field(0, description="Jobs waiting in the executor's queue.")
    running_jobs: int = Field(0, description="Jobs running on the workers.")
    clients: int = Field(0, description="Client sessions connected to the executor.")
    executor_version: str | None = Field(None, description="Version reported by the executor.")


class GrainCluster(_Model):
    """A Grain cluster: an executor and one worker per node (the whole custom resource)."""

    spec: GrainClusterSpec = Field(default_factory=GrainClusterSpec, description="Desired state.")
    status: GrainClusterStatus | None = Field(None, description="Observed state, written by the operator.")


# ---------------------------------------------------------------------------------------------
# Validation beyond the schema


@dataclass(frozen=True)
class SpecProblem:
    """Something wrong with a spec: the field (``spec.workers.cpus``) and the reason."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_spec(raw: dict[str, Any] | None) -> tuple[GrainClusterSpec | None, list[SpecProblem]]:
    """Parse a raw spec; return the model (None when unparsable) and every problem found.

    Type and range errors are what the CRD schema refuses on a real API server; they are
    checked here too, for servers without validation and to name the field either way.
    """
    try:
        spec = GrainClusterSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = [
            SpecProblem(_loc_to_path(err["loc"]), err["msg"])
            for err in exc.errors(include_url=False)
        ]
        return None, problems
    return spec, semantic_problems(spec)


def semantic_problems(spec: GrainClusterSpec) -> list[SpecProblem]:
    """The rules that the CRD's OpenAPI schema cannot state (they relate several fields)."""
    problems: list[SpecProblem] = []
    w = spec.workers
    if w.cpus is not None and w.reserve_cores >= w.cpus:
        problems.append(SpecProblem(
            "spec.workers.reserveCores",
            f"must be less than spec.workers.cpus ({w.reserve_cores} >= {w.cpus}): no core would be left for jobs",
        ))
    if w.exclusive_cpus and w.cpus is None:
        problems.append(SpecProblem(
            "spec.workers.cpus", "is required when exclusiveCpus is true (Guaranteed QoS needs an integer CPU count)"
        ))
    if w.exclusive_cpus and w.memory is None:
        problems.append(SpecProblem(
            "spec.workers.memory", "is required when exclusiveCpus is true (Guaranteed QoS needs a memory limit)"
        ))
    if w.memory is not None and parse_quantity(w.memory) <= WORKER_MEMORY_OVERHEAD:
        problems.append(SpecProblem(
            "spec.workers.memory", f"must be more than the worker's own 256Mi (got {w.memory})"
        ))
    names = [u.name for u in spec.users]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(SpecProblem("spec.users", f"user {name!r} is listed more than once"))
    if spec.users and spec.auth.token_secret:
        problems.append(SpecProblem(
            "spec.auth.tokenSecret", "is for the single user 'default' of a spec without users: use spec.users[].secretName"
        ))
    secrets = [u.secret_name for u in spec.users if u.secret_name] + [
        s for s in (spec.auth.token_secret, spec.auth.worker_token_secret) if s
    ]
    for name in sorted({n for n in secrets if secrets.count(n) > 1}):
        problems.append(SpecProblem("spec.users", f"Secret {name!r} is named for more than one token: each needs its own"))
    np = spec.network_policy
    for field_name, cidrs in (("clientCidrs", np.client_cidrs), ("httpCidrs", np.http_cidrs)):
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(SpecProblem(f"spec.networkPolicy.{field_name}", f"{cidr!r} is not a CIDR such as 10.0.0.0/8"))
    for field_name, namespaces in (("clientNamespaces", np.client_namespaces), ("httpNamespaces", np.http_namespaces)):
        for ns in namespaces:
            if not re.match(NAMESPACE_PATTERN, ns):
                problems.append(SpecProblem(f"spec.networkPolicy.{field_name}", f"{ns!r} is not a namespace name"))
    e = spec.executor
    if e.port == e.http_port:
        problems.append(SpecProblem("spec.executor.httpPort", f"must differ from spec.executor.port ({e.port})"))
    if e.node_port is not None and e.service_type == "ClusterIP":
        problems.append(SpecProblem(
            "spec.executor.nodePort", "needs serviceType NodePort or LoadBalancer, not ClusterIP"
        ))
    return problems
