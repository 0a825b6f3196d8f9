"""``run_combine`` and ``combine``: run trio programs whose wait groups run jobs on a Grain
cluster.

Where the jobs go:

- no address: an embedded local cluster (``grain.local``) on this machine's cores; with
  ``waddrs`` it also dials the original's passive workers (``grain worker --listen``);
- ``address="grain://host:port"`` (or ``GRAIN_ADDRESS``) and ``token`` (or
  ``GRAIN_TOKEN``): a running executor;
- ``cluster="name"`` (+ ``namespace``): a GrainCluster, found through Kubernetes.

What the program shows while it runs: jobs' output lines (``output=``, ``GRAIN_OUTPUT``;
grain.client.display), progress rows in a terminal (``progress=``, ``GRAIN_PROGRESS``;
grain.client.progress), and on request how to watch the cluster (``dashboard=``,
``GRAIN_DASHBOARD``). Sessions on remote workers ship the project's own modules
(``ship_project=``, ``GRAIN_SHIP_PROJECT``; grain.client.project).
"""

from __future__ import annotations

import inspect
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import trio

from .. import config
from ..errors import ConfigurationError
from ..net import transport
from ..net.endpoints import parse_endpoint
from ..net.link import DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT, Link, StreamLink
from ..protocol import handshake
from ..protocol import messages as m
from ..resource import Resource
from .display import OutputPrinter, OutputTarget, View, reset_view, use_view
from .progress import ProgressBoard
from .project import program_bundle, ship_enabled
from .session import Session
from .waitgroup import _RUNTIME, collapse, load_cache_or_exec1

if TYPE_CHECKING:   # imported when run_combine starts one (the client's one way to it)
    from ..local import LocalCluster

__all__ = ["Options", "combine", "load_cache_or_exec1", "local_session", "open_session",
           "run_combine"]

Main = Callable[[], Any]

_ARGS_HINT = ("To pass arguments to main, bind them first: "
              "run_combine(functools.partial(main, arg1, arg2)).")


class Options(TypedDict, total=False):
    """The keywords ``run_combine`` and ``combine`` take (see ``run_combine``)."""

    temporary_err: Iterable[type[BaseException]]
    temporary_attempts: int
    address: str | None
    token: str | None
    cluster: str | None
    namespace: str | None
    kubeconfig: str | None
    tls: bool
    tls_ca: str | None
    retries: int | None
    nolocal: bool
    heartbeat: float
    timeout: float
    user: str | None
    reconnect_grace: float | None
    output: OutputTarget
    progress: bool | None
    dashboard: bool | None
    ship_project: bool | None


def run_combine(subtasks: Main | Iterable[Main], waddrs: Iterable[str] = (),
                rpw: Resource | None = None, *,
                temporary_err: Iterable[type[BaseException]] = (),
                temporary_attempts: int = config.TEMPORARY_ATTEMPTS,
                address: str | None = None, token: str | None = None,
                cluster: str | None = None, namespace: str | None = None,
                kubeconfig: str | None = None,
                tls: bool = False, tls_ca: str | None = None,
                retries: int | None = None, nolocal: bool = False,
                heartbeat: float = DEFAULT_HEARTBEAT, timeout: float = DEFAULT_TIMEOUT,
                user: str | None = None, reconnect_grace: float | None = None,
                output: OutputTarget = None, progress: bool | None = None,
                dashboard: bool | None = None, ship_project: bool | None = None) -> Any:
    """Run ``subtasks`` (an async function, or a list of them run in parallel) with Grain,
    in a new trio loop; returns what a single ``subtasks`` function returns.

    ``waddrs``: addresses of passive workers to dial (``["node1:4242"]``); ``rpw`` caps
    the embedded local worker (``Node(2, 4)``); ``temporary_err`` names exception types
    after which a job is retried, up to ``temporary_attempts`` attempts in all; ``retries``
    is how often a job is re-run after losing its worker. ``output``: where jobs' output
    lines go (``"print"``, ``"off"``, a path, a text file, or ``fn(job, worker, stream,
    line)``; default ``GRAIN_OUTPUT`` or ``"print"``); ``progress``: progress rows in a
    terminal (default ``GRAIN_PROGRESS`` or on); ``dashboard``: print how to watch the
    cluster (default ``GRAIN_DASHBOARD`` or off); ``ship_project``: send the project's own
    modules to remote workers (default ``GRAIN_SHIP_PROJECT`` or on). Inside a program that
    already runs trio, ``await combine(...)`` takes the same arguments.
    """
    subtasks, waddrs = _check_arguments(subtasks, waddrs, rpw)
    run = partial(combine, subtasks, waddrs, rpw, temporary_err=temporary_err,
                  temporary_attempts=temporary_attempts, address=address, token=token,
                  cluster=cluster, namespace=namespace, kubeconfig=kubeconfig, tls=tls,
                  tls_ca=tls_ca, retries=retries, nolocal=nolocal, heartbeat=heartbeat,
                  timeout=timeout, user=user, reconnect_grace=reconnect_grace,
                  output=output, progress=progress, dashboard=dashboard,
                  ship_project=ship_project)
    try:
        return trio.run(run)
    except BaseExceptionGroup as eg:
        # The cluster's own nurseries wrap what the program raised; give it back as itself.
        collapsed = collapse(eg)
        raise collapsed from collapsed.__cause__


