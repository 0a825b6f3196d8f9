"""The systems under test, each behind one small interface, ``Ops``.

A workload is ``async def workload(ops, params) -> dict``. ``ops.call(fn, *args)`` runs one
job and returns its value; ``ops.map(fn, args_list)`` submits all the jobs at once (in
each system's own bulk idiom) and returns their values in order; ``ops.sleep(s)`` idles.
Grain's ops really await (inside ``grain.run_combine``); the peers' ops are plain blocking
calls wrapped in coroutines that never suspend, driven by ``drive`` without any event
loop, so the same workload code measures every system.

``run_on(system, workload, params, workers=2)`` starts the system, runs the workload and
stops the system (Ray with ``ray.shutdown()``, Dask by closing its client and cluster, the
pool by shutting it down, the Grain CLI processes by SIGTERM then SIGKILL), always in a
``finally``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any, cast

from . import procs

SYSTEMS = ("grain", "grain-tcp", "dask", "ray", "processpool", "bare-tcp", "trio-relay",
           "raw-relay")
PEERS = ("dask", "ray", "processpool")
LOOPBACK = "127.0.0.1"


class Unavailable(Exception):
    """The system cannot run here (missing package or CLI); the message says why."""


def drive(coro: Any) -> Any:
    """Run a coroutine whose awaits never suspend (the peers' ops) to completion."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise RuntimeError("a peer workload suspended: peers' ops must be blocking calls")


class Ops:
    """The interface workloads use; see the module docstring."""

    system = ""
    cores = 2

    def __init__(self, t0: float) -> None:
        self.t0 = t0                      # when the measuring process started
        self.ready_at: float | None = None  # when the system was up (before the workload)
        self.extra: dict[str, Any] = {}

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def map(self, fn: Callable[..., Any], args_list: list[tuple[Any, ...]]) -> list[Any]:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# -- Grain -----------------------------------------------------------------------------
class GrainOps(Ops):
    def __init__(self, t0: float, system: str, cores: int) -> None:
        super().__init__(t0)
        self.system = system
        self.cores = cores
        from grain.resource import Cores
        self.one = Cores(1)
        self.many = Cores(cores)          # every core of the cluster
        self.executor_pid: int | None = None
        self.address: str | None = None   # over TCP: where the executor listens
        self.token: str | None = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        import grain
        return await grain.exec1(self.one, fn, *args)

    async def map(self, fn: Callable[..., Any], args_list: list[tuple[Any, ...]], res: Any = None) -> list[Any]:
        import grain
        r = res or self.one
        async with grain.open_waitgroup() as wg:
            for a in args_list:
                wg.submit(r, fn, *a)
        return wg.results

    async def sleep(self, seconds: float) -> None:
        import trio
        await trio.sleep(seconds)


def grain_cli() -> list[str]:
    """The ``grain`` command of this interpreter's environment."""
    exe = os.path.join(os.path.dirname(sys.executable), "grain")
    return [exe] if os.path.exists(exe) else [shutil.which("grain") or "grain"]


def grain_cli_status() -> str | None:
    """None when ``grain executor`` and ``grain worker`` exist; else why not."""
    try:
        out = subprocess.run([*grain_cli(), "--help"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`grain --help` failed: {e}"
    text = out.stdout + out.stderr
    if out.returncode != 0:
        return f"`grain --help` exited {out.returncode}: {text.strip().splitlines()[-1:]}"
    missing = [c for c in ("executor", "worker") if c not in text]
    if missing:
        return f"the grain CLI has no {' / '.join(missing)} command yet"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"grain executor exited with {proc.returncode}: "
                               f"{_tail(log)}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"grain executor did not listen on port {port} in {timeout}s")


def _tail(path: str, n: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


def _stop(p: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        procs.kill_tree(p.pid)
        p.wait(timeout)


async def _await_worker(ops: GrainOps, timeout: float = 30.0) -> None:
    """A job succeeds once a worker has registered; until then the executor refuses it."""
    import trio

    from bench.jobs import noop
    from grain.errors import Unschedulable
    deadline = time.monotonic() + timeout
    while True:
        try:
            await ops.call(noop, 0)
            return
        except Unschedulable:
            if time.monotonic() > deadline:
                raise
            await trio.sleep(0.01)


def run_grain(workload: Callable[..., Any], params: dict[str, Any], t0: float, *, tcp: bool,
              workers: int = 2) -> dict[str, Any]:
    import grain
    from grain.resource import Cores
    ncores = len(os.sched_getaffinity(0))
    ops = GrainOps(t0, "grain-tcp" if tcp else "grain", min(workers, ncores))

    async def main() -> dict[str, Any]:
        if tcp:
            await _await_worker(ops)
        ops.ready_at = time.perf_counter()
        try:
            out: dict[str, Any] = await workload(ops, params)
            return out
        finally:
            procs.remember()

    if not tcp:
        rpw = Cores(workers) if workers != ncores else None
        return cast(dict[str, Any], grain.run_combine(main, rpw=rpw))
    why = grain_cli_status()
    if why:
        raise Unavailable(why)
    tmp = tempfile.mkdtemp(prefix="grain-bench-")
    ex = wk = None
    try:
        token = secrets.token_urlsafe(32)
        tf = os.path.join(tmp, "token")
        fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        port = _free_port()
        addr = f"grain://{LOOPBACK}:{port}"
        exlog, wklog = os.path.join(tmp, "executor.log"), os.path.join(tmp, "worker.log")
        with open(exlog, "wb") as lf:
            # --wait-for-workers 0: a job no worker could ever run is refused at once
            # (the queue workloads' barrier), not kept waiting for workers to come
            ex = subprocess.Popen([*grain_cli(), "executor", "--listen", addr,
                                   "--token-file", tf, "--wait-for-workers", "0"],
                                  stdout=lf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        _wait_port(port, ex, 30.0, exlog)
        cores = ",".join(map(str, sorted(os.sched_getaffinity(0))[:workers]))
        with open(wklog, "wb") as lf:
            wk = subprocess.Popen([*grain_cli(), "worker", "--executor", addr,
                                   "--token-file", tf, "--cores", cores],
                                  stdout=lf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        ops.executor_pid = ex.pid
        ops.address, ops.token = addr, token
        ops.extra["worker_pid"] = wk.pid
        try:
            return cast(dict[str, Any],
                        grain.run_combine(main, address=addr, token=token, progress=False))
        except BaseException as e:
            for who, p, log in (("executor", ex, exlog), ("worker", wk, wklog)):
                if p.poll() is not None:
                    e.add_note(f"grain {who} exited {p.returncode}: {_tail(log)}")
            raise
    finally:
        procs.remember()
        _stop(wk)
        _stop(ex)
        shutil.rmtree(tmp, ignore_errors=True)


# -- Dask ------------------------------------------------------------------------------
class DaskOps(Ops):
    system = "dask"

    def __init__(self, t0: float, client: Any, workers: int) -> None:
        super().__init__(t0)
        self.client = client
        self.cores = workers

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False).result()

    async def map(self, fn: Callable[..., Any], args_list: list[tuple[Any, ...]]) -> list[Any]:
        futs = self.client.map(fn, *zip(*args_list, strict=True), pure=False)
        return list(self.client.gather(futs))


def run_dask(workload: Callable[..., Any], params: dict[str, Any], t0: float, workers: int = 2) -> dict[str, Any]:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise Unavailable(f"dask[distributed] is not installed: {e}") from e
    warnings.filterwarnings("ignore")
    cluster = client = None
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host=LOOPBACK, dashboard_address=None,
                               silence_logs=logging.ERROR)  # type: ignore[no-untyped-call]
        client = Client(cluster)  # type: ignore[no-untyped-call]
        ops = DaskOps(t0, client, workers)
        ops.ready_at = time.perf_counter()
        return cast(dict[str, Any], drive(workload(ops, params)))
    finally:
        procs.remember()
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()


# -- Ray -------------------------------------------------------------------------------
class RayOps(Ops):
    system = "ray"

    def __init__(self, t0: float, ray: Any, workers: int) -> None:
        super().__init__(t0)
        self.ray = ray
        self.cores = workers
        self._remote: dict[Any, Any] = {}

    def _r(self, fn: Callable[..., Any]) -> Any:
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.ray.remote(fn)
        return r

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ray.get(self._r(fn).remote(*args))

    async def map(self, fn: Callable[..., Any], args_list: list[tuple[Any, ...]]) -> list[Any]:
        r = self._r(fn)
        return list(self.ray.get([r.remote(*a) for a in args_list]))


def run_ray(workload: Callable[..., Any], params: dict[str, Any], t0: float, workers: int = 2) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise Unavailable(f"ray is not installed (no wheel for this platform?): {e}") from e
    try:
        ray.init(num_cpus=workers, _node_ip_address=LOOPBACK, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
        ops = RayOps(t0, ray, workers)
        ops.ready_at = time.perf_counter()
        return cast(dict[str, Any], drive(workload(ops, params)))
    finally:
        procs.remember()
        ray.shutdown()


# -- the floor -------------------------------------------------------------------------
class PoolOps(Ops):
    system = "processpool"

    def __init__(self, t0: float, pool: Any, workers: int) -> None:
        super().__init__(t0)
        self.pool = pool
        self.cores = workers

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args).result()

    async def map(self, fn: Callable[..., Any], args_list: list[tuple[Any, ...]]) -> list[Any]:
        futs = [self.pool.submit(fn, *a) for a in args_list]
        return [f.result() for f in futs]


def run_pool(workload: Callable[..., Any], params: dict[str, Any], t0: float, workers: int = 2) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(workers)
    try:
        ops = PoolOps(t0, pool, workers)
        ops.ready_at = time.perf_counter()
        return cast(dict[str, Any], drive(workload(ops, params)))
    finally:
        procs.remember()
        pool.shutdown(wait=True, cancel_futures=True)


def run_on(system: str, workload: Callable[..., Any], params: dict[str, Any], t0: float,
           workers: int = 2) -> dict[str, Any]:
    """Start ``system``, run ``workload`` on it, stop it; the workload's metrics."""
    if system == "grain":
        return run_grain(workload, params, t0, tcp=False, workers=workers)
    if system == "grain-tcp":
        return run_grain(workload, params, t0, tcp=True, workers=workers)
    if system == "dask":
        return run_dask(workload, params, t0, workers)
    if system == "ray":
        return run_ray(workload, params, t0, workers)
    if system == "processpool":
        return run_pool(workload, params, t0, workers)
    raise ValueError(f"unknown system {system!r} (known: {', '.join(SYSTEMS)})")
