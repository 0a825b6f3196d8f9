"""The ``grain`` command line: executor, worker, status, version (and operator).

Thin shells over the library: they parse options, read the token, set up logging and
run the trio service. See ``docs/interfaces.md`` for the contract the operator relies on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from typing import Any

import click

from .. import config
from .._version import __version__
from ..errors import ConfigurationError, GrainError


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def read_token(token_file: str | None, required: bool = True,
               env: tuple[str, ...] = (config.ENV_TOKEN,)) -> str | None:
    """A secret: ``--token-file`` first, then the environment variables ``env``."""
    from ..auth import read_secret
    if token_file:
        try:
            return read_secret(token_file, "the token")
        except ConfigurationError as e:
            raise click.UsageError(str(e)) from None
    for name in env:
        token = config.env_str(name)
        if token:
            return token
    if required:
        raise click.UsageError(f"no token: pass --token-file FILE or set {' or '.join(env)}")
    return None


def _import_resource_modules(mods: tuple[str, ...]) -> None:
    import importlib
    for m in mods:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise click.UsageError(f"cannot import resource module {m!r}: {e}") from None


common_logging = click.option("--log-level", default="info", show_default=True,
                              type=click.Choice(["debug", "info", "warning", "error"]),
                              help="How much to log (to stderr).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grain")
def cli() -> None:
    """Grain: resource-aware parallel jobs on trio, each pinned to exactly its cores."""


@cli.command()
def version() -> None:
    """Print Grain's version."""
    click.echo(__version__)


@cli.command()
@click.option("--listen", default="grain://0.0.0.0:4242", show_default=True,
              metavar="grain://HOST:PORT",
              help="Where clients and workers connect: grain://HOST:PORT or unix:///PATH.")
@click.option("--http", "http_addr", default=None, metavar="HOST:PORT",
              help="Serve /healthz, /status and /metrics here (e.g. 0.0.0.0:8080).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="One token shared by every client and worker (else $GRAIN_TOKEN): "
                   "a single-user cluster.")
@click.option("--client-tokens", type=click.Path(dir_okay=False), default=None,
              metavar="FILE",
              help="Users and their tokens, one 'USER TOKEN [weight=W] [max-cores=N] "
                   "[max-queued=N]' per line; re-read on SIGHUP and when it changes. "
                   "Needs --worker-token-file.")
@click.option("--worker-token-file", type=click.Path(dir_okay=False), default=None,
              help="The workers' secret (else $GRAIN_WORKER_TOKEN); with --client-tokens.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate chain; with --tls-key, every connection must use TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The private key of --tls-cert.")
@click.option("--retries", default=config.RETRIES, show_default=True, metavar="N",
              help="Times a job is re-run after losing its worker.")
@click.option("--wait-for-workers", default=config.WAIT_FOR_WORKERS, show_default=True,
              metavar="SECONDS",
              help="How long a job that no current worker can run waits for one.")
@click.option("--client-grace", default=config.CLIENT_GRACE, show_default=True,
              metavar="SECONDS",
              help="How long a disconnected client's jobs are kept for it to come back.")
@click.option("--worker-grace", default=config.WORKER_GRACE, show_default=True,
              metavar="SECONDS",
              help="How long a lost worker's running jobs wait for it before re-running.")
@click.option("--max-connections", default=config.MAX_CONNECTIONS, show_default=True,
              metavar="N", help="Connections served at once; more are refused (and logged).")
@click.option("--heartbeat", default=config.HEARTBEAT, show_default=True, metavar="SECONDS",
              help="Ping a silent peer after this long.")
@click.option("--timeout", "peer_timeout", default=config.PEER_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="Declare a peer dead after this long without a byte from it.")
@click.option("--resource-module", multiple=True, metavar="MODULE",
              help="Import a module defining custom resource kinds (repeatable).")
