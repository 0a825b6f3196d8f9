"""``grain executor``: the executor with its listener, HTTP endpoints and sweeper."""

from __future__ import annotations

import logging
import resource
import signal

import trio

from .. import config
from ..auth import Credentials
from ..errors import ConfigurationError
from ..net.endpoints import parse_endpoint
from ..net.transport import server_ssl_context
from . import history
from .core import Executor
from .heap import full_collections, return_free_memory
from .http import HttpServer
from .listener import ExecutorListener
from .loopwatch import LoopWatch

log = logging.getLogger("grain.executor")


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (many peers, one process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def run_executor(*, listen: str, credentials: Credentials, http: str | None = None,
                       tls_cert: str | None = None, tls_key: str | None = None,
                       retries: int = config.RETRIES,
                       wait_for_workers: float = config.WAIT_FOR_WORKERS,
                       client_grace: float = config.CLIENT_GRACE,
                       worker_grace: float = config.WORKER_GRACE,
                       heartbeat: float = config.HEARTBEAT,
                       timeout: float = config.PEER_TIMEOUT,
                       max_connections: int = config.MAX_CONNECTIONS,
                       task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
    """Run an executor until cancelled."""
    fds = raise_fd_limit()
    ex = Executor(retries=retries, wait_for_workers=wait_for_workers,
                  client_grace=client_grace, worker_grace=worker_grace,
                  policy=credentials.policy)
    history.attach(ex)   # throughput and failures from the start, page or no page
    ex.loop_watch = LoopWatch()
    trio.lowlevel.add_instrument(ex.loop_watch)
    ctx = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    listener = ExecutorListener(ex, credentials, ssl_context=ctx, heartbeat=heartbeat,
                                timeout=timeout,
                                max_connections=min(max_connections, max(16, fds - 64)))
    async with trio.open_nursery() as n:
        bound = await n.start(listener.serve, parse_endpoint(listen))
        mode = (f"tokens by role: {len(credentials.clients)} users"
                if credentials.by_role else "one shared token")
        print(f"grain executor listening on {bound} ({mode})", flush=True)
        if http:
            hb = await n.start(HttpServer(ex).serve, http)
            print(f"grain executor HTTP on http://{hb.host}:{hb.port}", flush=True)
        await n.start(ex.run)
        n.start_soon(_watch_tokens, credentials, ex)
        n.start_soon(_exit_on_sigterm, n.cancel_scope)
        n.start_soon(return_free_memory)
        # first freezes what start-up made
        n.start_soon(full_collections)
        task_status.started(bound)


async def _exit_on_sigterm(scope: trio.CancelScope) -> None:
    """SIGTERM (a pod being deleted, ``docker stop``): stop at once. Nothing needs saving:
    workers keep their jobs and clients their sessions, and both re-attach to the next
    executor. (As PID 1 of a container a process without a handler ignores SIGTERM.)"""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            print("grain executor: SIGTERM, stopping (workers and clients re-attach to the "
                  "next executor)", flush=True)
            scope.cancel()
            return


async def _watch_tokens(credentials: Credentials, ex: Executor, poll: float = 5.0) -> None:
    """Re-read the client tokens file on SIGHUP, and when it changes (a Kubernetes Secret
    update reaches the mounted file without a signal)."""
    if not credentials.by_role:
        return
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        while True:
            forced = False
            with trio.move_on_after(poll):
                async for _ in signals:
                    forced = True
                    break
            try:
                if credentials.reload_if_changed(force=forced):
                    log.info("client tokens re-read: %d users", len(credentials.clients))
                    ex.policies_changed()
            except ConfigurationError as e:
                log.error("keeping the old client tokens: %s", e)
