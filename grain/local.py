"""The embedded local cluster: an executor and a worker inside the user's own process.

``run_combine(main)`` with no address uses it. The executor and the worker agent run in
the client's trio loop and talk over in-memory links (no sockets, no encoding on those two
hops); jobs run in warm runner processes pinned to this machine's usable cores. The
executor also listens on loopback with a per-run random token, so ``grain status`` and
extra workers can attach while it runs. Everything stops when the block exits, including
on an error or Ctrl-C: runners are killed with their whole session.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from types import TracebackType

import trio

from . import config
from .auth import Credentials
from .executor.core import Executor
from .executor.listener import ExecutorListener, dial_worker
from .net.endpoints import Endpoint, parse_endpoint
from .net.link import Link, memory_link_pair
from .resource import Resource, capacity_from_wire
from .worker.agent import WorkerAgent
from .worker.inventory import build_inventory
from .worker.runners import RunnerPool

log = logging.getLogger("grain.local")


def embedded_runner_env() -> dict[str, str]:
    """Runners see what the user's program sees: its environment and import path."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if sys.path and sys.path[0] == "":
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class LocalCluster:
    """``async with LocalCluster(rpw) as lc: link = lc.client_link()``."""

    def __init__(self, rpw: Resource | None = None, *, waddrs: tuple[str, ...] = (),
                 token: str | None = None, listen: str | None = "grain://127.0.0.1:0",
                 retries: int | None = None, nolocal: bool = False,
                 warm_runners: int | None = None) -> None:
        self.rpw = rpw
        self.waddrs = tuple(waddrs)
        self.token = token or secrets.token_urlsafe(24)
        self.listen = listen
        self.nolocal = nolocal
        # Everything lives in this process: a lost client or worker cannot come back, and
        # every worker is known at start, so nothing waits for anyone.
        self.executor = Executor(retries=config.RETRIES if retries is None else retries,
                                 name="embedded",
                                 wait_for_workers=config.EMBEDDED_WAIT_FOR_WORKERS,
                                 client_grace=0, worker_grace=0, settle=0)
        self.warm_runners = warm_runners
        self.address: Endpoint | None = None
        self.agent: WorkerAgent | None = None

    async def __aenter__(self) -> LocalCluster:
        self._cm = trio.open_nursery()
        self._n = await self._cm.__aenter__()
        try:
            await self._start()
        except BaseException as e:
            self._n.cancel_scope.cancel()
            await self._cm.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def _start(self) -> None:
        n = self._n
        if not self.nolocal:
            inv = build_inventory(self.rpw)
            # no spare runners: they are kept for the next session's first job, and the
            # embedded cluster serves one session (its program); another one (a client
            # dialling in) waits for a runner to start (~0.3 s) once
            self.pool = RunnerPool(env=embedded_runner_env(), cwd=os.getcwd(), spares=0)
            self.agent = WorkerAgent("local", inv, self.pool)
            to_worker, to_executor = memory_link_pair("executor", "local")
            await n.start(self.agent.run)
            await n.start(self.agent.serve, to_executor)
            await n.start(self.executor.serve_worker, to_worker, self.agent.info(),
                          capacity_from_wire(self.agent.info()["capacity"]))
            warm = self.warm_runners if self.warm_runners is not None else \
                min(len(inv.cpuset), 2)
            n.start_soon(self.pool.warm, warm)
        if self.listen:
            server = ExecutorListener(self.executor, Credentials(token=self.token))
            self.address = await n.start(server.serve, parse_endpoint(self.listen))
        for addr in self.waddrs:
            n.start_soon(dial_worker, self.executor, parse_endpoint(addr), self.token)
        await n.start(self.executor.run)
        await self._wait_for_named_workers()

    async def _wait_for_named_workers(self, timeout: float = 30.0) -> None:
        """The original form names its workers: jobs wait until they have registered
        (or ``timeout`` passed; then whatever cannot run anywhere fails as usual)."""
        want = len(self.waddrs) + (0 if self.nolocal else 1)
        with trio.move_on_after(timeout):
            while len(self.executor.workers) < want:
                await self.executor.worker_changed.wait()
        if len(self.executor.workers) < want:
            log.warning("only %d of the %d named workers registered within %.0fs; "
                        "continuing without the others", len(self.executor.workers) -
                        (0 if self.nolocal else 1), len(self.waddrs), timeout)

    async def serve_page(self, address: str = "127.0.0.1:0",
                         task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Serve the executor's web page, ``/status`` and ``/metrics`` on ``address`` until
        cancelled (``run_combine(dashboard=True)``); starts with the address bound."""
        from .executor.http import HttpServer
        await HttpServer(self.executor).serve(address, task_status=task_status)

    def client_link(self, name: str = "embedded-client", user: str = "default",
                    session: int | None = None) -> Link:
        """A new in-memory client connection to the embedded executor."""
        mine, theirs = memory_link_pair(name, "executor")
        self._n.start_soon(self.executor.serve_client, theirs, user,
                           {"name": name, "session": session})
        return mine

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        self._n.cancel_scope.cancel()
        try:
            return await self._cm.__aexit__(exc_type, exc, tb)
        finally:
            if self.agent is not None:
                await self.pool.aclose()