@common_logging
def executor(listen: str, http_addr: str | None, token_file: str | None,
             client_tokens: str | None, worker_token_file: str | None, tls_cert: str | None,
             tls_key: str | None, retries: int, wait_for_workers: float, client_grace: float,
             worker_grace: float, max_connections: int, heartbeat: float,
             peer_timeout: float, resource_module: tuple[str, ...], log_level: str) -> None:
    """Run the executor: queue, placement and routing of jobs."""
    from ..auth import Credentials
    _setup_logging(log_level)
    if client_tokens:
        if token_file:
            raise click.UsageError("--token-file (one shared token) and --client-tokens "
                                   "(tokens by role) exclude each other")
        worker_token = read_token(worker_token_file, env=(config.ENV_WORKER_TOKEN,))
        token = None
    else:
        if worker_token_file:
            raise click.UsageError("--worker-token-file goes with --client-tokens")
        token = read_token(token_file)
        worker_token = None
    try:
        credentials = Credentials.from_files(token=token, client_tokens=client_tokens,
                                             worker_token=worker_token)
    except ConfigurationError as e:
        raise click.UsageError(str(e)) from None
    _import_resource_modules(resource_module)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    from ..executor.run import run_executor
    _run(run_executor, listen=listen, http=http_addr, credentials=credentials,
         tls_cert=tls_cert, tls_key=tls_key, retries=retries,
         wait_for_workers=wait_for_workers, client_grace=client_grace,
         worker_grace=worker_grace, max_connections=max_connections, heartbeat=heartbeat,
         timeout=peer_timeout)


@cli.command()
@click.option("--executor", "executor_addr", default=None, metavar="grain://HOST:PORT",
              help="Dial this executor (the usual form; reconnects by itself).")
@click.option("--listen", default=None, metavar="grain://HOST:PORT",
              help="Instead, wait for the executor to dial in (the original grain's form).")
@click.option("--name", default=None, metavar="NAME",
              help="Worker name [default: $NODE_NAME, else host name].")
@click.option("--cores", default="auto", show_default=True, metavar="auto|CPUS",
              help="'auto' (this process's cpuset) or a CPU list such as 0-3,6.")
@click.option("--memory", default="auto", show_default=True, metavar="auto|SIZE",
              help="'auto' (the machine's memory, or its cgroup's limit when smaller: a "
                   "container, a pod, a Slurm job) or a size such as 8GB.")
@click.option("--reserve-cores", default=0, show_default=True, metavar="N",
              help="Keep this many of the cores out of Grain's hands.")
@click.option("--gpus", default="auto", show_default=True, metavar="auto|none|IDS",
              help="'auto', 'none' or a device list such as 0,1.")