async def combine(subtasks: Main | Iterable[Main], waddrs: Iterable[str] = (),
                  rpw: Resource | None = None, **options: Unpack[Options]) -> Any:
    """``run_combine`` for a program that already runs trio: ``await grain.combine(main,
    ...)`` inside ``trio.run``; same arguments, same result. The cluster (an embedded one,
    or the connection to a remote one) lives for this call."""
    subtasks, waddrs = _check_arguments(subtasks, waddrs, rpw)
    printer = OutputPrinter.from_option(options.pop("output", None))
    show = options.pop("progress", None)
    if show is None:
        show = config.env_flag(config.ENV_PROGRESS, True)
    view = View(printer=printer, board=ProgressBoard() if show else None)
    try:
        async with trio.open_nursery() as n:
            try:
                async with open_session(waddrs=waddrs, rpw=rpw,
                                        **_session_options(options)) as session:
                    session.default_output = partial(view.emit, "job", "?")
                    if view.board is not None:
                        await n.start(view.board.run)
                    reset, vreset = _RUNTIME.set(session), use_view(view)
                    try:
                        return await _run_mains(subtasks)
                    finally:
                        _RUNTIME.reset(reset)
                        reset_view(vreset)
                        if view.board is not None:
                            view.board.stop()
            finally:
                # only once the session has closed: its goodbye must not be cancelled
                n.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        collapsed = collapse(eg)
        raise collapsed from collapsed.__cause__
    finally:
        if printer is not None:
            printer.close()


async def _run_mains(subtasks: Main | list[Main]) -> Any:
    if callable(subtasks):
        return await subtasks()
    try:
        async with trio.open_nursery() as n:
            for st in subtasks:
                n.start_soon(st)
    except BaseExceptionGroup as eg:
        collapsed = collapse(eg)
        raise collapsed from collapsed.__cause__
    return None


def _check_arguments(subtasks: Any, waddrs: Any, rpw: Any
                     ) -> tuple[Main | list[Main], tuple[str, ...]]:
    """Fail at once, saying what was meant, when the positional arguments are misread
    (``run_combine(main, "abc")`` would otherwise wait for workers "a", "b", "c")."""
    if inspect.iscoroutine(subtasks):
        subtasks.close()
        raise TypeError("run_combine takes the async function itself, not its call: "
                        "run_combine(main), not run_combine(main()). " + _ARGS_HINT)
    if not callable(subtasks):
        if isinstance(subtasks, str | bytes) or not isinstance(subtasks, Iterable):
            raise TypeError(f"run_combine's first argument is the async function to run "
                            f"(or a list of them), not {subtasks!r}")
        subtasks = list(subtasks)
        for st in subtasks:
            if not callable(st):
                raise TypeError(f"run_combine got a list with {st!r}, which is not an "
                                f"async function")
    if isinstance(waddrs, str | bytes | Resource) or not isinstance(waddrs, Iterable):
        raise TypeError(f"run_combine's second argument is waddrs, the addresses of passive "
                        f"workers (a list such as ['node1:4242']), not {waddrs!r}. "
                        + _ARGS_HINT)
    addrs = tuple(waddrs)
    for a in addrs:
        if not isinstance(a, str):
            raise TypeError(f"run_combine's waddrs must be 'host:port' strings, not {a!r}. "
                            + _ARGS_HINT)
    if rpw is not None and not isinstance(rpw, Resource):
        raise TypeError(f"run_combine's third argument is rpw, the resources of the local "
                        f"worker (such as Node(4, 8)), not {rpw!r}. " + _ARGS_HINT)
    return subtasks, addrs


def _session_options(options: Options) -> dict[str, Any]:
    opts: dict[str, Any] = dict(options)
    if "temporary_err" in opts:
        opts["temporary_err"] = tuple(opts["temporary_err"])
    return opts


