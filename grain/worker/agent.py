"""The worker agent: takes jobs from an executor link and runs them on pinned runners.

It enforces each job's limits: ``WTime`` (the runner is killed when the time is up, even
inside C code) and ``Memory`` (the job's processes are measured every ``memory_poll``
seconds and killed when their RSS passes the request plus the margin). A killed, crashed
or misbehaving runner (garbage on its socket, a result over the size limit) fails its job
and is replaced; the worker itself never goes down with a job.

Jobs outlive the executor connection: when the link is lost, running jobs go on and their
results are kept; when a link comes back (the same executor after a blip, or a restarted
one), the agent reports what it runs and holds (``Attach``) and sends the held results
again. A result is forgotten only when the executor says its client has it (``Release``)
or that the session is over (``EndSession``). On SIGTERM the agent drains: it takes no new
jobs, lets running ones finish for the drain time, then hands the rest back.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import config
from ..errors import ProtocolError
from ..net.link import Link, LinkClosed, handling
from ..protocol import messages as m
from ..protocol.frames import wire_key
from ..protocol.messages import End
from ..resource import from_wire
from .inventory import Inventory
from .output import OutputLimiter
from .runners import RunnerDied, RunnerPool, RunnerProcess

log = logging.getLogger("grain.worker")

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")

Key = tuple[int, int]   # (session, client job id)


def memory_allowance(request_bytes: int) -> int:
    """RSS a job may reach before it is stopped: its request + 10% + 100 MiB (the margin
    covers the runner's own interpreter, ~30-60 MiB)."""
    return int(request_bytes * (1 + config.MEMORY_MARGIN_FRACTION)) + \
        config.MEMORY_MARGIN_BYTES


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
    (chained by the executor) wait in the runner's socket and start the moment it ends.
    The worker takes as many as the executor chains (its placement allows at most
    ``grain.config.CHAIN_DEPTH`` waiting, about ``CHAIN_SHORT_SECONDS`` of work in all); a
    job whose predecessor is no longer the lane's last starts a lane of its own."""

    jobs: deque[Job]
    runner: RunnerProcess | None = None


@dataclass(eq=False)
class Job:
    """A job this worker was given, from Run to Done."""

    sess: int
    cid: int
    fid: int
    user: str
    name: str
    jid: int                       # its id on the runner
    alloc: Any                     # wire form, as the executor sent it
    payload: bytes
    time_limit: float | None
    memory_limit: int | None
    cpus: list[int] | None
    env: dict[str, str]
    received: float
    runner: RunnerProcess | None = None
    lane: Lane | None = None
    started: float | None = None   # when it became its runner's current job
    cancelled: bool = False
    handed_back: bool = False
    session_over: bool = False     # EndSession came: its result is nobody's to hold
    peak_rss: int = 0
    output: OutputLimiter = field(default_factory=OutputLimiter)

    @property
    def key(self) -> Key:
        return self.sess, self.cid


@dataclass
class Held:
    """A result kept until the executor says its client has it."""

    done: m.Done
    payload: bytes
    user: str


class WorkerAgent:
    """Runs the jobs executors send. One agent serves link after link (reconnects)."""

    def __init__(self, name: str, inventory: Inventory, pool: RunnerPool, *,
                 memory_poll: float = config.MEMORY_POLL,
                 clock: Callable[[], float] = time.monotonic,
                 jid_seed: str | None = None) -> None:
        self.name = name
        self.clock = clock          # for job limits and ages; injectable for simulation
        self.inventory = inventory
        self.pool = pool
        self.memory_poll = memory_poll
        self.running: dict[Key, Job] = {}
        self.held: dict[Key, Held] = {}
        self.lanes: set[Lane] = set()
        self.fn_bytes: dict[tuple[int, int], bytes] = {}
        self.bundles: dict[int, str] = {}        # session -> unpacked project code
        # every session that ran a job here and has not ended (its user): idle runners,
        # code and results of it stay until EndSession, which a restarted executor that
        # never knew the session can only send if the Attach names it
        self.kept_sessions: dict[int, str] = {}
        self._killed_for: dict[RunnerProcess, Job] = {}   # the job each kill was meant for
        self._env_cache: dict[bytes, tuple[list[int] | None, dict[str, str]]] = {}
        self._deadlines_changed = trio.Event()
        self._chained: dict[RunnerProcess, list[Any]] = {}
        self._link: Link | None = None
        self._nursery: trio.Nursery | None = None
        # A job's id on its runner is random, not a count: a job can write into its
        # runner's socket, and a message it makes up must not name itself (it would end
        # early, and the runner's true answer would then fail the session's next job).
        # Not a secret: a job that reads it from the runner's memory can only hurt its
        # own session, whose runners are its alone.
        # (``jid_seed``: the same ids on every run, for the deterministic simulation;
        # else seeded from os.urandom)
        self._jid_bits = random.Random(jid_seed).getrandbits
        self._attached_before = False   # see ``Attach.rejoined``
        self._idle = trio.Event()
        self._link_closed = trio.Event()
        self.draining = False
        self.jobs_done = 0

    def info(self) -> dict[str, Any]:
        return self.inventory.info(self.name)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The agent's own tasks (limits, lanes); run for as long as the worker lives."""
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                n.start_soon(self._watch_memory)
                n.start_soon(self._watch_time)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for job in list(self.running.values()):
                job.cancelled = True
                if job.runner is not None:
                    job.runner.kill(End.CANCELLED)

    async def serve(self, link: Link, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one executor link until it closes. Jobs and held results stay."""
        assert self._nursery is not None, "start WorkerAgent.run first"
        self._link = link
        self._link_closed = trio.Event()
        now = self.clock()
        running: list[m.AttachedJob] = []
        for lane in self.lanes:    # in lane order: the running job, then those behind it
            prev: Job | None = None
            for j in lane.jobs:
                if self.running.get(j.key) is not j:
                    continue          # ended already (cancelled while waiting its turn)
                running.append(m.AttachedJob(j.sess, j.cid, j.fid, j.user, j.alloc,
                                             max(0.0, now - j.received), j.name,
                                             prev.cid if prev is not None else None))
                prev = j
        with contextlib.suppress(LinkClosed):
            link.send(m.Attach(
                running, [m.HeldJob(k[0], k[1], h.user) for k, h in self.held.items()],
                [m.KeptSession(sess, user) for sess, user
                 in list(self.kept_sessions.items())[-m.KEPT_SESSIONS_MAX:]],
                rejoined=self._attached_before))
            self._attached_before = True
            for h in self.held.values():
                link.send(h.done, h.payload)
            if self.draining:
                link.send(m.Draining("the worker is shutting down"))
        task_status.started()
        try:
            while True:
                batch = await link.receive()
                with handling():   # replies go out at the end, as one frame
                    for h, payload in batch:
                        try:
                            self._on_message(h, payload)
                        except Exception:  # noqa: BLE001 - a bug must not end the worker
                            log.exception("worker %s: internal error handling %s from the "
                                          "executor (the worker goes on)", self.name,
                                          type(h).__name__)
                    self._flush_chained()
                del batch
        except LinkClosed as e:
            log.warning("worker %s: executor link closed: %s; %d jobs go on, their results "
                        "are kept", self.name, e, len(self.running))
        finally:
            if self._link is link:
                self._link = None
                self._link_closed.set()

    def _send(self, msg: Any, payload: bytes = b"") -> None:
        if self._link is not None:
            with contextlib.suppress(LinkClosed):
                self._link.send(msg, payload)

    # -- messages from the executor ------------------------------------------------
    def _on_message(self, msg: Any, payload: bytes) -> None:
        t = type(msg)
        if t is m.Run:
            self._on_run(msg, payload)
        elif t is m.Function:
            self.fn_bytes[(msg.sess, msg.fid)] = payload
        elif t is m.Kill:
            job = self.running.get((msg.sess, msg.cid))
            if job is not None:
                self._cancel(job)
        elif t is m.Release:
            for cid in msg.cids:
                self.held.pop((msg.sess, cid), None)
            self._check_idle()
        elif t is m.DropFunction:
            self.fn_bytes.pop((msg.sess, msg.fid), None)
        elif t is m.EndSession:
            self._end_session(msg.sess)
        elif t is m.SessionBundle:
            self._unpack_bundle(msg.sess, msg.digest, payload)
        elif t is not m.Status:
            log.warning("worker %s: unexpected %s from the executor", self.name, t.__name__)

    def _kill(self, job: Job, reason: End) -> None:
        """Kill the runner running ``job`` for ``reason``. The runner may have finished
        it already (its reply not read yet) and started the next chained job: that one
        is not what the kill was for, and runs again elsewhere (``_drive``)."""
        runner = job.runner
        if runner is not None:
            if runner.kill_reason is None:
                self._killed_for[runner] = job
            runner.kill(reason)

    def _cancel(self, job: Job) -> None:
        job.cancelled = True
        if job.runner is not None and job.started is not None:
            self._kill(job, End.CANCELLED)
        elif job.started is None:
            # A job waiting behind another ends now: the one ahead may run for hours
            # (or hang), and the program waits for its cancellation. It stays in its lane
            # (its runner may have it already) and is stopped when its turn comes.
            self._finish(job, End.CANCELLED, "cancelled")

    def _end_session(self, sess: int) -> None:
        self.kept_sessions.pop(sess, None)
        for job in [j for j in self.running.values() if j.sess == sess]:
            job.session_over = True
            self._cancel(job)
        for key in [k for k in self.held if k[0] == sess]:
            del self.held[key]
        for key in [k for k in self.fn_bytes if k[0] == sess]:
            del self.fn_bytes[key]
        self.bundles.pop(sess, None)
        if self._nursery is not None:
            self._nursery.start_soon(self.pool.end_session, sess)
        self._check_idle()

    def _unpack_bundle(self, sess: int, digest: str, data: bytes) -> None:
        from .bundles import unpack_bundle
        try:
            self.bundles[sess] = unpack_bundle(digest, data)
        except Exception as e:  # noqa: BLE001 - bytes from a client: a bad zip, a bad CRC,
            # a compression method zipfile does not know... each is that session's problem
            log.warning("worker %s: cannot unpack the project code of session %d: %s: %s",
                        self.name, sess, type(e).__name__, e)

    def _on_run(self, msg: m.Run, payload: bytes) -> None:
        key = (msg.sess, msg.cid)
        if key in self.running:
            # An earlier run of the same job still ends here (a kill in flight): the
            # executor must not count this one as started, or it waits for it for ever.
            self._send(m.Done(msg.sess, msg.cid, int(End.HANDED_BACK),
                              f"an earlier run of this job is still ending on {self.name}"))
            return
        if self.held.pop(key, None) is not None:
            # The executor runs the job again, so it does not want the result of an
            # earlier run any more (a dropped copy; silently ignoring this Run left the
            # job "running" here for ever, holding its cores).
            log.info("worker %s: job %s runs again: its earlier result is dropped",
                     self.name, key)
        if self.draining:
            self._send(m.Done(msg.sess, msg.cid, int(End.HANDED_BACK), "worker draining"))
            return
        try:
            cpus, env = self._env_for(msg.alloc)
        except Exception as e:  # noqa: BLE001 - a bad allocation fails this job only
            self._send(m.Done(msg.sess, msg.cid, int(End.CRASHED),
                              f"bad allocation on worker {self.name}: {e!r}"))
            return
        self.kept_sessions[msg.sess] = msg.user
        job = Job(msg.sess, msg.cid, msg.fid, msg.user, msg.name, self._jid_bits(63),
                  msg.alloc, payload, msg.time_limit, msg.memory_limit, cpus, env, self.clock())
        self.running[key] = job
        pred = self.running.get((msg.sess, msg.after)) if msg.after is not None else None
        lane = pred.lane if pred is not None else None
        if lane is not None and pred is not None and self._last_live(lane) is pred:
            # chained: it goes straight on after its predecessor, on the same runner
            lane.jobs.append(job)
            job.lane = lane
            if lane.runner is not None:   # sent with the rest of this batch
                self._chained.setdefault(lane.runner, []).extend(
                    self._messages_for(lane.runner, job))
            return
        self._open_lane(deque((job,)))

    def _last_live(self, lane: Lane) -> Job | None:
        """The lane's last job that has not ended (those behind it were cancelled while
        waiting: they are stopped at their turn, and a job chained after it goes after
        them)."""
        for job in reversed(lane.jobs):
            if self.running.get(job.key) is job:
                return job
        return None

    def _open_lane(self, jobs: deque[Job]) -> None:
        assert self._nursery is not None
        lane = Lane(jobs)
        for job in jobs:
            job.lane = lane
        self.lanes.add(lane)
        self._nursery.start_soon(self._run_lane, lane)

    # -- runners -------------------------------------------------------------------
    def _messages_for(self, runner: RunnerProcess, job: Job) -> list[Any]:
        job.runner = runner
        out: list[Any] = []
        if job.fid not in runner.fns:
            fn = self.fn_bytes.get((job.sess, job.fid))
            if fn is not None:
                runner.fns.add(job.fid)
                out.append((m.RunnerFunction(job.fid), fn))
        out.append((m.RunnerJob(job.jid, job.fid, job.alloc, job.cpus, job.env, self.name,
                                self.bundles.get(job.sess)), job.payload))
        return out

    def _flush_chained(self) -> None:
        """One write per runner for all the jobs chained onto it by one batch."""
        if self._chained and self._nursery is not None:
            chained, self._chained = self._chained, {}
            for runner, msgs in chained.items():
                runner.send_soon(msgs, self._nursery)

    async def _run_lane(self, lane: Lane) -> None:
        """Run a lane's jobs, in order, on one runner pinned to their cores."""
        jobs = lane.jobs
        try:
            while jobs and (jobs[0].cancelled or jobs[0].handed_back
                            or (jobs[0].sess, jobs[0].fid) not in self.fn_bytes):
                job = jobs.popleft()
                if job.cancelled or job.handed_back:
                    self._finish(job, End.CANCELLED, "cancelled")
                else:
                    self._finish(job, End.SERIALIZATION,
                                 f"function {job.fid} was never sent to worker {self.name}")
            if not jobs:
                return
            try:
                runner = await self.pool.acquire(jobs[0].cpus, jobs[0].sess)
                if self.pool.wants_spares() and self._nursery is not None:
                    self._nursery.start_soon(self.pool.refill)   # for the next session
            except OSError as e:
                for job in list(jobs):
                    self._finish(job, End.CRASHED,
                                 f"could not start a runner on worker {self.name}: {e}")
                return
            if not any(self.running.get(j.key) is j for j in jobs):   # all gone meanwhile
                await self.pool.release(runner, True)
                return
            lane.runner = runner
            assert self._nursery is not None
            runner.send_soon([x for job in jobs for x in self._messages_for(runner, job)],
                             self._nursery)
            self._begin(jobs[0])
            await self._drive(lane, runner)
        finally:
            self.lanes.discard(lane)

    def _begin(self, job: Job) -> None:
        job.started = self.clock()
        job.payload = b""   # the runner has it
        if job.time_limit:
            self._deadlines_changed.set()
        if (job.cancelled or job.handed_back) and job.runner is not None:
            self._kill(job, End.CANCELLED)

    async def _drive(self, lane: Lane, runner: RunnerProcess) -> None:
        """Read the runner's replies until the lane is empty; handle the runner's death,
        or garbage from it, as the current job's failure."""
        jobs = lane.jobs
        healthy = False
        try:
            while jobs:
                msg, payload = await runner.receive()
                job = jobs[0]
                if type(msg) is m.RunnerOutput:
                    if msg.jid == job.jid:
                        self._output(job, msg.stream, payload, msg.dropped)
                    continue
                if msg.jid != job.jid:
                    raise ProtocolError(f"the runner answered for job {msg.jid} while "
                                        f"running {job.jid}")
                jobs.popleft()
                self._finish(job, End(msg.end), msg.message, payload)
                if jobs:
                    self._begin(jobs[0])
            healthy = True
        except (RunnerDied, ProtocolError) as e:
            if isinstance(e, ProtocolError):
                runner.kill(End.CRASHED)
                why = f"its runner sent garbage to the worker ({e}); the runner was killed"
            else:
                why = str(e)
            meant = self._killed_for.get(runner)
            if jobs and (meant is None or meant is jobs[0]):
                job = jobs.popleft()
                self._finish(job, *self._death_reply(job, why))
            elif jobs:
                # the kill was for a job that had ended meanwhile: the current one was not
                # its target. It goes back to the executor to run again (its arguments
                # went to the dead runner), counted as neither a failure nor a retry.
                job = jobs.popleft()
                self._finish(job, End.HANDED_BACK,
                             f"its runner on {self.name} was stopped for another job")
            if jobs:   # chained behind the dead job: on to a fresh runner, same order
                for waiting in jobs:
                    waiting.runner = None
                    waiting.started = None
                self._open_lane(deque(jobs))
                jobs.clear()
        finally:
            lane.runner = None
            self._killed_for.pop(runner, None)
            await self.pool.release(runner, healthy and runner.kill_reason is None)

    def _output(self, job: Job, stream: int, data: bytes, dropped: int) -> None:
        """Relay a job's output, within its budget."""
        sent, dropped = job.output.admit(data, dropped, self.clock())
        if sent or dropped:
            self._send(m.JobOutput(job.sess, job.cid, stream, dropped), sent)

    def _finish(self, job: Job, end: End, message: str, payload: bytes = b"") -> None:
        if self.running.get(job.key) is not job:
            return    # ended already (a later run of the same job may be running here)
        del self.running[job.key]
        self.jobs_done += 1
        if job.handed_back and end is not End.OK:
            end, message, payload = End.HANDED_BACK, "worker draining", b""
        elif job.cancelled and end is not End.OK:
            end, message, payload = End.CANCELLED, "cancelled", b""
        left = job.output.flush_dropped()
        if left:
            self._send(m.JobOutput(job.sess, job.cid, 1, left), b"")
        done = m.Done(job.sess, job.cid, int(end), message)
        # held until Release; but a job that ends after its session did is nobody's
        # (no client will ack it, and the executor has forgotten the session)
        if end is not End.HANDED_BACK and not job.session_over:
            self.held[job.key] = Held(done, payload, job.user)
        self._send(done, payload)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.running and not self.held:
            self._idle.set()

    def _env_for(self, alloc_wire: Any) -> tuple[list[int] | None, dict[str, str]]:
        cached = self._env_cache.get(key := wire_key(alloc_wire))
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

    def _death_reply(self, job: Job, why: str) -> tuple[End, str]:
        reason = job.runner.kill_reason if job.runner is not None else None
        if reason == End.MEMORY and job.memory_limit is not None:
            return (End.MEMORY,
                    f"job used {job.peak_rss / 1024 ** 2:.0f} MiB, past its Memory request of "
                    f"{job.memory_limit / 1024 ** 3:g} GB (allowed with margin: "
                    f"{memory_allowance(job.memory_limit) / 1024 ** 2:.0f} MiB), and was "
                    f"stopped on worker {self.name}")
        if reason == End.TIMEOUT:
            return (End.TIMEOUT,
                    f"job ran past its time limit of {job.time_limit:g}s (WTime) and was "
                    f"killed on worker {self.name}")
        if reason == End.CANCELLED or job.cancelled:
            return End.CANCELLED, "cancelled"
        return End.CRASHED, f"the process running the job died on worker {self.name}: {why}"

    # -- draining --------------------------------------------------------------------
    async def drain(self, timeout: float = config.DRAIN_TIMEOUT,
                    release_wait: float = 10.0) -> None:
        """Stop taking jobs; let running ones finish within ``timeout``; hand the rest back;
        then wait (briefly) for the executor to take the last results."""
        self.draining = True
        self._send(m.Draining("the worker is shutting down"))
        log.info("worker %s draining: %d jobs running, waiting up to %.0fs", self.name,
                 len(self.running), timeout)
        with trio.move_on_after(timeout):
            while self.running:
                self._idle = trio.Event()
                self._check_idle()
                if not self.running:
                    break
                await self._idle.wait()
        if self.running:
            log.warning("worker %s: handing back %d unfinished jobs", self.name,
                        len(self.running))
            for job in list(self.running.values()):
                job.handed_back = True
                if job.runner is not None and job.started is not None:
                    self._kill(job, End.CANCELLED)
        with trio.move_on_after(release_wait):
            while self.running or (self.held and self._link is not None):
                self._idle = trio.Event()
                self._check_idle()
                await self._idle.wait()
        # Goodbye: the executor then queues again, uncounted, any job it sent after this
        # worker stopped taking them (a Run still in flight is never read). It closes
        # the link when it has read the goodbye: wait for that (briefly), so the goodbye
        # is not lost with this process.
        link = self._link
        if link is not None:
            self._send(m.Bye("drained"))
            with trio.move_on_after(release_wait):
                await self._link_closed.wait()

    # -- limits --------------------------------------------------------------------
    def _current_jobs(self) -> list[Job]:
        return [lane.jobs[0] for lane in self.lanes
                if lane.runner is not None and lane.jobs and lane.jobs[0].started is not None]

    async def _watch_time(self) -> None:
        """Kill jobs past their WTime; sleeps until the next deadline (no polling)."""
        while True:
            now = self.clock()
            nearest = None
            for job in self._current_jobs():
                if not job.time_limit or job.runner is None or job.started is None:
                    continue
                due = job.started + job.time_limit
                if due <= now:
                    self._kill(job, End.TIMEOUT)
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
                rss = job.runner.job_rss()
                job.peak_rss = max(job.peak_rss, rss)
                if rss > memory_allowance(job.memory_limit):
                    log.warning("worker %s: job %s over its memory (%d MiB), stopping it",
                                self.name, job.key, rss // 1024 ** 2)
                    self._kill(job, End.MEMORY)

