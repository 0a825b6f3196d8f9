"""Thin kopf wiring: one reconcile routine, run on create, update, resume and a timer.

``build_registry(config)`` returns a fresh kopf registry (no module-level state) with:

- login: the operator's credentials, shared with its own client (``kube.Kube``);
- ``reconcile`` on create/update/resume: parse and check the spec (a bad spec gets a
  SpecValid=False condition naming the field and a ``kopf.PermanentError``: no retry loop),
  ensure the Secrets (``credentials``), apply the workloads, refresh the status; while the
  executor is not ready, ``kopf.TemporaryError`` with a delay (so the handler comes back);
- a timer doing the same reconcile plus the status refresh (level-triggered: drift made by
  hand is undone, the status follows the executor's /status);
- on delete: the children this GrainCluster controls are deleted (ownerReferences would do it
  too, later; the finalizer makes it prompt and visible). Secrets an admin named stay.

The handlers are plain functions: the official Kubernetes client is synchronous, so kopf runs
them in its thread pool. Reconciles of one GrainCluster never overlap (a lock per object):
the timer and an update handler would otherwise race to issue its first certificate.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from grain_operator import apply, credentials, render, status
from grain_operator.kube import ApiException, Kube, connection_info, error_text, load_configuration
from grain_operator.model import API_GROUP, API_VERSION, PLURAL, GrainClusterSpec, parse_spec
from grain_operator.netpol import network_policies
from grain_operator.settings import OperatorConfig
from grain_operator.tokens import users_of

Logger = logging.Logger | logging.LoggerAdapter[Any]


def owner_of(body: kopf.Body, config: OperatorConfig) -> render.Owner:
    """The render.Owner of a GrainCluster body."""
    meta = body.get("metadata", {})
    return render.Owner(
        name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid"), default_image=config.default_image,
        operator_namespace=config.operator_namespace,
    )


def write_status(patch: kopf.Patch, new: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Put the changed status fields into kopf's patch (nothing when unchanged)."""
    for key, value in status.status_patch(new, previous).items():
        patch.status[key] = value


def previous_user_secrets(previous: dict[str, Any] | None) -> list[str]:
    """The user Secrets the last status listed (to delete those of users since removed)."""
    users = (previous or {}).get("users") or []
    return [str(u["secretName"]) for u in users if isinstance(u, dict) and u.get("secretName")]


def _absent_policies(owner: render.Owner, spec: GrainClusterSpec) -> list[apply.Ref]:
    if network_policies(owner, spec):
        return []
    return [("networking.k8s.io/v1", "NetworkPolicy", n) for n in (owner.executor_name, owner.worker_name)]


def reconcile(
    body: kopf.Body, patch: kopf.Patch, kube: Kube, config: OperatorConfig, logger: Logger, *, in_handler: bool,
) -> None:
    """Compare desired with actual, create what is missing, apply what differs, refresh status.

    ``in_handler``: raise kopf errors (permanent for a bad spec, temporary while the executor
    is not ready or a Secret is not usable); the timer passes False and only records the state.
    """
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return
    owner = owner_of(body, config)
    generation = meta.get("generation")
    previous = body.get("status")
    spec, problems = parse_spec(body.get("spec"))

    if spec is None or problems:
        # the children are left as they are (running on the last good spec) and reported as such
        try:
            obs = status.observe(kube, owner, spec or GrainClusterSpec(), config.status_url, config.status_timeout)
        except ApiException as exc:
            obs = status.Observation(blocker=f"cannot read the children: {error_text(exc)}")
        new = status.compute_status(owner, spec, obs, generation=generation, problems=problems, previous=previous)
        write_status(patch, new, previous)
        text = "; ".join(map(str, problems))
        if in_handler:
            raise kopf.PermanentError(f"invalid spec: {text}")
        logger.debug("spec still invalid: %s", text)
        return

    blocker: str | None = None
    changed: list[str] = []
    creds = credentials.Credentials(refs=None, users=users_of(owner, spec))
    try:
        creds = credentials.ensure_credentials(kube, owner, spec, previous_user_secrets(previous))
        changed += creds.events
        if creds.refs is not None:
            for child in render.children(owner, spec, creds.refs):
                outcome = apply.ensure(kube, child)
                if outcome.action != "unchanged":
                    changed.append(f"{outcome.action} {child['kind']}/{child['metadata']['name']}")
        leftovers = _absent_policies(owner, spec) + (creds.after_apply if creds.refs is not None else [])
        changed += [f"deleted {gone}" for gone in apply.delete_owned(kube, owner, leftovers)]
    except ApiException as exc:
        blocker = f"cannot reconcile the children: {error_text(exc)}"
        if exc.status in (400, 403, 422):
            logger.error("%s", blocker)
    if changed:
        kopf.info(body, reason="Reconciled", message=", ".join(changed))

    obs = status.observe(kube, owner, spec, config.status_url, config.status_timeout)
    obs.blocker = blocker
    obs.credential_problems = list(creds.problems)
    obs.users = [(u.name, u.secret_name, u.spec.weight) for u in creds.users]
    new = status.compute_status(owner, spec, obs, generation=generation, previous=previous)
    write_status(patch, new, previous)

    if not in_handler:
        return
    if blocker or creds.blocked:
        raise kopf.TemporaryError(blocker or "; ".join(creds.problems), delay=config.retry_delay)
    executor = next(c for c in new["conditions"] if c["type"] == "ExecutorReady")
    if executor["reason"] in ("NotCreated", "DeploymentNotReady"):
        raise kopf.TemporaryError(f"executor not ready yet: {executor['message']}", delay=config.retry_delay)


