"""Dialling a GrainCluster's executor for a client session (``run_combine(cluster=...)``).

Discovery (``grain.client.discovery``) says how to reach the cluster as one user: an
address (the Service's DNS name in a pod, a node port or load balancer, or a loopback
port-forward that follows the executor pod), the user's token and, with TLS (the default),
the cluster's CA and the name to verify (``server_hostname``: the executor Service's, which
is in the certificate, whatever address is dialled). ``ClusterDialer`` is the session's
``connect(session_id, resume)``: every connection, the first and each one after a lost link,
dials the connection's *current* address with that CA and name.

After an executor restart redialling the same address is enough (the port-forward finds the
new pod by itself). Only what redialling cannot fix needs discovery again: an external
endpoint that moved, a CA renewed with the rollout, a port-forward whose API connection
broke. So after ``REFRESH_AFTER_FAILURES`` failed dials in a row the dialer looks the cluster
up again (``ClusterConnection.refresh``, blocking, in a thread) and rebuilds its TLS context
when the CA changed. A failed look-up is one more failed attempt: the session keeps retrying
for its reconnect grace. Each dial is bounded in time (``CONNECT_TIMEOUT``, then the
handshake's own limit), so a connection that is accepted but never answered counts as a
failure instead of holding the reconnect loop.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from ..errors import ClusterDiscoveryError, GrainError
from ..net import transport
from ..net.endpoints import parse_endpoint
from ..net.link import Link, StreamLink
from ..protocol import handshake
from ..protocol import messages as m
from .discovery import ClusterConnection, resolve_cluster

__all__ = ["CONNECT_TIMEOUT", "REFRESH_AFTER_FAILURES", "ClusterDialer", "open_cluster_dialer"]

log = logging.getLogger("grain.client")

#: Failed dials in a row before the cluster is looked up again. With the session's backoff
#: (0.1 s doubling to 2 s) that is after about 1.5 s, then every ~8 s while it lasts: a few
#: Kubernetes API requests each time, nothing for an outage that redialling rides out.
REFRESH_AFTER_FAILURES = 4

#: Bound on opening a connection (TCP and TLS) before the Grain handshake, which has its own.
#: A stream that a port-forward accepted but never serves (its API connection was reset) or a
#: black-holed endpoint must count as a failed attempt, not hold the reconnect loop forever.
CONNECT_TIMEOUT = 5.0


def _read_ca(path: str | None) -> str | None:
    """The CA file's text (what decides whether the TLS context must be rebuilt)."""
    if path is None:
        return None
    with open(path) as f:
        return f.read()


class ClusterDialer:
    """``connect(session_id, resume)`` for a session on a GrainCluster (see the module).

    ``tls_ca`` (the caller's own CA file) wins over the cluster's; ``tls`` without any CA
    trusts the system store. The user presented is the one discovery read the token of.
    """

    def __init__(self, conn: ClusterConnection, *, tls: bool = False, tls_ca: str | None = None,
                 heartbeat: float, timeout: float) -> None:
        self.conn = conn
        self.tls, self.tls_ca = tls, tls_ca
        self.heartbeat, self.timeout = heartbeat, timeout
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.failures = 0            # failed dials in a row
        self.refreshes = 0           # look-ups after failures (for tests and logs)
        self._ca = _read_ca(conn.ca_file)
        self._ctx = self._context()

    def _context(self) -> ssl.SSLContext | None:
        if self.tls_ca:
            return transport.client_ssl_context(self.tls_ca)
        if self.conn.tls:
            return transport.client_ssl_context(self.conn.ca_file)
        if self.tls:
            return transport.client_ssl_context()
        return None

    @property
    def where(self) -> str:
        return f"GrainCluster {self.conn.namespace}/{self.conn.name}"

    async def __call__(self, session_id: int, resume: bool) -> Link:
        if self.failures >= REFRESH_AFTER_FAILURES:
            self.failures = 0
            await self.refresh()
        try:
            link = await self._dial(session_id, resume)
        except Exception:
            self.failures += 1
            raise
        self.failures = 0
        return link

    async def refresh(self) -> None:
        """Look the cluster up again (status, the user's Secret, the way in)."""
        log.warning("%s: %d connections failed in a row; looking the cluster up again",
                    self.where, REFRESH_AFTER_FAILURES)
        try:
            await trio.to_thread.run_sync(self.conn.refresh)
        except (GrainError, OSError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a look-up is retried, not fatal
            raise ClusterDiscoveryError(f"looking {self.where} up again failed: {e!r}") from e
        self.refreshes += 1
        ca = _read_ca(self.conn.ca_file)
        if ca != self._ca:
            # a CA renewed with a rollout: the old context would refuse the new certificate
            log.warning("%s: the cluster's CA changed; trusting the new one", self.where)
            self._ca = ca
            self._ctx = self._context()
        log.info("%s: now %s via %s", self.where, self.conn.address, self.conn.via)

    async def _dial(self, session_id: int, resume: bool) -> Link:
        conn = self.conn
        ep = parse_endpoint(conn.address)
        server_name = conn.server_hostname if self._ctx is not None else None
        try:
            with trio.fail_after(min(CONNECT_TIMEOUT, self.timeout)):
                stream = await transport.connect(ep, self._ctx, server_hostname=server_name)
        except trio.TooSlowError:
            raise ConnectionError(f"no answer from the executor of {self.where} at {ep} "
                                  f"({conn.via}) within {min(CONNECT_TIMEOUT, self.timeout):g}s"
                                  ) from None
        except OSError as e:
            raise ConnectionError(f"cannot reach the executor of {self.where} at {ep} "
                                  f"({conn.via}): {e}") from e
        try:
            _, dec = await handshake.dial(
                stream, conn.token, "client", {"name": self.name, "session": session_id,
                                               "resume": resume},
                expect_role="executor", user=conn.user)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return StreamLink(stream, str(ep), m.ExecutorToClient, heartbeat=self.heartbeat,
                          timeout=self.timeout, decoder=dec)


@asynccontextmanager
async def open_cluster_dialer(cluster: str, namespace: str | None = None, *,
                              user: str | None = None, kubeconfig: str | None = None,
                              token: str | None = None, tls: bool = False,
                              tls_ca: str | None = None, heartbeat: float,
                              timeout: float) -> AsyncIterator[ClusterDialer]:
    """Find GrainCluster ``cluster`` (``user``: else ``$GRAIN_USER``, else ``default``) and
    yield its dialer; the port-forward and the CA file are closed on exit."""
    # The Kubernetes client blocks: in a thread, so that other tasks of a program that
    # already runs trio (grain.combine) go on meanwhile.
    conn = await trio.to_thread.run_sync(partial(
        resolve_cluster, cluster, namespace, user=user, kubeconfig=kubeconfig, token=token))
    try:
        yield ClusterDialer(conn, tls=tls, tls_ca=tls_ca, heartbeat=heartbeat, timeout=timeout)
    finally:
        with trio.CancelScope(shield=True):   # even when cancelled: no port-forward left open
            await trio.to_thread.run_sync(conn.close)
