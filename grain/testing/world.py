"""A whole Grain cluster in one trio run: an executor, worker agents and client sessions
over simulated links, fake runners, and the faults a real cluster meets.

Everything is the production code (``Executor``, ``WorkerAgent``, ``Session``,
``WaitGroup``) except the transport (``sim_links``) and the runner processes
(``fake_runners``). Run it under trio's ``MockClock`` and time is simulated: graces,
parking, backoff, job durations and link latency all follow mock time, so an hour of
faults takes milliseconds, and a run is reproducible.

The world records what the client saw (``ends``: each job's endings; ``abandoned``: jobs
a wait group stopped waiting for) next to the runners' ground truth (``log``), and what
the faults were (``SimWorker.outages``, ``healthy_since``), for invariants to compare.
Its methods are called from inside the trio run; ``tests/sim`` drives it step by step.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import config
from ..client.session import Session
from ..client.waitgroup import WaitGroup
from ..executor.core import Executor
from ..resource import Cores, Memory, Resource, capacity_from_wire
from ..worker.agent import WorkerAgent
from ..worker.inventory import Inventory, build_inventory
from .fake_runners import FakeRunnerPool, RunLog
from .jobs import JobSpec, TempError, sim_job
from .sim_links import SimLink, sim_link_pair

log = logging.getLogger("grain.sim")


@dataclass
class SimParams:
    """The cluster's shape and settings (production defaults unless said otherwise)."""

    workers: tuple[tuple[int, float], ...] = ((2, 4.0),)   # (cores, memory GB) each
    latency: float = 0.0               # one-way delay of every link, seconds
    retries: int = config.RETRIES
    worker_grace: float = config.WORKER_GRACE
    client_grace: float = 60.0         # the executor keeps a lost client's jobs this long
    reconnect_grace: float = 60.0      # a client redials this long
    settle: float = config.RECOVERY_SETTLE
    wait_for_workers: float = config.WAIT_FOR_WORKERS
    temporary_attempts: int = config.TEMPORARY_ATTEMPTS
    sweep_interval: float = 1.0
    memory_poll: float = 0.5
    drain_release_wait: float = 10.0


@dataclass
class ClientEnd:
    """One call of a job's ``on_end`` in its client."""

    at: float
    ok: bool
    value: Any


@dataclass(eq=False)
class SimWorker:
    """A worker machine: its agent and runners live until it crashes or exits."""

    name: str
    cores: int
    memory: float
    inventory: Inventory
    epoch: int = 0                     # bumped by every fault that may lose its jobs
    up: bool = False                   # the machine runs
    net_up: bool = True
    agent: WorkerAgent | None = None
    pool: FakeRunnerPool | None = None
    link: SimLink | None = None        # the agent's end of its executor link
    scope: trio.CancelScope | None = None
    draining: bool = False
    starting: bool = False
    # [start, end|None, kind]: kind is crashed, drained, partition (the executor sees the
    # connection close) or silence (it sees a heartbeat timeout)
    outages: list[list[Any]] = field(default_factory=list)
    drains: list[list[Any]] = field(default_factory=list)    # [start, exit|None]


@dataclass(eq=False)
class SimWaitGroup:
    """A wait group of a client program, open until asked to close (or cancelled)."""

    client: SimClient
    index: int
    wg: WaitGroup | None = None
    tokens: list[int] = field(default_factory=list)     # in submission order
    scope: trio.CancelScope | None = None
    close: trio.Event = field(default_factory=trio.Event)
    closing: bool = False
    done: bool = False
    outcome: str | None = None         # results | error | cancelled | killed
    error: BaseException | None = None
    results: list[Any] | None = None


@dataclass(eq=False)
class SimClient:
    """A client program: one session, its wait groups."""

    name: str
    user: str
    sid: int
    session: SimSession | None = None
    link: SimLink | None = None        # the session's end of its current link
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    net_up: bool = True
    state: str = "up"                  # up | crashed | finished
    wgs: list[SimWaitGroup] = field(default_factory=list)
    outputs: list[tuple[int, bytes]] = field(default_factory=list)
    outages: list[list[Any]] = field(default_factory=list)   # [start, end|None]
    connected_at: float = 0.0          # its latest connection to an executor
    gone_at: float | None = None       # when the program died or finished


