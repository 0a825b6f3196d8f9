"""``grain executor``: the executor with its listener, HTTP endpoints and sweeper."""

from __future__ import annotations

import logging

import trio

from ..net.endpoints import parse_endpoint
from ..net.transport import server_ssl_context
from .core import Executor
from .http import HttpServer
from .server import ExecutorServer

log = logging.getLogger("grain.executor")


async def run_executor(*, listen: str, token: str, http: str | None = None,
                       tls_cert: str | None = None, tls_key: str | None = None,
                       retries: int = 2, wait_for_workers: float = 0.0,
                       heartbeat: float = 2.0, timeout: float = 10.0,
                       task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Run an executor until cancelled."""
    ex = Executor(retries=retries, wait_for_workers=wait_for_workers)
    ctx = server_ssl_context(tls_cert, tls_key) if tls_cert else None
    server = ExecutorServer(ex, token, ssl_context=ctx, heartbeat=heartbeat, timeout=timeout)
    async with trio.open_nursery() as n:
        bound = await n.start(server.serve, parse_endpoint(listen))
        print(f"grain executor listening on {bound}", flush=True)
        if http:
            hb = await n.start(HttpServer(ex).serve, http)
            print(f"grain executor HTTP on http://{hb.host}:{hb.port}", flush=True)
        n.start_soon(ex.sweeper)
        task_status.started(bound)
