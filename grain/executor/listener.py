"""The executor's network shell: accept clients, workers and observers; dial passive workers.

Every connection is authenticated by the handshake (with the secret of the role it
claims) before any payload is read; a peer that fails it, or later sends a malformed
frame, is logged and dropped without disturbing the others. What one peer can cost is
bounded: unauthenticated connections are capped (each may hold at most one 64 KiB
handshake frame, for at most the handshake timeout; at the cap, the one waiting longest
makes room for the newcomer, so a burst of peers that never authenticate cannot lock real
clients out), connections in all are capped, and running out of file descriptors is a
log line, not a storm of tracebacks.
"""

from __future__ import annotations

import errno
import logging
import ssl
from typing import Any

import trio

from .. import config
from ..auth import Credentials
from ..errors import ProtocolError
from ..net import transport
from ..net.endpoints import Endpoint
from ..net.link import LinkClosed, open_stream_link
from ..protocol import handshake
from ..protocol import messages as m
from ..resource import InvalidResource, Resource, UnknownResourceKind, capacity_from_wire
from .core import Executor

log = logging.getLogger("grain.executor")

_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ExecutorListener:
    """Serves an ``Executor`` on an endpoint."""

    def __init__(self, executor: Executor, credentials: Credentials, *,
                 ssl_context: ssl.SSLContext | None = None,
                 heartbeat: float = config.HEARTBEAT, timeout: float = config.PEER_TIMEOUT,
                 max_connections: int = config.MAX_CONNECTIONS,
                 max_pending: int = config.MAX_PENDING_HANDSHAKES) -> None:
        self.executor = executor
        self.credentials = credentials
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.bound: Endpoint | None = None
        self.refused = 0
        self.shed = 0
        self.connections = 0
        self.pending = 0
        self.evicted = 0
        self._handshakes: dict[trio.CancelScope, None] = {}   # oldest first
        self._last_shed_log = -1e9

    async def serve(self, ep: Endpoint, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``ep``; ``task_status.started`` gets the endpoint really bound."""
        listeners, self.bound = await transport.open_listeners(ep, self.ssl_context)
        log.info("executor listening on %s%s", self.bound, " (TLS)" if self.ssl_context else "")
        async with trio.open_nursery() as n:
            for lst in listeners:
                n.start_soon(self._accept_loop, lst, n)
            task_status.started(self.bound)

    async def _accept_loop(self, listener: trio.abc.Listener[Any], n: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in _EXHAUSTED:
                    raise
                self._log_shed(f"cannot accept connections: {e.strerror} (at the file "
                               f"descriptor limit with {self.connections} open); new "
                               f"connections wait")
                await trio.sleep(0.1)
                continue
            if self.connections >= self.max_connections:
                self.shed += 1
                self._log_shed(f"refusing connections: {self.connections} open (limit "
                               f"{self.max_connections}), {self.pending} authenticating "
                               f"(limit {self.max_pending})")
                await trio.aclose_forcefully(stream)
                continue
            if self.pending >= self.max_pending and self._handshakes:
                # the peer that has been authenticating longest goes (a real peer takes
                # milliseconds): new peers are never locked out by idle ones
                oldest = next(iter(self._handshakes))
                del self._handshakes[oldest]
                oldest.cancel()
                self.evicted += 1
                self._log_shed(f"{self.pending} connections authenticating (limit "
                               f"{self.max_pending}): dropping the oldest for each new one")
            scope = trio.CancelScope(deadline=trio.current_time() + config.HANDSHAKE_TIMEOUT)
            self._handshakes[scope] = None
            self.connections += 1   # counted at once: a burst is capped before it runs
            self.pending += 1
            n.start_soon(self._handle, stream, scope)

    def _log_shed(self, text: str) -> None:
        now = trio.current_time()
        if now - self._last_shed_log >= 10:
            self._last_shed_log = now
            log.warning("%s", text)

    async def _handle(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            await self._handle_counted(stream, scope)
        finally:
            self.connections -= 1

    async def _authenticate(self, stream: trio.abc.Stream, peer: str, scope: trio.CancelScope
                            ) -> tuple[str, str, dict[str, Any], Any] | None:
        why = ""
        try:
            with scope:   # the handshake timeout, or room made for a newer peer
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                return await handshake.accept(
                    stream, self.credentials.keys, "executor",
                    ("client", "worker", "observer"), info={"name": self.executor.name})
            why = ("no handshake within the handshake timeout" if scope.deadline
                   <= trio.current_time() else "made room for a newer connection while "
                   "too many were authenticating")
        except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError, ssl.SSLError) as e:
            # a string, not the exception: its traceback holds the handshake's buffers,
            # which would wait for the cycle collector (64 KiB per refused peer)
            why = transport.describe_error(e)
        finally:
            self.pending -= 1
            self._handshakes.pop(scope, None)
        self.refused += 1
        log.warning("refused connection from %s: %s", peer, why)
        await trio.aclose_forcefully(stream)
        return None

    async def _handle_counted(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        peer = transport.peer_name(stream)
        auth = await self._authenticate(stream, peer, scope)
        if auth is None:
            return
        role, user, info, dec = auth
        capacity: Resource | None = None
        try:
            if role == "worker":
                hello = handshake.typed_info(info, m.WorkerHello)
                capacity = _capacity(hello.capacity, peer)
                info = {f: getattr(hello, f) for f in hello.__struct_fields__}
            elif role == "client":
                hello = handshake.typed_info(info, m.ClientHello)
                info = {"name": hello.name or peer, "session": hello.session,
                        "resume": hello.resume}
        except ProtocolError as e:
            self.refused += 1
            log.warning("refused %s at %s: %s", role, peer, e)
            await trio.aclose_forcefully(stream)
            return
        schema = {"client": m.ClientToExecutor, "worker": m.WorkerToExecutor,
                  "observer": m.ObserverToExecutor}[role]
        try:
            async with open_stream_link(stream, peer, schema, heartbeat=self.heartbeat,
                                        timeout=self.timeout, decoder=dec) as link:
                try:
                    if role == "client":
                        await self.executor.serve_client(link, user, info)
                    elif role == "worker":
                        assert capacity is not None
                        await self.executor.serve_worker(link, info, capacity)
                    else:
                        await self._serve_observer(link)
                finally:
                    link.close("served")
                    log.info("%s %r at %s disconnected: %s", role, info.get("name", user),
                             peer, link.closed)
        except* Exception as eg:  # one connection's failure never takes the executor down
            log.error("connection of %s %s ended by an internal error; dropped it",
                      role, peer, exc_info=eg)

    async def _serve_observer(self, link: Any) -> None:
        try:
            while True:
                for h, _ in await link.receive():
                    if type(h) is m.StatusRequest:
                        link.send(m.Status(self.executor.status()))
        except LinkClosed:
            pass


def _capacity(wire: Any, peer: str) -> Resource:
    """A worker's registered capacity, checked before anything is built from it."""
    try:
        return capacity_from_wire(wire)
    except (InvalidResource, UnknownResourceKind) as e:
        raise ProtocolError(f"worker at {peer} registered a malformed capacity: {e}") \
            from None


async def dial_worker(executor: Executor, ep: Endpoint, token: str, *,
                      ssl_context: ssl.SSLContext | None = None,
                      heartbeat: float = config.HEARTBEAT,
                      timeout: float = config.PEER_TIMEOUT) -> None:
    """The original's form: the executor dials a worker (``grain worker --listen``) and
    keeps redialling it with backoff while it is unreachable or after it is lost. The
    worker proves it knows ``token`` (the workers' secret), and so does the executor."""
    delay = config.BACKOFF_FIRST
    while True:
        try:
            stream = await transport.connect(ep, ssl_context)
        except OSError as e:
            log.info("worker %s not reachable (%s); retrying in %.1fs", ep, e, delay)
        else:
            try:
                welcome, dec = await handshake.dial(stream, token, "executor",
                                                    {"name": executor.name},
                                                    expect_role="worker")
                hello = handshake.typed_info(welcome.info, m.WorkerHello)
                capacity = _capacity(hello.capacity, str(ep))
            except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                log.warning("worker %s refused: %s", ep, e)
                await trio.aclose_forcefully(stream)
            else:
                delay = config.BACKOFF_FIRST
                info = {f: getattr(hello, f) for f in hello.__struct_fields__}
                try:
                    async with open_stream_link(stream, str(ep), m.WorkerToExecutor,
                                                heartbeat=heartbeat, timeout=timeout,
                                                decoder=dec) as link:
                        await executor.serve_worker(link, info, capacity)
                except* Exception as eg:  # redial rather than take the executor down
                    log.error("connection to worker %s ended by an internal error",
                              ep, exc_info=eg)
        await trio.sleep(delay)
        delay = min(delay * 2, config.BACKOFF_MAX)