@click.option("--walltime", default=None, metavar="[D-]HH:MM:SS",
              help="This worker's remaining lifetime (e.g. the batch allocation's end).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="The workers' secret (else $GRAIN_WORKER_TOKEN, else $GRAIN_TOKEN).")
@click.option("--drain-timeout", default=config.DRAIN_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="On SIGTERM, let running jobs finish this long, then hand them back.")
@click.option("--tls", is_flag=True, help="Use TLS to reach the executor.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA bundle to verify the executor's certificate (implies --tls).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --listen: serve TLS with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --listen: the private key of --tls-cert.")
@click.option("--heartbeat", default=config.HEARTBEAT, show_default=True, metavar="SECONDS",
              help="Ping a silent executor after this long.")
@click.option("--timeout", "peer_timeout", default=config.PEER_TIMEOUT, show_default=True,
              metavar="SECONDS", help="Declare the executor lost after this long silent.")
@click.option("--resource-module", multiple=True, metavar="MODULE",
              help="Import a module defining custom resource kinds (repeatable).")
@common_logging
def worker(executor_addr: str | None, listen: str | None, name: str | None, cores: str,
           memory: str, reserve_cores: int, gpus: str, walltime: str | None,
           token_file: str | None, drain_timeout: float, tls: bool, tls_ca: str | None,
           tls_cert: str | None, tls_key: str | None, heartbeat: float, peer_timeout: float,
           resource_module: tuple[str, ...], log_level: str) -> None:
    """Run a worker: offers this node's cores, memory and GPUs; runs pinned jobs."""
    _setup_logging(log_level)
    if bool(executor_addr) == bool(listen):
        raise click.UsageError("give exactly one of --executor URL or --listen URL")
    token = read_token(token_file, env=(config.ENV_WORKER_TOKEN, config.ENV_TOKEN))
    _import_resource_modules(resource_module)
    # the secret stays in this process: runners (and so jobs) never inherit it
    for var in (config.ENV_WORKER_TOKEN, config.ENV_TOKEN):
        os.environ.pop(var, None)
    from ..worker.run import run_worker
    _run(run_worker, executor=executor_addr, listen=listen,
         name=name or os.environ.get("NODE_NAME") or socket.gethostname(), cores=cores,
         memory=memory, reserve_cores=reserve_cores, gpus=gpus, walltime=walltime,
         token=token, tls=tls or bool(tls_ca), tls_ca=tls_ca, tls_cert=tls_cert,
         tls_key=tls_key, heartbeat=heartbeat, timeout=peer_timeout,
         drain_timeout=drain_timeout)


@cli.command()
@click.option("--executor", "executor_addr", default=None, metavar="grain://HOST:PORT",
              help="Ask the executor over Grain's protocol (needs the token).")
@click.option("--http", "http_url", default=None, metavar="http://HOST:PORT",
              help="Read the executor's HTTP /status instead (no token needed).")
@click.option("--cluster", default=None, metavar="NAME",
              help="A GrainCluster's name (through Kubernetes).")
@click.option("-n", "--namespace", default=None, metavar="NS",
              help="The GrainCluster's namespace.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="With --executor: the token (else $GRAIN_TOKEN).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --executor: CA bundle to verify the executor's certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
@click.option("--watch", is_flag=True,
              help="Redraw the tables in place every --interval seconds, until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0.1), help="With --watch: seconds between redraws.")
@click.option("--count", default=None, type=click.IntRange(min=1), metavar="N",
              help="With --watch: stop after N redraws.")
def status(executor_addr: str | None, http_url: str | None, cluster: str | None,
           namespace: str | None, token_file: str | None, tls_ca: str | None,
           as_json: bool, watch: bool, interval: float, count: int | None) -> None:
    """Show workers, cores free/total, memory, running jobs, queue, clients and users."""
    from .status import render_status, status_source, watch_status
    executor_addr = executor_addr or (None if (http_url or cluster) else
                                      config.env_str(config.ENV_ADDRESS))
    if not (executor_addr or http_url or cluster):
        raise click.UsageError("give --executor grain://HOST:PORT, --http URL or --cluster NAME")
    if watch and as_json:
        raise click.UsageError("--watch draws tables; use --json without it")
    token = read_token(token_file, required=False)
    where = executor_addr or http_url or f"GrainCluster {cluster}"
    try:
        with status_source(executor=executor_addr, http=http_url, cluster=cluster,
                           namespace=namespace, token=token, tls_ca=tls_ca) as fetch:
            doc = fetch()   # the first fetch fails loudly, as without --watch
            if watch:
                try:
                    watch_status(fetch, interval=interval, count=count, first=doc,
                                 errors=(OSError, GrainError, TimeoutError))
                except KeyboardInterrupt:
                    pass
                return
    except (OSError, GrainError, TimeoutError) as e:
        click.echo(f"error: cannot get the status of {where}: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        render_status(doc)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def operator(ctx: click.Context) -> None:
    """Run the Kubernetes operator (same as python -m grain_operator; needs
    grain-trio[operator])."""
    try:
        from grain_operator.__main__ import main as operator_main
    except ImportError as e:
        raise click.UsageError(f"the operator is not installed ({e}): "
                               f"pip install 'grain-trio[operator]'") from None
    sys.argv = ["grain operator", *ctx.args]
    operator_main()


def _leaves(e: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[e]``."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _run(fn: Any, **kwargs: Any) -> None:
    import trio
    try:
        trio.run(lambda: fn(**kwargs))
    except BaseException as e:  # noqa: BLE001 - sorted below; anything else is re-raised
        leaves = [x for x in _leaves(e) if not isinstance(x, trio.Cancelled)] or [e]
        if any(isinstance(x, KeyboardInterrupt) for x in leaves):
            click.echo("interrupted", err=True)
            sys.exit(130)
        # A service's error arrives wrapped in its nursery's ExceptionGroup: show the
        # message (e.g. a refused token, a port in use), not a traceback.
        if all(isinstance(x, (GrainError, OSError)) for x in leaves):
            for x in leaves:
                click.echo(f"error: {x}", err=True)
            sys.exit(2)
        raise
