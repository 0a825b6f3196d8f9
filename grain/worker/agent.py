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
import time
from collections import deque
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


@dataclass(eq=False)
class Lane:
    """Jobs sharing one allocation, run in order on one runner: the first runs, the others
    (chained by the executor) wait in the runner's socket and start the moment it ends."""

    jobs: deque[RunningJob]
    runner: RunnerProcess | None = None


@dataclass(slots=True)
class RunningJob:
    """A job this worker was given, from RUN to DONE."""

    gid: int
    gfn: int
    messages: list[Any]            # what goes to the runner (RUN, maybe FUNCTION first)
    time_limit: float | None
    memory_limit: int | None
    cpus: list[int] | None = None
    runner: RunnerProcess | None = None
    lane: Lane | None = None
    started: float | None = None   # when it became its runner's current job
    cancelled: bool = False
    peak_rss: int = 0


class WorkerAgent:
    """Runs the jobs an executor sends over a link. Reusable across reconnects.

    Each busy runner has a queue: its current job, and at most one job the executor
    chained behind it (same cores, to start the moment the first ends). Chained jobs are
    written to the runner's socket at once, so the runner goes straight on to them.
    """

    def __init__(self, name: str, inventory: Inventory, pool: RunnerPool, *,
                 memory_poll: float = 0.2) -> None:
        self.name = name
        self.inventory = inventory
        self.pool = pool
        self.memory_poll = memory_poll
        self.running: dict[int, RunningJob] = {}
        self.lanes: set[Lane] = set()
        self.fn_bytes: dict[int, bytes] = {}
        self._env_cache: dict[Any, tuple[list[int] | None, dict[str, str]]] = {}
        self._deadlines_changed = trio.Event()
        self._chained: dict[RunnerProcess, list[Any]] = {}
        self.jobs_done = 0

    def info(self) -> dict[str, Any]:
        return self.inventory.info(self.name)

    async def serve(self, link: Link, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one executor link until it closes; then kill what still runs."""
        self.fn_bytes.clear()  # function ids are per executor connection
        self._link = link
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                n.start_soon(self._watch_memory)
                n.start_soon(self._watch_time)
                task_status.started()
                try:
                    while True:
                        for h, payload in await link.receive():
                            self._on_message(h, payload)
                        self._flush_chained()
                except LinkClosed as e:
                    log.warning("worker %s: executor link closed: %s", self.name, e)
                n.cancel_scope.cancel()
        finally:
            for job in list(self.running.values()):
                job.cancelled = True
                if job.runner is not None:
                    job.runner.kill(End.CANCELLED)
            self.running.clear()
            self.lanes.clear()

    # -- messages from the executor ------------------------------------------------
    def _on_message(self, h: Any, payload: bytes) -> None:
        t = h[0]
        if t == Msg.RUN:
            self._on_run(h, payload)
        elif t == Msg.FUNCTION:
            self.fn_bytes[int(h[1])] = payload
        elif t == Msg.KILL:
            job = self.running.get(int(h[1]))
            if job is not None:
                job.cancelled = True
                if job.runner is not None and job.started is not None:
                    job.runner.kill(End.CANCELLED)
                # a job still waiting behind another is killed when its turn comes
        elif t == Msg.FORGET_FN:
            self.fn_bytes.pop(int(h[1]), None)
        elif t != Msg.STATUS:
            log.warning("worker %s: unexpected message type %r", self.name, t)

    def _on_run(self, h: Any, payload: bytes) -> None:
        gid, alloc_wire, gfn, limits = int(h[1]), h[2], int(h[3]), h[4]
        after = h[6] if len(h) > 6 else None
        try:
            cpus, env = self._env_for(alloc_wire)
        except Exception as e:  # noqa: BLE001 - a bad allocation fails this job only
            self._reply(gid, End.CRASHED, f"bad allocation on worker {self.name}: {e!r}")
            return
        job = RunningJob(gid, gfn, [([Msg.RUN, gid, alloc_wire, gfn, cpus, env, self.name],
                                     payload)], limits[0], limits[1], cpus)
        self.running[gid] = job
        pred = self.running.get(after) if after is not None else None
        lane = pred.lane if pred is not None else None
        if lane is not None and lane.jobs and lane.jobs[-1] is pred:
            # chained: it goes straight on after its predecessor, on the same runner
            lane.jobs.append(job)
            job.lane = lane
            if lane.runner is not None:   # sent with the rest of this batch
                self._chained.setdefault(lane.runner, []).extend(
                    self._messages_for(lane.runner, job))
            return
        self._open_lane(deque((job,)))

    def _open_lane(self, jobs: deque[RunningJob]) -> None:
        lane = Lane(jobs)
        for job in jobs:
            job.lane = lane
        self.lanes.add(lane)
        self._nursery.start_soon(self._run_lane, lane)

    # -- runners -------------------------------------------------------------------
    def _messages_for(self, runner: RunnerProcess, job: RunningJob) -> list[Any]:
        job.runner = runner
        if job.gfn not in runner.fns:
            fn = self.fn_bytes.get(job.gfn)
            if fn is not None:
                runner.fns.add(job.gfn)
                return [([Msg.FUNCTION, job.gfn], fn), *job.messages]
        return job.messages

    def _flush_chained(self) -> None:
        """One write per runner for all the jobs chained onto it by one batch."""
        if self._chained:
            chained, self._chained = self._chained, {}
            for runner, msgs in chained.items():
                runner.send_soon(msgs, self._nursery)

    async def _run_lane(self, lane: Lane) -> None:
        """Run a lane's jobs, in order, on one runner pinned to their cores."""
        jobs = lane.jobs
        try:
            while jobs and (jobs[0].cancelled or jobs[0].gfn not in self.fn_bytes):
                job = jobs.popleft()
                self._finish(job, [Msg.DONE, job.gid, int(End.CANCELLED), "cancelled"]
                             if job.cancelled else
                             [Msg.DONE, job.gid, int(End.SERIALIZATION),
                              f"function {job.gfn} was never sent to worker {self.name}"])
            if not jobs:
                return
            try:
                runner = await self.pool.acquire(jobs[0].cpus)
            except OSError as e:
                for job in list(jobs):
                    self._finish(job, [Msg.DONE, job.gid, int(End.CRASHED),
                                       f"could not start a runner on worker {self.name}: {e}"])
                return
            if not any(j.gid in self.running for j in jobs):   # link lost meanwhile
                await self.pool.release(runner, True)
                return
            lane.runner = runner
            runner.send_soon([m for job in jobs for m in self._messages_for(runner, job)],
                             self._nursery)
            self._begin(jobs[0])
            await self._drive(lane, runner)
        finally:
            self.lanes.discard(lane)

    def _begin(self, job: RunningJob) -> None:
        job.started = time.monotonic()
        if job.time_limit:
            self._deadlines_changed.set()
        if job.cancelled and job.runner is not None:
            job.runner.kill(End.CANCELLED)

    async def _drive(self, lane: Lane, runner: RunnerProcess) -> None:
        """Read the runner's replies until the lane is empty; handle the runner's death."""
        jobs = lane.jobs
        healthy = False
        try:
            while jobs:
                h, payload = await runner.receive()
                job = jobs.popleft()
                self._finish(job, h, payload)
                if jobs:
                    self._begin(jobs[0])
            healthy = True
        except RunnerDied as e:
            if jobs:
                job = jobs.popleft()
                self._finish(job, *self._death_reply(job, str(e)))
            if jobs:   # chained behind the dead job: on to a fresh runner, same order
                for waiting in jobs:
                    waiting.runner = None
                    waiting.started = None
                self._open_lane(deque(jobs))
                jobs.clear()
        finally:
            lane.runner = None
            await self.pool.release(runner, healthy and runner.kill_reason is None)

    def _finish(self, job: RunningJob, header: Any, payload: bytes = b"") -> None:
        if self.running.pop(job.gid, None) is None:
            return
        self.jobs_done += 1
        if job.cancelled and header[2] != End.OK:
            header, payload = [Msg.DONE, job.gid, int(End.CANCELLED), "cancelled"], b""
        with contextlib.suppress(LinkClosed):
            self._link.send(header, payload)

    def _reply(self, gid: int, end: End, message: str) -> None:
        with contextlib.suppress(LinkClosed):
            self._link.send([Msg.DONE, gid, int(end), message])

    def _env_for(self, alloc_wire: Any) -> tuple[list[int] | None, dict[str, str]]:
        key = repr(alloc_wire)
        cached = self._env_cache.get(key)
        if cached is not None:
            return cached
        kinds = from_wire(alloc_wire, strict=False).kinds()
        cores = kinds.get("Cores")
        cpus = self.inventory.real_cpus(cores.c) if cores is not None and cores.c else None
        gpu = kinds.get("GPU")
        out = (cpus, job_env(cpus, sorted(gpu.g) if gpu is not None else None))
        if len(self._env_cache) < 4096:
            self._env_cache[key] = out
        return out

    def _death_reply(self, job: RunningJob, why: str) -> tuple[list[Any], bytes]:
        reason = job.runner.kill_reason if job.runner is not None else None
        gid = job.gid
        if reason == End.MEMORY:
            return ([Msg.DONE, gid, int(End.MEMORY),
                     f"job used {job.peak_rss / 1024 ** 2:.0f} MiB, past its Memory request of "
                     f"{job.memory_limit / 1024 ** 3:g} GB (allowed with margin: "
                     f"{memory_allowance(job.memory_limit) / 1024 ** 2:.0f} MiB), and was "
                     f"stopped on worker {self.name}"], b"")
        if reason == End.TIMEOUT:
            return ([Msg.DONE, gid, int(End.TIMEOUT),
                     f"job ran past its time limit of {job.time_limit:g}s (WTime) and was "
                     f"killed on worker {self.name}"], b"")
        if reason == End.CANCELLED or job.cancelled:
            return ([Msg.DONE, gid, int(End.CANCELLED), "cancelled"], b"")
        return ([Msg.DONE, gid, int(End.CRASHED),
                 f"the process running the job died on worker {self.name}: {why}"], b"")

    # -- limits --------------------------------------------------------------------
    def _current_jobs(self) -> list[RunningJob]:
        return [lane.jobs[0] for lane in self.lanes
                if lane.runner is not None and lane.jobs and lane.jobs[0].started is not None]

    async def _watch_time(self) -> None:
        """Kill jobs past their WTime; sleeps until the next deadline (no polling)."""
        while True:
            now = time.monotonic()
            nearest = None
            for job in self._current_jobs():
                if not job.time_limit or job.runner is None:
                    continue
                due = job.started + job.time_limit
                if due <= now:
                    job.runner.kill(End.TIMEOUT)
                elif nearest is None or due < nearest:
                    nearest = due
            self._deadlines_changed = trio.Event()
            with trio.move_on_after(nearest - now if nearest is not None else 3600):
                await self._deadlines_changed.wait()

    async def _watch_memory(self) -> None:
        while True:
            await trio.sleep(self.memory_poll)
            for job in self._current_jobs():
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
