"""The worker's network shell: dial the executor (and redial), or listen for it.

``dial`` is the normal form: it works behind NAT and in a DaemonSet; it retries with
backoff until the executor is up and reconnects after a loss, re-registering each time.
``listen`` is the original grain's form, where the executor dials the worker.
"""

from __future__ import annotations

import logging
import ssl

import trio

from ..errors import AuthenticationError, ProtocolError
from ..net import transport
from ..net.endpoints import Endpoint
from ..net.link import DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT, open_stream_link
from ..protocol import handshake
from .agent import WorkerAgent

log = logging.getLogger("grain.worker")


async def serve_dialing(agent: WorkerAgent, ep: Endpoint, token: str, *,
               ssl_context: ssl.SSLContext | None = None, heartbeat: float = DEFAULT_HEARTBEAT,
               timeout: float = DEFAULT_TIMEOUT, max_backoff: float = 10.0,
               give_up_on_auth: bool = True) -> None:
    """Serve the executor at ``ep`` forever, reconnecting with backoff."""
    delay = 0.1
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
                delay = 0.1
                async with open_stream_link(stream, str(ep), heartbeat=heartbeat,
                                            timeout=timeout, decoder=dec) as link:
                    await agent.serve(link)
        await trio.sleep(delay)
        delay = min(delay * 2, max_backoff)


async def serve_listening(agent: WorkerAgent, ep: Endpoint, token: str, *,
                 ssl_context: ssl.SSLContext | None = None, heartbeat: float = DEFAULT_HEARTBEAT,
                 timeout: float = DEFAULT_TIMEOUT,
                 task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Wait for an executor to dial in; serve one executor at a time."""
    listeners, bound = await transport.open_listeners(ep, ssl_context)
    log.info("worker %s waiting for an executor on %s", agent.name, bound)
    task_status.started(bound)
    busy = trio.Lock()

    async def handle(stream: trio.abc.Stream) -> None:
        peer = transport.peer_name(stream)
        try:
            _, _, dec = await handshake.accept(stream, token, "worker", ("executor",),
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
        async with busy, open_stream_link(stream, peer, heartbeat=heartbeat,
                                          timeout=timeout, decoder=dec) as link:
            await agent.serve(link)

    await transport.serve(listeners, handle)


async def run_worker(*, executor: str | None, listen: str | None, name: str, cores: str,
                     memory: str, reserve_cores: int, gpus: str, walltime: str | None,
                     token: str, tls: bool = False, tls_ca: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     heartbeat: float = DEFAULT_HEARTBEAT,
                     timeout: float = DEFAULT_TIMEOUT) -> None:
    """``grain worker``: build the inventory, warm the runners, serve the executor."""
    from ..net.endpoints import parse_endpoint
    from ..resource import WTime
    from .inventory import build_inventory, detect_gpus, parse_cpu_list, parse_memory
    from .runners import RunnerPool

    inv = build_inventory(
        cpus=None if cores == "auto" else parse_cpu_list(cores), reserve_cores=reserve_cores,
        memory_gb=None if memory == "auto" else parse_memory(memory),
        gpus=(detect_gpus() if gpus == "auto" else [] if gpus == "none" else
              parse_cpu_list(gpus)),
        lifetime=WTime(walltime).T if walltime else None)
    pool = RunnerPool()
    agent = WorkerAgent(name, inv, pool)
    print(f"grain worker {name}: {inv.capacity} on CPUs {inv.cpuset}"
          f"{' (exclusive cpuset)' if inv.exclusive_cpuset else ''}", flush=True)
    try:
        async with trio.open_nursery() as n:
            n.start_soon(pool.warm, min(len(inv.cpuset), 4))
            if executor:
                ctx = transport.client_ssl_context(tls_ca) if tls else None
                await serve_dialing(agent, parse_endpoint(executor), token, ssl_context=ctx,
                           heartbeat=heartbeat, timeout=timeout)
            else:
                ctx = transport.server_ssl_context(tls_cert, tls_key) if tls_cert else None
                await serve_listening(agent, parse_endpoint(listen), token, ssl_context=ctx,
                              heartbeat=heartbeat, timeout=timeout)
    finally:
        await pool.aclose()
