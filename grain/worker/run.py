"""``grain worker``: build the inventory, warm the runners, serve the executor, drain on
SIGTERM."""

from __future__ import annotations

import logging
import signal

import trio

from .. import config
from ..net import transport
from ..net.endpoints import parse_endpoint
from ..resource import WTime
from .agent import WorkerAgent
from .connect import serve_dialing, serve_listening
from .inventory import build_inventory, detect_gpus, parse_cpu_list, parse_memory
from .runners import RunnerPool

log = logging.getLogger("grain.worker")


async def run_worker(*, executor: str | None, listen: str | None, name: str, cores: str,
                     memory: str, reserve_cores: int, gpus: str, walltime: str | None,
                     token: str, tls: bool = False, tls_ca: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     heartbeat: float = config.HEARTBEAT,
                     timeout: float = config.PEER_TIMEOUT,
                     drain_timeout: float = config.DRAIN_TIMEOUT) -> None:
    """Run a worker until cancelled, or until SIGTERM has drained it."""
    inv = build_inventory(
        cpus=None if cores == "auto" else parse_cpu_list(cores), reserve_cores=reserve_cores,
        memory_gb=None if memory == "auto" else parse_memory(memory),
        gpus=(detect_gpus() if gpus == "auto" else [] if gpus == "none" else
              parse_cpu_list(gpus)),
        lifetime=WTime(walltime).T if walltime else None)
    # a subreaper: what a runner that dies abruptly leaves behind comes to this process,
    # which kills it (not to init, out of reach)
    pool = RunnerPool(adopts_orphans=True)
    agent = WorkerAgent(name, inv, pool)
    print(f"grain worker {name}: {inv.capacity} on CPUs {inv.cpuset}"
          f"{' (exclusive cpuset)' if inv.exclusive_cpuset else ''}", flush=True)
    try:
        async with trio.open_nursery() as n:
            await n.start(agent.run)
            n.start_soon(pool.warm, min(len(inv.cpuset), 4))
            n.start_soon(_drain_on_sigterm, agent, drain_timeout, n.cancel_scope)
            if executor:
                ctx = transport.client_ssl_context(tls_ca) if tls else None
                await serve_dialing(agent, parse_endpoint(executor), token, ssl_context=ctx,
                                    heartbeat=heartbeat, timeout=timeout)
            else:
                assert listen is not None
                ctx = transport.server_ssl_context(tls_cert, tls_key) \
                    if tls_cert and tls_key else None
                await serve_listening(agent, parse_endpoint(listen), token,
                                      ssl_context=ctx, heartbeat=heartbeat, timeout=timeout)
    finally:
        await pool.aclose()


async def _drain_on_sigterm(agent: WorkerAgent, drain_timeout: float,
                            scope: trio.CancelScope) -> None:
    """SIGTERM (a pod being replaced): finish or hand back the jobs, then stop."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            print(f"grain worker {agent.name}: SIGTERM, draining (up to "
                  f"{drain_timeout:g}s)", flush=True)
            await agent.drain(drain_timeout)
            print(f"grain worker {agent.name}: drained, exiting", flush=True)
            scope.cancel()
            return