class SimSession(Session):
    """The production session, with its jobs' endings and output recorded for the
    invariants (then passed on as they would be)."""

    world: SimWorld

    def submit(self, request: Resource, fn: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any], on_end: Callable[[bool, Any], None],
               **kw: Any) -> int:
        spec = args[0]
        world = self.world

        def ended(ok: bool, value: Any) -> None:
            world.ends.setdefault(spec.token, []).append(ClientEnd(world.now(), ok, value))
            on_end(ok, value)
        sink = kw.pop("on_output", None) or self.default_output

        def output(stream: int, data: bytes, dropped: int) -> None:
            world.outputs.setdefault(spec.token, []).append(data)
            if sink is not None:
                sink(stream, data, dropped)
        cid = super().submit(request, fn, args, kwargs, ended, on_output=output, **kw)
        world.cids[spec.token] = (self.id, cid)
        return cid


class SimWorld:
    """The cluster. Start it with ``await nursery.start(world.run)``."""

    def __init__(self, params: SimParams,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.p = params
        self.now = clock     # the run's clock (a MockClock's reads from any thread)
        self.log = RunLog(clock)
        self.executor: Executor | None = None
        self.executors = 0
        self.workers = [self._worker(i, c, mem) for i, (c, mem) in enumerate(params.workers)]
        self.clients: list[SimClient] = []
        self.ends: dict[int, list[ClientEnd]] = {}
        self.abandoned: dict[int, tuple[float, str]] = {}   # token -> (when, why)
        self.cids: dict[int, tuple[int, int]] = {}          # token -> (session, cid)
        self.outputs: dict[int, list[bytes]] = {}           # token -> what its client got
        self.specs: dict[int, JobSpec] = {}
        self.requests: dict[int, Resource] = {}
        self.slow: dict[str, tuple[float, float]] = {}      # party -> (extra delay, until)
        self.executor_stops: list[float] = []
        self.last_change = 0.0
        self._tokens = itertools.count(1)
        self._sids = itertools.count(1_000)
        self._exec_links: list[SimLink] = []
        self._nursery: trio.Nursery | None = None
        self._exec_scope: trio.CancelScope | None = None
        self._exec_nursery: trio.Nursery | None = None
        self._exec_starting = False

    def _worker(self, i: int, cores: int, memory: float) -> SimWorker:
        inv = build_inventory(Cores(cores) & Memory(memory), cpus=list(range(cores)))
        return SimWorker(f"w{i}", cores, memory, inv)

    # -- running -------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the executor and the workers; run until cancelled."""
        async with trio.open_nursery() as n:
            self._nursery = n
            await n.start(self._executor_main)
            for w in self.workers:
                await n.start(self._worker_main, w)
            task_status.started()
            await trio.sleep_forever()

    def _changed(self) -> None:
        self.last_change = self.now()

    def _delay(self, party: str) -> Callable[[], float]:
        def delay() -> float:
            extra, until = self.slow.get(party, (0.0, 0.0))
            return self.p.latency + (extra if self.now() < until else 0.0)
        return delay

    def _pair(self, party: str) -> tuple[SimLink, SimLink]:
        """A link from ``party`` to the executor: (the party's end, the executor's)."""
        assert self._nursery is not None
        mine, theirs = sim_link_pair(self._nursery, self._delay(party), self._delay(party),
                                     party, "executor")
        self._exec_links = [x for x in self._exec_links if x.closed is None]
        self._exec_links.append(theirs)
        return mine, theirs

    # -- the executor --------------------------------------------------------------------
    async def _executor_main(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        p = self.p
        ex = Executor(retries=p.retries, wait_for_workers=p.wait_for_workers,
                      name=f"executor-{self.executors}", client_grace=p.client_grace,
                      worker_grace=p.worker_grace, settle=p.settle, clock=trio.current_time)
        self.executors += 1
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                self._exec_scope, self._exec_nursery = scope, n
                await n.start(ex.run, p.sweep_interval)
                self.executor = ex
                self._changed()
                task_status.started()
                await trio.sleep_forever()

    def stop_executor(self) -> None:
        """The executor process dies: its connections drop, its state is gone."""
        if self.executor is None:
            return
        self.executor = None
        self.executor_stops.append(self.now())
        assert self._exec_scope is not None
        self._exec_scope.cancel()
        for link in self._exec_links:
            link.cut("the executor died")
        self._exec_links = []
        self._changed()

    def start_executor(self, after: float = 0.0) -> None:
        """A new executor (empty) on the same address, ``after`` seconds from now."""
        async def later() -> None:
            await trio.sleep(after)
            if self.executor is None and not self._exec_starting:
                self._exec_starting = True
                try:
                    assert self._nursery is not None
                    await self._nursery.start(self._executor_main)
                finally:
                    self._exec_starting = False
        assert self._nursery is not None
        self._nursery.start_soon(later)

    # -- workers -------------------------------------------------------------------------
    async def _worker_main(self, w: SimWorker,
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                w.scope = scope
                pool = FakeRunnerPool(w.name, self.log, n, lambda: w.epoch)
                # FakeRunnerPool is RunnerPool's policy over simulated runners (which
                # stand in for RunnerProcess, duck-typed)
                agent = WorkerAgent(w.name, w.inventory, pool,  # type: ignore[arg-type]
                                    memory_poll=self.p.memory_poll,
                                    clock=trio.current_time,
                                    jid_seed=f"{w.name}/{w.epoch}")
                w.agent, w.pool, w.up, w.draining = agent, pool, True, False
                await n.start(agent.run)
                n.start_soon(pool.warm, min(w.cores, 2))
                self._changed()
                task_status.started()
                await self._dial(w)

    async def _dial(self, w: SimWorker) -> None:
        """The worker's side of ``serve_dialing``: redial with backoff, forever."""
        delay = config.BACKOFF_FIRST
        while True:
            ex, n = self.executor, self._exec_nursery
            if w.up and w.net_up and ex is not None and n is not None and w.agent is not None:
                mine, theirs = self._pair(f"worker:{w.name}")
                info = w.agent.info()
                n.start_soon(ex.serve_worker, theirs, info,
                             capacity_from_wire(info["capacity"]))
                w.link = mine
                self._changed()
                delay = config.BACKOFF_FIRST
                await w.agent.serve(mine)
                w.link = None
            await trio.sleep(delay)
            delay = min(delay * 2, config.BACKOFF_MAX)

    def _outage(self, w: SimWorker, kind: str) -> None:
        w.epoch += 1
        if kind != "partition" and w.drains and w.drains[-1][1] is None:
            w.drains[-1][1] = self.now()     # the machine is gone: its drain is over
        if not w.outages or w.outages[-1][1] is not None:
            w.outages.append([self.now(), None, kind])
        elif kind == "crashed":
            # it dies while already cut off: its jobs are lost with it (the outage is a
            # crash, as far as what may run again is concerned)
            w.outages[-1][2] = kind

    def _outage_over(self, w: SimWorker) -> None:
        if w.outages and w.outages[-1][1] is None and w.up and w.net_up:
            w.outages[-1][1] = self.now()

    def crash_worker(self, w: SimWorker, why: str = "crashed") -> None:
        """The worker machine dies with its runners; its connection closes."""
        if not w.up:
            return
        self._outage(w, why)
        w.up = False
        if w.link is not None:
            w.link.cut(f"worker {w.name} {why}")
        assert w.scope is not None
        w.scope.cancel()
        self._changed()

    def restart_worker(self, w: SimWorker, after: float = 0.0) -> None:
        """The same worker (same name and capacity) starts again, with no jobs."""
        async def later() -> None:
            await trio.sleep(after)
            if not w.up and not w.starting:
                w.starting = True
                try:
                    assert self._nursery is not None
                    await self._nursery.start(self._worker_main, w)
                finally:
                    w.starting = False
                self._outage_over(w)
        assert self._nursery is not None
        self._nursery.start_soon(later)

    def partition_worker(self, w: SimWorker, silent: bool, heal_after: float | None) -> None:
        """The worker's network fails (``silent``: its executor sees a heartbeat timeout,
        else a closed connection); its jobs go on. It heals after ``heal_after``."""
        if not w.up or not w.net_up:
            return
        self._outage(w, "silence" if silent else "partition")
        w.net_up = False
        if w.link is not None:
            w.link.cut(f"worker {w.name} unreachable", silent=silent)
        self._changed()
        if heal_after is not None:
            self._later(heal_after, lambda: self.heal_worker(w))

    def heal_worker(self, w: SimWorker) -> None:
        if not w.net_up:
            w.net_up = True
            self._outage_over(w)
            self._changed()

    def drain_worker(self, w: SimWorker, timeout: float) -> None:
        """SIGTERM: the worker drains (``WorkerAgent.drain``), then exits."""
        if not w.up or w.draining or w.agent is None:
            return
        w.draining = True
        w.drains.append([self.now(), None])
        agent = w.agent

        async def drain() -> None:
            await agent.drain(timeout, release_wait=self.p.drain_release_wait)
            if w.agent is agent and w.up:
                if w.link is not None:
                    w.link.close("the worker exits")
                self._outage(w, "drained")
                w.up = False
                assert w.scope is not None
                w.scope.cancel()
                self._changed()
        assert agent._nursery is not None
        agent._nursery.start_soon(drain)

    def crash_runner(self, pid: int) -> bool:
        """A runner process dies by itself (a segfault in the job, the OOM killer)."""
        for w in self.workers:
            if w.pool is not None:
                for r in w.pool.alive:
                    if r.pid == pid:
                        r.crash()
                        return True
        return False

    def _later(self, after: float, fn: Callable[[], None]) -> None:
        async def later() -> None:
            await trio.sleep(after)
            fn()
        assert self._nursery is not None
        self._nursery.start_soon(later)

    # -- clients -------------------------------------------------------------------------
    async def new_client(self, user: str) -> SimClient:
        """A client program starts (the executor must be reachable)."""
        c = SimClient(f"c{len(self.clients)}", user, next(self._sids))
        self.clients.append(c)
        assert self._nursery is not None
        await self._nursery.start(self._client_main, c)
        return c

    async def _client_main(self, c: SimClient,
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async def connect(session_id: int, resume: bool) -> SimLink:
            ex, n = self.executor, self._exec_nursery
            if c.state != "up" or not c.net_up or ex is None or n is None:
                raise OSError("the executor is unreachable")
            mine, theirs = self._pair(f"client:{c.name}")
            n.start_soon(ex.serve_client, theirs, c.user,
                         {"name": c.name, "session": session_id, "resume": resume})
            c.link = mine
            c.connected_at = self.now()
            self._changed()
            return mine

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                c.scope, c.nursery = scope, n
                link = await connect(c.sid, False)
                s = SimSession(link, temporary_err=(TempError,),
                               temporary_attempts=self.p.temporary_attempts,
                               connect=connect, reconnect_grace=self.p.reconnect_grace,
                               session_id=c.sid,
                               on_output=lambda stream, data, dropped:
                               c.outputs.append((stream, data)))
                s.world = self
                c.session = s
                n.start_soon(s.run)
                task_status.started()
                await trio.sleep_forever()

    async def open_waitgroup(self, c: SimClient) -> SimWaitGroup:
        g = SimWaitGroup(c, len(c.wgs))
        c.wgs.append(g)
        assert c.nursery is not None
        await c.nursery.start(self._wg_main, g)
        return g

    async def _wg_main(self, g: SimWaitGroup,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        c = g.client
        assert c.session is not None
        try:
            with trio.CancelScope() as g.scope:
                async with WaitGroup(c.session) as wg:
                    g.wg = wg
                    task_status.started()
                    await g.close.wait()
                g.outcome, g.results = "results", list(wg.results)
            if g.outcome is None:
                g.outcome = "cancelled"
        except Exception as e:   # noqa: BLE001 - the group's first failure, as a program sees it
            g.outcome, g.error = "error", e
        finally:
            if g.outcome is None:
                g.outcome = "killed"     # the program itself died
            g.done = True
            why = "cancelled" if g.outcome in ("cancelled", "error") else "client died"
            for t in g.tokens:
                if t not in self.ends and t not in self.abandoned:
                    self.abandoned[t] = (self.now(), why)

    def submit(self, g: SimWaitGroup, spec: JobSpec, request: Resource) -> bool:
        """``wg.submit(request, sim_job, spec)``; False when the client refused it."""
        assert g.wg is not None and not g.done and not g.closing
        try:
            g.wg.submit(request, sim_job, spec)
        except Exception:   # noqa: BLE001 - ExecutorLost: the session gave up
            return False
        g.tokens.append(spec.token)
        self.specs[spec.token] = spec
        self.requests[spec.token] = request
        return True

    def next_token(self) -> int:
        return next(self._tokens)

    def close_waitgroup(self, g: SimWaitGroup) -> None:
        """The program leaves the ``async with`` block: it waits for the group's jobs."""
        g.closing = True
        g.close.set()

    def cancel_waitgroup(self, g: SimWaitGroup) -> None:
        """The program cancels the block (the group's jobs are cancelled)."""
        if g.scope is not None:
            g.scope.cancel()

    def partition_client(self, c: SimClient, heal_after: float | None) -> None:
        if c.state != "up" or not c.net_up:
            return
        c.net_up = False
        c.outages.append([self.now(), None])
        if c.link is not None:
            c.link.cut(f"client {c.name} unreachable", silent=True)
        self._changed()
        if heal_after is not None:
            self._later(heal_after, lambda: self.heal_client(c))

    def heal_client(self, c: SimClient) -> None:
        if not c.net_up:
            c.net_up = True
            c.outages[-1][1] = self.now()
            self._changed()

    def crash_client(self, c: SimClient) -> None:
        """The client program dies (no goodbye): the executor keeps its jobs for the
        client grace, then ends its session."""
        if c.state != "up":
            return
        c.state = "crashed"
        c.gone_at = self.now()
        if c.link is not None:
            c.link.cut(f"client {c.name} died")
        assert c.scope is not None
        c.scope.cancel()
        self._changed()

    async def finish_client(self, c: SimClient) -> None:
        """The program ends as ``run_combine`` ends it: goodbye, then close."""
        if c.state != "up":
            return
        c.state = "finished"
        c.gone_at = self.now()
        s = c.session
        assert s is not None and c.scope is not None
        s.say_goodbye()
        await trio.lowlevel.checkpoint()
        s.close("the program finished")
        c.scope.cancel()

    def slow_link(self, party: str, extra: float, duration: float) -> None:
        self.slow[party] = (extra, self.now() + duration)
        self._changed()
        self._later(duration, self._changed)

    # -- state, for invariants -----------------------------------------------------------
    def faults_active(self) -> list[str]:
        """What is broken now (empty: the cluster is whole)."""
        out = []
        if self.executor is None:
            out.append("executor down")
        for w in self.workers:
            if not w.up or not w.net_up or w.link is None or w.link.closed is not None:
                out.append(f"worker {w.name} away")
        for c in self.clients:
            if c.state == "up" and (not c.net_up or c.link is None
                                    or c.link.closed is not None):
                out.append(f"client {c.name} away")
        now = self.now()
        out += [f"slow {p}" for p, (_, until) in self.slow.items() if now < until]
        return out

    def healthy_since(self) -> float | None:
        """Since when nothing has been broken (None: something is broken now)."""
        return None if self.faults_active() else self.last_change

    def heal_all(self) -> None:
        """End every fault: networks heal, slow links speed up, the executor and dead
        workers start again."""
        if self.executor is None:
            self.start_executor()
        for w in self.workers:
            self.heal_worker(w)
            if not w.up:
                self.restart_worker(w)
        for c in self.clients:
            self.heal_client(c)
        self.slow.clear()
        self._changed()
