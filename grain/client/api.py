"""``run_combine``: run trio programs whose wait groups run jobs on a Grain cluster.

Where the jobs go:

- no address: an embedded local cluster (``grain.local``) on this machine's cores; with
  ``waddrs`` it also dials the original's passive workers (``grain worker --listen``);
- ``address="grain://host:port"`` (or ``GRAIN_ADDRESS``) and ``token`` (or
  ``GRAIN_TOKEN``): a running executor;
- ``cluster="name"`` (+ ``namespace``): a GrainCluster, found through Kubernetes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from inspect import signature
from typing import Any

import trio

from .. import config
from ..errors import ConfigurationError
from ..net import transport
from ..net.endpoints import parse_endpoint
from ..net.link import DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT, Link, StreamLink
from ..protocol import handshake
from ..protocol import messages as m
from ..resource import ZERO, Resource
from .session import Session
from .waitgroup import _RUNTIME, _collapse, exec1


def run_combine(subtasks: Callable[[], Any] | Iterable[Callable[[], Any]],
                waddrs: Iterable[str] = (), rpw: Resource | None = None, *,
                temporary_err: Iterable[type[BaseException]] = (),
                temporary_attempts: int = 3,
                address: str | None = None, token: str | None = None,
                cluster: str | None = None, namespace: str | None = None,
                kubeconfig: str | None = None,
                tls: bool = False, tls_ca: str | None = None,
                retries: int | None = None, nolocal: bool = False,
                heartbeat: float = DEFAULT_HEARTBEAT, timeout: float = DEFAULT_TIMEOUT,
                user: str | None = None, reconnect_grace: float | None = None) -> Any:
    """Run ``subtasks`` (an async function, or a list of them run in parallel) with Grain.

    ``rpw`` caps the embedded local worker (e.g. ``Node(2, 4)``); ``temporary_err`` names
    exception types after which a job is retried, up to ``temporary_attempts`` attempts in
    all; ``retries`` is how often a job is re-run after losing its worker. Returns what a
    single ``subtasks`` function returns.
    """
    opts = dict(waddrs=tuple(waddrs), rpw=rpw, temporary_err=tuple(temporary_err),
                temporary_attempts=temporary_attempts, address=address, token=token,
                cluster=cluster, namespace=namespace, kubeconfig=kubeconfig, tls=tls,
                tls_ca=tls_ca, retries=retries, nolocal=nolocal, heartbeat=heartbeat,
                timeout=timeout, user=user, reconnect_grace=reconnect_grace)
    try:
        return trio.run(_boot, subtasks, opts)
    except BaseExceptionGroup as eg:
        # The cluster's own nurseries wrap what the program raised; give it back as itself.
        collapsed = _collapse(eg)
        raise collapsed from collapsed.__cause__


async def _boot(subtasks: Any, opts: dict[str, Any]) -> Any:
    async with open_session(**opts) as session:
        reset = _RUNTIME.set(session)
        try:
            if callable(subtasks):
                return await subtasks()
            try:
                async with trio.open_nursery() as n:
                    for st in subtasks:
                        n.start_soon(st)
            except BaseExceptionGroup as eg:
                collapsed = _collapse(eg)
                raise collapsed from collapsed.__cause__
        finally:
            _RUNTIME.reset(reset)


@asynccontextmanager
async def open_session(*, waddrs: tuple[str, ...] = (), rpw: Resource | None = None,
                       temporary_err: tuple[type[BaseException], ...] = (),
                       temporary_attempts: int = 3, address: str | None = None,
                       token: str | None = None, cluster: str | None = None,
                       namespace: str | None = None, kubeconfig: str | None = None,
                       tls: bool = False, tls_ca: str | None = None,
                       retries: int | None = None, nolocal: bool = False,
                       heartbeat: float = DEFAULT_HEARTBEAT,
                       timeout: float = DEFAULT_TIMEOUT, user: str | None = None,
                       reconnect_grace: float | None = None) -> AsyncIterator[Session]:
    """A client session on the right kind of cluster (see the module docstring)."""
    token = token or config.env_str(config.ENV_TOKEN)
    address = address or (config.env_str(config.ENV_ADDRESS) if cluster is None
                          and not waddrs else None)
    user = user or config.env_str(config.ENV_USER) or _login_name()
    session_opts: dict[str, Any] = dict(
        temporary_err=temporary_err, temporary_attempts=temporary_attempts,
        worker_retries=retries,
        reconnect_grace=reconnect_grace if reconnect_grace is not None else
        config.env_float(config.ENV_CLIENT_GRACE, config.CLIENT_GRACE))
    if cluster is not None:
        from .discovery import open_cluster
        # blocking Kubernetes calls, once, before any job exists; the port-forward (if one
        # is needed) runs in its own thread until the block exits
        with open_cluster(cluster, namespace, kubeconfig=kubeconfig, token=token) as conn:
            async with _remote_session(conn.address, conn.token, tls, tls_ca, heartbeat,
                                       timeout, session_opts, user) as s:
                yield s
        return
    if address is not None:
        if not token:
            raise ConfigurationError(f"connecting to {address} needs a token: pass token=... "
                                     f"or set GRAIN_TOKEN")
        async with _remote_session(address, token, tls, tls_ca, heartbeat, timeout,
                                   session_opts, user) as s:
            yield s
        return
    from ..local import LocalCluster
    session_opts["reconnect_grace"] = 0   # the embedded executor lives in this process
    async with LocalCluster(rpw, waddrs=waddrs, token=token, retries=retries,
                            nolocal=nolocal) as lc, local_session(lc, user, **session_opts) as s:
        yield s


@asynccontextmanager
async def local_session(lc: Any, user: str = "default", **session_opts: Any
                        ) -> AsyncIterator[Session]:
    """A session on an embedded cluster (``grain.local.LocalCluster``)."""
    async def local_link(session_id: int, resume: bool) -> Link:
        return lc.client_link(user=user, session=session_id)
    session_opts.setdefault("reconnect_grace", 0)
    async with _serve(local_link, session_opts) as s:
        yield s


def _login_name() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "default"


@asynccontextmanager
async def _serve(connect: Any, session_opts: dict[str, Any]) -> AsyncIterator[Session]:
    """Run a session: its first link from ``connect(session_id, resume)``, then the
    receive loop (which reconnects through ``connect`` when the link is lost)."""
    async with trio.open_nursery() as n:
        import secrets
        sid = secrets.randbits(63)

        async def started_link(session_id: int, resume: bool) -> Link:
            link = await connect(session_id, resume)
            if isinstance(link, StreamLink):
                link.start(n)
            return link
        link = await started_link(sid, False)
        session = Session(link, connect=started_link, session_id=sid, **session_opts)
        n.start_soon(session.run)
        try:
            yield session
        finally:
            session.goodbye()
            await trio.lowlevel.checkpoint()   # let the goodbye go out
            session.close("the program finished")
            n.cancel_scope.cancel()


@asynccontextmanager
async def _remote_session(address: str, token: str, tls: bool, tls_ca: str | None,
                          heartbeat: float, timeout: float,
                          session_opts: dict[str, Any], user: str | None
                          ) -> AsyncIterator[Session]:
    ep = parse_endpoint(address)
    ctx = transport.client_ssl_context(tls_ca) if (tls or tls_ca) else None
    name = f"{socket.gethostname()}:{os.getpid()}"

    async def connect(session_id: int, resume: bool) -> Link:
        try:
            stream = await transport.connect(ep, ctx)
        except OSError as e:
            raise ConnectionError(f"cannot reach the Grain executor at {ep}: {e}") from e
        try:
            _, dec = await handshake.dial(
                stream, token, "client", {"name": name, "session": session_id,
                                          "resume": resume},
                expect_role="executor", user=user)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return StreamLink(stream, str(ep), m.ExecutorToClient, heartbeat=heartbeat,
                          timeout=timeout, decoder=dec)
    async with _serve(connect, session_opts) as s:
        yield s


async def load_cache_or_exec1(res: Resource, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The original's cache-aware ``exec1``: run ``fn.cache_fn`` (with the subset of
    arguments its signature names) first; return its value when it reports ``(True,
    value)``, else run ``fn`` as a job. ``fn.cache_res`` is the cache function's request."""
    sig_c = list(signature(fn.cache_fn).parameters)
    kwargs_c = {}
    while sig_c and sig_c[-1] in kwargs:
        k = sig_c.pop()
        kwargs_c[k] = kwargs[k]
    sig = list(signature(fn).parameters)
    args_c, i = [], 0
    for k in sig_c:
        while i < len(args) and sig[i] != k:
            i += 1
        if i == len(args):
            raise ValueError(f"Cannot find a positional arg for parameter {k}")
        args_c.append(args[i])
    if fn.cache_res is ZERO or not fn.cache_res.kinds():
        try:
            ok, r = await fn.cache_fn(*args_c, **kwargs_c)
        except Exception:  # noqa: BLE001 - a failing cache means "not cached"
            ok = False
    else:
        ok, r = await exec1(fn.cache_res, fn.cache_fn, *args_c, **kwargs_c)
    if ok:
        return r
    return await exec1(res, fn, *args, **kwargs)
