"""Runner processes as trio tasks: the interface of ``grain.worker.runners``, in mock time.

``FakeRunnerPool`` and ``FakeRunnerProcess`` stand where ``RunnerPool`` and
``RunnerProcess`` stand for a ``WorkerAgent``: same methods, same attributes, same
failure modes (a runner that dies raises ``RunnerDied`` from ``receive`` once the replies
it sent before dying are read; a killed runner keeps the first ``kill_reason``; jobs queued
behind the current one die with it). A "process" is a task in its worker's nursery, so a
worker that dies takes its runners with it, as ``PR_SET_PDEATHSIG`` does.

A job is data (``jobs.JobSpec``): the runner unpickles its arguments as a real runner does
and plays the spec out: it sleeps the job's duration, prints, returns, raises, crashes or
never ends. Every start and every end is written to the ``RunLog``, the ground truth that
the simulation's invariants read (which job ran where, on which CPUs, from when to when,
and how it ended).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import config
from ..protocol import messages as m
from ..protocol import payload as pl
from ..protocol.frames import Message
from ..protocol.messages import End
from ..resource import from_wire
from ..worker.runners import RunnerDied, RunnerPolicy
from .jobs import JobFailed, JobSpec, TempError

_PIDS = itertools.count(100_000)


@dataclass(eq=False)
class Run:
    """One start of a job on a runner."""

    token: int
    worker: str
    incarnation: int          # the worker's epoch at the start (a fault bumps it)
    runner: int               # the runner's pid
    jid: int
    cpus: tuple[int, ...]
    memory: float             # GB of the job's allocation
    started: float
    ended: float | None = None
    how: str | None = None    # ok, raised, temp, crashed, died, killed:REASON


class RunLog:
    """Every run of every job, keyed by the job's token; which ones are executing now."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.runs: dict[int, list[Run]] = {}
        self._executing: dict[Run, None] = {}

    def begin(self, token: int, worker: str, incarnation: int, runner: int, jid: int,
              cpus: tuple[int, ...], memory: float) -> Run:
        run = Run(token, worker, incarnation, runner, jid, cpus, memory, self.clock())
        self.runs.setdefault(token, []).append(run)
        self._executing[run] = None
        return run

    def end(self, run: Run, how: str) -> None:
        if run.ended is None:
            run.ended, run.how = self.clock(), how
            self._executing.pop(run, None)

    def executing(self) -> list[Run]:
        """Runs started and not ended, in the order they started."""
        return list(self._executing)

    def starts(self, token: int) -> int:
        return len(self.runs.get(token, ()))


def _memory_gb(alloc_wire: Any) -> float:
    mem = from_wire(alloc_wire, strict=False).kinds().get("Memory")
    return float(getattr(mem, "m", 0.0) or 0.0)


