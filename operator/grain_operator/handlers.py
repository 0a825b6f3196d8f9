"""Thin kopf wiring: one reconcile routine, run on create, update, resume and a timer.

``build_registry(config)`` returns a fresh kopf registry (no module-level state) with:

- login: the operator's credentials, shared with its own API client (``kube.KubeApi``);
- ``reconcile`` on create/update/resume: parse and check the spec (a bad spec gets a
  SpecValid=False condition naming the field and a ``kopf.PermanentError``: no retry loop),
  ensure the token Secret, create or patch the children, refresh the status; while the
  executor is not ready, ``kopf.TemporaryError`` with a delay (so the handler comes back);
- a timer doing the same reconcile plus the status refresh (level-triggered: drift made by
  hand is undone, the status follows the executor's /status);
- on delete: the children this GrainCluster controls are deleted (ownerReferences would do it
  too, later; the finalizer makes it prompt and visible). The user's own token Secret stays.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from grain_operator import apply, render, status
from grain_operator.kube import ApiClosed, ApiError, KubeApi, connection_info, load_credentials
from grain_operator.model import API_GROUP, API_VERSION, PLURAL, GrainClusterSpec, parse_spec
from grain_operator.settings import OperatorConfig


def owner_of(body: kopf.Body, config: OperatorConfig) -> render.Owner:
    """The render.Owner of a GrainCluster body."""
    meta = body.get("metadata", {})
    return render.Owner(
        name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid"), default_image=config.default_image
    )


def write_status(patch: kopf.Patch, new: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Put the changed status fields into kopf's patch (nothing when unchanged)."""
    for key, value in status.status_patch(new, previous).items():
        patch.status[key] = value


async def reconcile(
    body: kopf.Body, patch: kopf.Patch, api: KubeApi, config: OperatorConfig,
    logger: logging.Logger | logging.LoggerAdapter[Any], *, in_handler: bool,
) -> None:
    """Compare desired with actual, create what is missing, patch what differs, refresh status.

    ``in_handler``: raise kopf errors (permanent for a bad spec, temporary while the executor
    is not ready); the timer passes False and only records the state in the status.
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
            obs = await status.observe(api, owner, spec or GrainClusterSpec(), config.status_url, config.status_timeout)
        except ApiError as exc:
            obs = status.Observation(blocker=f"cannot read the children: {exc}")
        new = status.compute_status(owner, spec, obs, generation=generation, problems=problems, previous=previous)
        write_status(patch, new, previous)
        text = "; ".join(map(str, problems))
        if in_handler:
            raise kopf.PermanentError(f"invalid spec: {text}")
        logger.debug("spec still invalid: %s", text)
        return

    blocker: str | None = None
    changed: list[str] = []
    try:
        token = await apply.ensure_token(api, owner, spec.auth.token_secret)
        for child in render.children(owner, spec, render.token_digest(token)):
            outcome = await apply.ensure(api, child)
            if outcome.action != "unchanged":
                changed.append(f"{outcome.action} {child['kind']}/{child['metadata']['name']}")
    except apply.TokenMissing as exc:
        blocker = str(exc)
    except ApiError as exc:
        blocker = f"cannot reconcile the children: {exc}"
        if exc.status in (400, 403, 422):
            logger.error("%s", blocker)
    if changed:
        kopf.info(body, reason="Reconciled", message=", ".join(changed))

    obs = await status.observe(api, owner, spec, config.status_url, config.status_timeout)
    obs.blocker = blocker
    new = status.compute_status(owner, spec, obs, generation=generation, previous=previous)
    write_status(patch, new, previous)

    if not in_handler:
        return
    if blocker:
        raise kopf.TemporaryError(blocker, delay=config.retry_delay)
    executor = next(c for c in new["conditions"] if c["type"] == "ExecutorReady")
    if executor["reason"] in ("NotCreated", "DeploymentNotReady"):
        raise kopf.TemporaryError(f"executor not ready yet: {executor['message']}", delay=config.retry_delay)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A kopf registry with the Grain operator's handlers, bound to ``config``."""
    registry = kopf.OperatorRegistry()
    resource = (API_GROUP, API_VERSION, PLURAL)

    def load() -> Any:
        return load_credentials(config.kubeconfig, config.context)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load())

    @kopf.on.startup(registry=registry)
    async def startup(memo: kopf.Memo, **_: Any) -> None:
        if getattr(memo, "kube", None) is None:
            memo.kube = KubeApi(load)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        kube = getattr(memo, "kube", None)
        if kube is not None:
            await kube.close()

    @kopf.on.resume(*resource, id="reconcile-resume", registry=registry)
    @kopf.on.create(*resource, id="reconcile-create", registry=registry)
    @kopf.on.update(*resource, id="reconcile-update", registry=registry)
    async def reconcile_handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await reconcile(body, patch, memo.kube, config, logger, in_handler=True)

    @kopf.timer(*resource, id="resync", interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    async def resync(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        try:
            await reconcile(body, patch, memo.kube, config, logger, in_handler=False)
        except ApiClosed:
            logger.debug("resync interrupted: the operator is exiting")
        except Exception:
            if stopped or memo.kube.closed:  # the operator is exiting and closed its client under this run
                logger.debug("resync interrupted by the operator's exit")
                return
            raise

    @kopf.on.delete(*resource, id="delete-children", registry=registry)
    async def delete_children(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        gone = await apply.delete_children(memo.kube, owner_of(body, config))
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