class _Locks:
    """One lock per GrainCluster (namespace, name), so that its reconciles never overlap."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def of(self, body: kopf.Body) -> threading.Lock:
        meta = body.get("metadata", {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A kopf registry with the Grain operator's handlers, bound to ``config``."""
    registry = kopf.OperatorRegistry()
    resource = (API_GROUP, API_VERSION, PLURAL)
    locks = _Locks()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_configuration(config.kubeconfig, config.context))

    @kopf.on.startup(registry=registry)
    def startup(memo: kopf.Memo, **_: Any) -> None:
        if getattr(memo, "kube", None) is None:
            memo.kube = Kube(load_configuration(config.kubeconfig, config.context), timeout=config.request_timeout)

    @kopf.on.cleanup(registry=registry)
    def cleanup(memo: kopf.Memo, **_: Any) -> None:
        kube = getattr(memo, "kube", None)
        if kube is not None:
            kube.close()

    @kopf.on.resume(*resource, id="reconcile-resume", registry=registry)
    @kopf.on.create(*resource, id="reconcile-create", registry=registry)
    @kopf.on.update(*resource, id="reconcile-update", registry=registry)
    def reconcile_handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        with locks.of(body):
            reconcile(body, patch, memo.kube, config, logger, in_handler=True)

    @kopf.timer(*resource, id="resync", interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
        # A tick that finds a reconcile of this GrainCluster running skips: that one does the
        # work, and a timer blocked on the lock would hold one of kopf's few threads and delay
        # the object's deletion (kopf waits for its timer to exit before deleting).
        lock = locks.of(body)
        if kwargs.get("stopped") or not lock.acquire(blocking=False):
            return
        try:
            reconcile(body, patch, memo.kube, config, logger, in_handler=False)
        except ApiException as exc:  # the next tick tries again; say why meanwhile
            logger.warning("resync: %s", error_text(exc))
        finally:
            lock.release()

    @kopf.on.delete(*resource, id="delete-children", registry=registry)
    def delete_children(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        owner = owner_of(body, config)
        spec, _problems = parse_spec(body.get("spec"))
        user_secrets = previous_user_secrets(body.get("status"))
        if spec is not None:
            user_secrets += [u.secret_name for u in users_of(owner, spec) if u.generated]
        with locks.of(body):
            gone = apply.delete_children(memo.kube, owner, user_secrets)
        logger.info("deleted %s", ", ".join(gone) if gone else "nothing (children already gone)")

    return registry


async def operate(
    config: OperatorConfig, *, stop_flag: Any = None, ready_flag: Any = None, memo: kopf.Memo | None = None
) -> None:
    """Run the operator until ``stop_flag`` is set (or a signal arrives, in the main thread)."""
    from grain_operator.settings import kopf_settings

    memo = memo if memo is not None else kopf.Memo()
    await kopf.operator(
        registry=build_registry(config),
        settings=kopf_settings(config),
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
        standalone=True,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=memo,
    )