class FakeRunnerProcess:
    """One simulated runner: a task that runs the jobs sent to it, one at a time."""

    def __init__(self, pool: FakeRunnerPool) -> None:
        self.pool = pool
        self.pid = next(_PIDS)
        self.fns: set[int] = set()          # the agent's record of what it sent
        self.session: int | None = None
        self.cpus: Any = None
        self.kill_reason: Any = None
        self.current: Run | None = None
        self.dead: str | None = None        # why the process is gone
        self._how = "died"                  # how the current run ends if the process does
        self._loaded: set[int] = set()      # functions the "process" has received
        self._inbox: deque[Message] = deque()
        self._inbox_event = trio.Event()
        self._replies: deque[Message] = deque()
        self._reply_event = trio.Event()
        self._scope = trio.CancelScope()

    # -- the interface the agent uses --------------------------------------------------
    def send_soon(self, messages: list[Message], nursery: trio.Nursery) -> None:
        if self.dead is None:               # a dead runner's socket swallows nothing
            self._inbox.extend(messages)
            self._inbox_event.set()

    async def receive(self) -> Message:
        while not self._replies:
            if self.dead is not None:
                raise RunnerDied(self.dead)
            await self._reply_event.wait()
            self._reply_event = trio.Event()
        return self._replies.popleft()

    def kill(self, reason: Any = None) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        how = f"killed:{End(reason).name}" if reason is not None else "killed"
        self._die(how, "the runner was killed by SIGKILL")

    def job_rss(self) -> int:
        spec = self.pool.specs.get(self.current.token) if self.current is not None else None
        return spec.rss if spec is not None else 0

    async def aclose(self) -> None:
        self.kill()
        await trio.lowlevel.checkpoint()

    # -- faults ------------------------------------------------------------------------
    def crash(self, text: str = "the runner was killed by SIGSEGV") -> None:
        """The process dies by itself (not killed by the worker)."""
        self._die("crashed", text)

    def _die(self, how: str, text: str) -> None:
        if self.dead is None:
            self.dead, self._how = text, how
            self._scope.cancel()
            self._reply_event.set()
            self.pool.gone(self)

    # -- the "process" -----------------------------------------------------------------
    async def main(self) -> None:
        try:
            with self._scope:
                while True:
                    while not self._inbox:
                        await self._inbox_event.wait()
                        self._inbox_event = trio.Event()
                    msg, payload = self._inbox.popleft()
                    t = type(msg)
                    if t is m.RunnerFunction:
                        self._loaded.add(msg.key)
                    elif t is m.RunnerForget:
                        self._loaded.discard(msg.key)
                    elif t is m.RunnerJob:
                        await self._run(msg, payload)
        finally:
            if self.dead is None:           # cancelled from outside: its worker died
                self.dead = "the runner died with its worker"
                self._reply_event.set()
                self.pool.gone(self)
            if self.current is not None:
                self.pool.log.end(self.current, self._how)
                self.current = None

    def _reply(self, msg: Any, payload: bytes = b"") -> None:
        self._replies.append((msg, payload))
        self._reply_event.set()

    async def _run(self, job: m.RunnerJob, payload: bytes) -> None:
        if job.key not in self._loaded:
            self._reply(m.RunnerDone(job.jid, int(End.SERIALIZATION),
                                     f"function {job.key} was never sent to this runner"))
            return
        (spec,), _ = pl.loads(payload)
        assert isinstance(spec, JobSpec)
        pool = self.pool
        pool.specs[spec.token] = spec
        attempt = pool.log.starts(spec.token)
        self.current = pool.log.begin(spec.token, pool.worker, pool.incarnation(), self.pid,
                                      job.jid, tuple(job.cpus or ()), _memory_gb(job.alloc))
        for i in range(spec.prints):
            self._reply(m.RunnerOutput(job.jid, 1), f"job {spec.token} line {i}\n".encode())
        if spec.crash:
            self.crash()
            await trio.lowlevel.checkpoint()
        if attempt >= spec.temp_failures and spec.hang:
            await trio.sleep_forever()
        await trio.sleep(spec.duration)
        if attempt < spec.temp_failures:
            how = "temp"
            msg, data = _error(job.jid, TempError(f"job {spec.token} try {attempt}"))
        elif spec.raises:
            how = "raised"
            msg, data = _error(job.jid, JobFailed(f"job {spec.token} failed"))
        else:
            how, msg, data = "ok", m.RunnerDone(job.jid, int(End.OK)), pl.dumps(spec.value)
        pool.log.end(self.current, how)
        self.current = None
        self._reply(msg, data)


def _error(jid: int, e: BaseException) -> tuple[m.RunnerDone, bytes]:
    """A job's exception as a real runner sends it: pickled (exception, traceback)."""
    return (m.RunnerDone(jid, int(End.RAISED), f"{type(e).__name__}: {e}"),
            pl.dumps((e, f"Traceback (simulated):\n{type(e).__name__}: {e}\n")))


class FakeRunnerPool(RunnerPolicy[FakeRunnerProcess]):
    """The runners of one simulated worker: ``grain.worker.runners.RunnerPool``'s policy
    (the same code: idle runners reused by the session they last served, dead or killed
    ones closed, a session's runners gone with it) over simulated runner processes."""

    def __init__(self, worker: str, log: RunLog, nursery: trio.Nursery,
                 incarnation: Callable[[], int], keep_idle: int = config.KEEP_IDLE_RUNNERS,
                 spares: int = config.WARM_RUNNERS) -> None:
        super().__init__(keep_idle=keep_idle, spares=spares)
        self.worker = worker
        self.log = log
        self.nursery = nursery
        self.incarnation = incarnation
        self.specs: dict[int, JobSpec] = {}
        self.alive: dict[FakeRunnerProcess, None] = {}

    async def spawn(self) -> FakeRunnerProcess:
        r = FakeRunnerProcess(self)
        self.spawned += 1
        self.alive[r] = None
        self.nursery.start_soon(r.main)
        return r

    def usable(self, r: FakeRunnerProcess) -> bool:
        return r.dead is None

    def gone(self, r: FakeRunnerProcess) -> None:
        self.alive.pop(r, None)

    async def aclose(self) -> None:
        everyone = [*self.idle, *self.busy]
        self.idle, self.busy = [], set()
        for r in everyone:
            r.kill()
        await trio.lowlevel.checkpoint()