@asynccontextmanager
async def open_session(*, waddrs: tuple[str, ...] = (), rpw: Resource | None = None,
                       temporary_err: tuple[type[BaseException], ...] = (),
                       temporary_attempts: int = config.TEMPORARY_ATTEMPTS,
                       address: str | None = None,
                       token: str | None = None, cluster: str | None = None,
                       namespace: str | None = None, kubeconfig: str | None = None,
                       tls: bool = False, tls_ca: str | None = None,
                       retries: int | None = None, nolocal: bool = False,
                       heartbeat: float = DEFAULT_HEARTBEAT,
                       timeout: float = DEFAULT_TIMEOUT, user: str | None = None,
                       reconnect_grace: float | None = None,
                       dashboard: bool | None = None, ship_project: bool | None = None
                       ) -> AsyncIterator[Session]:
    """A client session on the right kind of cluster (see the module docstring)."""
    token = token or config.env_str(config.ENV_TOKEN)
    address = address or (config.env_str(config.ENV_ADDRESS) if cluster is None
                          and not waddrs else None)
    cluster_user = user   # discovery's own fallback: $GRAIN_USER, then "default"
    user = user or config.env_str(config.ENV_USER) or _login_name()
    if dashboard is None:
        dashboard = config.env_flag(config.ENV_DASHBOARD, False)
    session_opts: dict[str, Any] = dict(
        temporary_err=temporary_err, temporary_attempts=temporary_attempts,
        worker_retries=retries,
        reconnect_grace=reconnect_grace if reconnect_grace is not None else
        config.env_float(config.ENV_CLIENT_GRACE, config.CLIENT_GRACE))
    remote = cluster is not None or address is not None or bool(waddrs)
    if remote and ship_enabled(ship_project):
        # Workers elsewhere cannot import the modules beside the script: send them along.
        session_opts["bundle"] = await trio.to_thread.run_sync(program_bundle)
    if cluster is not None:
        from .cluster_dial import open_cluster_dialer
        # Every connection (the first, and each after a lost link) dials what discovery
        # found, with the cluster's CA and Service name; after repeated failures it looks
        # the cluster up again. The port-forward runs in its own threads until the end.
        async with open_cluster_dialer(cluster, namespace, user=cluster_user,
                                       kubeconfig=kubeconfig, token=token, tls=tls,
                                       tls_ca=tls_ca, heartbeat=heartbeat,
                                       timeout=timeout) as dial:
            if dashboard:
                _say_remote(dial.conn.address)
            async with _serve(dial, session_opts) as s:
                yield s
        return
    if address is not None:
        if not token:
            raise ConfigurationError(f"connecting to {address} needs a token: pass token=... "
                                     f"or set GRAIN_TOKEN")
        if dashboard:
            _say_remote(address)
        async with _remote_session(address, token, tls, tls_ca, heartbeat, timeout,
                                   session_opts, user) as s:
            yield s
        return
    from ..local import LocalCluster
    session_opts["reconnect_grace"] = 0   # the embedded executor lives in this process
    async with LocalCluster(rpw, waddrs=waddrs, token=token, retries=retries,
                            nolocal=nolocal) as lc, _dashboard(lc, dashboard), \
            local_session(lc, user, **session_opts) as s:
        yield s


@asynccontextmanager
async def _dashboard(lc: LocalCluster, enabled: bool) -> AsyncIterator[None]:
    """With ``dashboard``: serve the embedded executor's page on loopback and say how to
    watch and join this run (the token goes to a private file, not the screen)."""
    if not enabled:
        yield
        return
    tmp = tempfile.mkdtemp(prefix="grain-")          # mode 0700
    try:
        token_file = os.path.join(tmp, "token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lc.token + "\n")
        async with trio.open_nursery() as n:
            bound = await n.start(lc.serve_page, "127.0.0.1:0")
            url = f"http://{bound.host}:{bound.port}/"
            lines = [f"grain: watch this run at {url}"]
            if lc.address is not None:
                attach = f"--executor {lc.address} --token-file {token_file}"
                lines += [f"grain: status:     grain status {attach}",
                          f"grain: add workers: grain worker {attach}"]
            print("\n".join(lines), file=sys.stderr, flush=True)
            try:
                yield
            finally:
                n.cancel_scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _say_remote(address: str) -> None:
    print(f"grain: this run's executor is {address}; watch it on the page its --http "
          f"address serves, or with: grain status --executor {address}",
          file=sys.stderr, flush=True)


@asynccontextmanager
async def local_session(lc: LocalCluster, user: str = "default", **session_opts: Any
                        ) -> AsyncIterator[Session]:
    """A session on an embedded cluster (``grain.local.LocalCluster``)."""
    async def local_link(session_id: int, resume: bool) -> Link:
        link: Link = lc.client_link(user=user, session=session_id)
        return link
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
        sid = secrets.randbits(63)

        async def started_link(session_id: int, resume: bool) -> Link:
            link: Link = await connect(session_id, resume)
            if isinstance(link, StreamLink):
                link.start(n)
            return link
        link = await started_link(sid, False)
        session = Session(link, connect=started_link, session_id=sid, **session_opts)
        n.start_soon(session.run)
        try:
            yield session
        finally:
            await session.goodbye()
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
