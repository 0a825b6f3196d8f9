"""The worker agent: takes jobs from an executor link and runs them on pinned runners.

It enforces each job's limits: ``WTime`` (the runner is killed when the time is up, even
inside C code) and ``Memory`` (the runner's process tree is measured every
``memory_poll`` seconds and killed when its RSS passes the request plus the margin). A
killed or crashed runner is replaced; the worker itself never goes down with a job.
When the executor link is lost, every running job is killed: the executor has already
retried or failed them elsewhere, and a job must not run twice at once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from ..net.link import Link, LinkClosed
from ..protocol.messages import End, Msg
from ..resource import from_wire
from .inventory import Inventory
from .runners import RunnerDied, RunnerPool, RunnerProcess

log = logging.getLogger("grain.worker")

MEMORY_MARGIN_FRACTION = 0.10
MEMORY_MARGIN_BYTES = 100 * 1024 ** 2
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def memory_allowance(request_bytes: int) -> int:
    """RSS a job may reach before it is stopped: its request + 10% + 100 MiB (the margin
    covers the runner's own interpreter, ~30-60 MiB)."""
    return int(request_bytes * (1 + MEMORY_MARGIN_FRACTION)) + MEMORY_MARGIN_BYTES


def job_env(cpus: list[int] | None, gpus: list[int] | None) -> dict[str, str]:
    """Environment a job runs with: thread counts matching its cores, its GPUs."""
    env: dict[str, str] = {}
    if cpus:
        n = str(len(cpus))
        env.update({k: n for k in THREAD_VARS})
        env["GRAIN_CPUS"] = ",".join(map(str, cpus))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return env


@dataclass(slots=True)
class RunningJob:
    gid: int
    memory_limit: int | None
    runner: RunnerProcess | None = None
    cancelled: bool = False
    peak_rss: int = 0


class WorkerAgent:
    """Runs the jobs an executor sends over a link. Reusable across reconnects."""

    def __init__(self, name: str, inventory: Inventory, pool: RunnerPool, *,
                 memory_poll: float = 0.2) -> None:
        self.name = name
        self.inventory = inventory
        self.pool = pool
        self.memory_poll = memory_poll
        self.running: dict[int, RunningJob] = {}
        self.fn_bytes: dict[int, bytes] = {}
        self._env_cache: dict[Any, dict[str, str]] = {}
        self.jobs_done = 0

    def info(self) -> dict[str, Any]:
        return self.inventory.info(self.name)

    async def serve(self, link: Link, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one executor link until it closes; then kill what still runs."""
        self.fn_bytes.clear()  # function ids are per executor connection
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._watch_memory)
                task_status.started()
                try:
                    while True:
                        for h, payload in await link.receive():
                            self._on_message(n, link, h, payload)
                except LinkClosed as e:
                    log.warning("worker %s: executor link closed: %s", self.name, e)
                n.cancel_scope.cancel()
        finally:
            for job in list(self.running.values()):
                job.cancelled = True
                if job.runner is not None:
                    job.runner.kill(End.CANCELLED)
            self.running.clear()

    def _on_message(self, n: trio.Nursery, link: Link, h: Any, payload: bytes) -> None:
        t = h[0]
        if t == Msg.RUN:
            limits = h[4]
            job = RunningJob(int(h[1]), limits[1])
            self.running[job.gid] = job
            n.start_soon(self._run, link, job, h, payload)
        elif t == Msg.FUNCTION:
            self.fn_bytes[int(h[1])] = payload
        elif t == Msg.KILL:
            job = self.running.get(int(h[1]))
            if job is not None:
                job.cancelled = True
                if job.runner is not None:
                    job.runner.kill(End.CANCELLED)
        elif t == Msg.FORGET_FN:
            self.fn_bytes.pop(int(h[1]), None)
        elif t == Msg.STATUS:
            pass
        else:
            log.warning("worker %s: unexpected message type %r", self.name, t)

    def _env_for(self, alloc_wire: Any) -> tuple[list[int] | None, dict[str, str]]:
        key = repr(alloc_wire)
        cached = self._env_cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        kinds = from_wire(alloc_wire, strict=False).kinds()
        cores = kinds.get("Cores")
        cpus = self.inventory.real_cpus(cores.c) if cores is not None and cores.c else None
        gpu = kinds.get("GPU")
        out = (cpus, job_env(cpus, sorted(gpu.g) if gpu is not None else None))
        if len(self._env_cache) < 4096:
            self._env_cache[key] = out  # type: ignore[assignment]
        return out

    async def _run(self, link: Link, job: RunningJob, h: Any, payload: bytes) -> None:
        gid, alloc_wire, gfn, limits = job.gid, h[2], int(h[3]), h[4]
        runner: RunnerProcess | None = None
        reply: tuple[list[Any], bytes] | None = None
        try:
            cpus, env = self._env_for(alloc_wire)
            runner = job.runner = await self.pool.acquire()
            if job.cancelled:
                return
            msgs: list[Any] = []
            if gfn not in runner.fns:
                fn = self.fn_bytes.get(gfn)
                if fn is None:
                    reply = ([Msg.DONE, gid, int(End.SERIALIZATION),
                              f"function {gfn} was never sent to worker {self.name}"], b"")
                    return
                msgs.append(([Msg.FUNCTION, gfn], fn))
                runner.fns.add(gfn)
            msgs.append(([Msg.RUN, gid, alloc_wire, gfn, cpus, env, self.name], payload))
            time_limit = limits[0]
            with trio.move_on_after(time_limit) if time_limit else contextlib.nullcontext():
                reply = await runner.call(msgs)
            if reply is None:
                runner.kill(End.TIMEOUT)
                reply = ([Msg.DONE, gid, int(End.TIMEOUT),
                          f"job ran past its time limit of {time_limit:g}s (WTime) and was "
                          f"killed on worker {self.name}"], b"")
        except RunnerDied as e:
            reply = self._death_reply(job, str(e))
        except OSError as e:
            reply = ([Msg.DONE, gid, int(End.CRASHED),
                      f"could not start a runner on worker {self.name}: {e}"], b"")
        except Exception as e:  # a bug here must fail this job, not the worker
            log.exception("worker %s: internal error running job %d", self.name, gid)
            if runner is not None:
                runner.kill(End.CRASHED)
            reply = ([Msg.DONE, gid, int(End.CRASHED),
                      f"internal error on worker {self.name}: {e!r}"], b"")
        finally:
            self.running.pop(gid, None)
            self.jobs_done += 1
            if reply is None or (job.cancelled and reply[0][2] != End.OK):
                reply = ([Msg.DONE, gid, int(End.CANCELLED), "cancelled"], b"")
            with contextlib.suppress(LinkClosed):
                link.send(*reply)
            if runner is not None:
                await self.pool.release(runner, runner.kill_reason is None
                                        and reply[0][2] not in (End.CRASHED, End.TIMEOUT))

    def _death_reply(self, job: RunningJob, why: str) -> tuple[list[Any], bytes]:
        reason = job.runner.kill_reason if job.runner is not None else None
        gid = job.gid
        if reason == End.MEMORY:
            return ([Msg.DONE, gid, int(End.MEMORY),
                     f"job used {job.peak_rss / 1024 ** 2:.0f} MiB, past its Memory request of "
                     f"{job.memory_limit / 1024 ** 3:g} GB (allowed with margin: "
                     f"{memory_allowance(job.memory_limit) / 1024 ** 2:.0f} MiB), and was "
                     f"stopped on worker {self.name}"], b"")
        if reason == End.CANCELLED or job.cancelled:
            return ([Msg.DONE, gid, int(End.CANCELLED), "cancelled"], b"")
        if reason == End.TIMEOUT:
            return ([Msg.DONE, gid, int(End.TIMEOUT), "time limit"], b"")
        return ([Msg.DONE, gid, int(End.CRASHED),
                 f"the process running the job died on worker {self.name}: {why}"], b"")

    async def _watch_memory(self) -> None:
        while True:
            await trio.sleep(self.memory_poll)
            for job in list(self.running.values()):
                if job.memory_limit is None or job.runner is None:
                    continue
                rss = tree_rss(job.runner.pid)
                job.peak_rss = max(job.peak_rss, rss)
                if rss > memory_allowance(job.memory_limit):
                    log.warning("worker %s: job %d over its memory (%d MiB), stopping it",
                                self.name, job.gid, rss // 1024 ** 2)
                    job.runner.kill(End.MEMORY)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total
