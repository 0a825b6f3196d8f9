"""The operator's own configuration (command line and environment) and the kopf settings.

``OperatorConfig`` holds what the handlers need (default image, timer interval, retry delay,
where the executor's /status is); ``kopf_settings`` builds kopf's ``OperatorSettings``: our
finalizer, progress and diff-base in ``grain.dev/`` annotations (the status stays ours),
watch and request timeouts, standalone (no peering: the chart runs one replica, Recreate),
no namespace scanning (explicit namespaces or cluster-wide). Called by ``__main__`` and tests.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import kopf

from grain_operator.names import DEFAULT_IMAGE
from grain_operator.status import DEFAULT_STATUS_URL

FINALIZER = "grain.dev/finalizer"
ANNOTATION_PREFIX = "grain.dev"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator is told at start (flags, else GRAIN_* environment variables)."""

    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    default_image: str = field(default_factory=lambda: os.environ.get("GRAIN_IMAGE") or DEFAULT_IMAGE)
    #: Interval of the timer that reconciles again and refreshes the status.
    resync_seconds: float = field(default_factory=lambda: _env_float("GRAIN_OPERATOR_RESYNC_SECONDS", 15.0))
    #: Delay before the create/update handler retries while the executor is not ready.
    retry_delay: float = field(default_factory=lambda: _env_float("GRAIN_OPERATOR_RETRY_DELAY", 10.0))
    #: Where the executor's /status is; {name}, {namespace}, {http_port}, {port} are filled in.
    status_url: str = field(default_factory=lambda: os.environ.get("GRAIN_OPERATOR_STATUS_URL") or DEFAULT_STATUS_URL)
    status_timeout: float = field(default_factory=lambda: _env_float("GRAIN_OPERATOR_STATUS_TIMEOUT", 3.0))
    liveness_endpoint: str | None = None
    #: The operator's own namespace (the chart sets POD_NAMESPACE): its pods may read /status
    #: through the executor's NetworkPolicy. None: unknown (e.g. run outside the cluster).
    operator_namespace: str | None = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or None)
    #: Watch requests are ended by the server after this many seconds (and resumed).
    watch_server_timeout: float = 300.0
    #: ... and by the client after this many, in case the server forgets.
    watch_client_timeout: float = 330.0
    request_timeout: float = 60.0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.all_namespaces and self.namespaces:
            raise ValueError("use either --all-namespaces or --namespace, not both")
        if not self.all_namespaces and not self.namespaces:
            raise ValueError("say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces")


def kopf_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings for the Grain operator."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_client_timeout
    settings.watching.connect_timeout = config.connect_timeout
    settings.networking.request_timeout = config.request_timeout
    settings.networking.connect_timeout = config.connect_timeout
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "grain-operator"
    # The handlers are synchronous (the official client): they run in kopf's thread pool, and
    # spend their time waiting for the API server, so the pool is larger than the CPU count.
    settings.execution.max_workers = 16
    return settings
