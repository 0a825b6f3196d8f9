"""The executor's network shell: accept clients, workers and observers; dial passive workers.

Every connection is authenticated by the handshake before any payload is read; a peer that
fails it, or later sends a malformed frame, is logged and dropped without disturbing the
others.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

from ..errors import ProtocolError
from ..net import transport
from ..net.endpoints import Endpoint
from ..net.link import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TIMEOUT,
    LinkClosed,
    StreamLink,
    open_stream_link,
)
from ..protocol import handshake
from ..protocol.messages import Msg
from ..resource import from_wire
from .core import Executor

log = logging.getLogger("grain.executor")


class ExecutorServer:
    """Serves an ``Executor`` on an endpoint."""

    def __init__(self, executor: Executor, token: str, *, ssl_context: ssl.SSLContext | None = None,
                 heartbeat: float = DEFAULT_HEARTBEAT, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.executor = executor
        self.token = token
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.bound: Endpoint | None = None
        self.refused = 0

    async def serve(self, ep: Endpoint, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``ep``; ``task_status.started`` gets the endpoint really bound."""
        listeners, self.bound = await transport.open_listeners(ep, self.ssl_context)
        log.info("executor listening on %s%s", self.bound, " (TLS)" if self.ssl_context else "")
        task_status.started(self.bound)
        await transport.serve(listeners, self._handle)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        peer = transport.peer_name(stream)
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.fail_after(handshake.HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
            role, info, dec = await handshake.accept(
                stream, self.token, "executor", ("client", "worker", "observer"),
                info={"name": self.executor.name})
        except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError, ssl.SSLError) as e:
            self.refused += 1
            log.warning("refused connection from %s: %s", peer, transport.describe_error(e))
            await trio.aclose_forcefully(stream)
            return
        if role == "worker":
            try:
                info = _worker_info(info, peer)
            except ProtocolError as e:
                self.refused += 1
                log.warning("refused worker at %s: %s", peer, e)
                await trio.aclose_forcefully(stream)
                return
        try:
            async with open_stream_link(stream, peer, heartbeat=self.heartbeat,
                                        timeout=self.timeout, decoder=dec) as link:
                try:
                    if role == "client":
                        info.setdefault("name", peer)
                        await self.executor.serve_client(link, info)
                    elif role == "worker":
                        await self.executor.serve_worker(link, info)
                    else:
                        await self._serve_observer(link)
                finally:
                    link.close("served")
                    log.info("%s %r at %s disconnected: %s", role, info.get("name", ""), peer,
                             link.closed)
        except* Exception as eg:  # one connection's failure never takes the executor down
            log.error("connection of %s %s ended by an internal error; dropped it",
                      role, peer, exc_info=eg)

    async def _serve_observer(self, link: StreamLink) -> None:
        try:
            while True:
                for h, _ in await link.receive():
                    if h[0] == Msg.STATUS_REQ:
                        link.send([Msg.STATUS, self.executor.status()])
        except LinkClosed:
            pass


def _worker_info(info: dict[str, Any], peer: str) -> dict[str, Any]:
    """A worker's registration, checked before anything is built from it."""
    if not isinstance(info.get("capacity"), list):
        raise ProtocolError(f"worker at {peer} registered without a capacity")
    try:
        from_wire(info["capacity"])
    except Exception as e:  # noqa: BLE001 - any malformed capacity is the peer's fault
        raise ProtocolError(f"worker at {peer} registered a malformed capacity: {e!r}") from None
    return info


async def dial_worker(executor: Executor, ep: Endpoint, token: str, *,
                      ssl_context: ssl.SSLContext | None = None,
                      heartbeat: float = DEFAULT_HEARTBEAT, timeout: float = DEFAULT_TIMEOUT,
                      max_backoff: float = 10.0) -> None:
    """The original's form: the executor dials a worker (``grain worker --listen``) and
    keeps redialling it with backoff while it is unreachable or after it is lost."""
    delay = 0.2
    while True:
        try:
            stream = await transport.connect(ep, ssl_context)
        except OSError as e:
            log.info("worker %s not reachable (%s); retrying in %.1fs", ep, e, delay)
        else:
            try:
                info, dec = await handshake.dial(stream, token, "executor",
                                                 {"name": executor.name}, expect_role="worker")
                info = _worker_info(info, str(ep))
            except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                log.warning("worker %s refused: %s", ep, e)
                await trio.aclose_forcefully(stream)
            else:
                delay = 0.2
                try:
                    async with open_stream_link(stream, str(ep), heartbeat=heartbeat,
                                                timeout=timeout, decoder=dec) as link:
                        await executor.serve_worker(link, info)
                except* Exception as eg:  # redial rather than take the executor down
                    log.error("connection to worker %s ended by an internal error",
                              ep, exc_info=eg)
        await trio.sleep(delay)
        delay = min(delay * 2, max_backoff)
