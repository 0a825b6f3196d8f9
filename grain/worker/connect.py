"""The worker's network shell: dial the executor (and redial), or listen for it.

``serve_dialing`` is the normal form: it works behind NAT and in a DaemonSet; it retries
with backoff until the executor is up and reconnects after a loss (the agent's jobs go on
meanwhile and are re-attached). ``serve_listening`` is the original grain's form, where the
executor dials the worker. Both authenticate with the workers' secret.
"""

from __future__ import annotations

import logging
import ssl

import trio

from .. import config
from ..errors import AuthenticationError, ProtocolError
from ..net import transport
from ..net.endpoints import Endpoint
from ..net.link import open_stream_link
from ..protocol import handshake
from ..protocol.messages import ExecutorToWorker
from .agent import WorkerAgent

log = logging.getLogger("grain.worker")


async def serve_dialing(agent: WorkerAgent, ep: Endpoint, token: str, *,
                        ssl_context: ssl.SSLContext | None = None,
                        heartbeat: float = config.HEARTBEAT,
                        timeout: float = config.PEER_TIMEOUT,
                        give_up_on_auth: bool = True) -> None:
    """Serve the executor at ``ep`` forever, reconnecting with backoff."""
    delay = config.BACKOFF_FIRST
    while True:
        try:
            stream = await transport.connect(ep, ssl_context)
        except (OSError, ssl.SSLError) as e:
            log.info("executor %s not reachable (%s); retrying in %.1fs", ep, e, delay)
        else:
            try:
                _, dec = await handshake.dial(stream, token, "worker", agent.info(),
                                              expect_role="executor")
            except AuthenticationError:
                await trio.aclose_forcefully(stream)
                if give_up_on_auth:
                    raise
            except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                log.warning("handshake with %s failed: %s", ep, e)
                await trio.aclose_forcefully(stream)
            else:
                log.info("worker %s registered with %s: %s", agent.name, ep,
                         agent.inventory.capacity)
                delay = config.BACKOFF_FIRST
                async with open_stream_link(stream, str(ep), ExecutorToWorker,
                                            heartbeat=heartbeat, timeout=timeout,
                                            decoder=dec) as link:
                    await agent.serve(link)
        await trio.sleep(delay)
        delay = min(delay * 2, config.BACKOFF_MAX)


async def serve_listening(agent: WorkerAgent, ep: Endpoint, token: str, *,
                          ssl_context: ssl.SSLContext | None = None,
                          heartbeat: float = config.HEARTBEAT,
                          timeout: float = config.PEER_TIMEOUT,
                          task_status: trio.TaskStatus[Endpoint] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Wait for an executor to dial in; serve one executor at a time."""
    listeners, bound = await transport.open_listeners(ep, ssl_context)
    log.info("worker %s waiting for an executor on %s", agent.name, bound)
    task_status.started(bound)
    busy = trio.Lock()

    def keys(role: str, user: str | None) -> list[tuple[str, str]]:
        return [("executor", token)]

    async def handle(stream: trio.abc.Stream) -> None:
        peer = transport.peer_name(stream)
        try:
            _, _, _, dec = await handshake.accept(stream, keys, "worker", ("executor",),
                                                  info=agent.info())
        except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError,
                ssl.SSLError) as e:
            log.warning("refused %s: %s", peer, e)
            await trio.aclose_forcefully(stream)
            return
        if busy.locked():
            log.warning("refused executor %s: already serving one", peer)
            await trio.aclose_forcefully(stream)
            return
        async with busy, open_stream_link(stream, peer, ExecutorToWorker,
                                          heartbeat=heartbeat, timeout=timeout,
                                          decoder=dec) as link:
            await agent.serve(link)

    await transport.serve(listeners, handle)
