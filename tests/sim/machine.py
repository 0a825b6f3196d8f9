"""The hypothesis state machine: programs and faults against a simulated cluster.

Each rule is one step of a client program (open a wait group, submit, leave the block,
cancel it, start or finish a program) or one fault (a runner crashes, a worker is cut off
or dies and comes back with or without its jobs, the executor restarts, a client is cut
off within or past its grace, a link slows down, a worker drains), or lets mock time pass.
After every step the invariants of ``invariants.check_step`` are checked; ``settle`` heals
every fault and checks that the cluster recovers; ``teardown`` ends every program and
checks that the executor forgets everything.

Objects are picked by index modulo how many there are: shrinking then removes steps and
lowers numbers, and a failing example reads as a short program.
"""

from __future__ import annotations

import sys
from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from grain.resource import Cores, Memory, Resource, WTime
from grain.testing.jobs import JobSpec
from grain.testing.world import SimClient, SimParams, SimWaitGroup, SimWorld

from .driver import Driver
from .invariants import BOUND, Violation, check_client_ends, check_step, fail

SHAPES: dict[str, Resource] = {
    "c1": Cores(1),
    "c2": Cores(2),
    "c1m1": Cores(1) & Memory(1),
    "c1t3": Cores(1) & WTime(3),
    "c4": Cores(4),                   # fits only a 4-core worker
    "c9": Cores(9),                   # fits no worker: unschedulable
}
# what a job does (make_spec); failures are rarer than successes, as in real programs
KINDS = ["ok"] * 6 + ["prints", "temp1", "temp2", "temp_hang", "hang", "raises", "temp9",
                      "crash", "hog"]
SHAPE_MIX = ["c1"] * 5 + ["c2"] * 2 + ["c1m1", "c1t3", "c4", "c9"]
DURATIONS = [0.0, 0.001, 0.05, 0.5, 2.0, 10.0, 30.0]
MAX_JOBS = 80


def make_spec(token: int, kind: str, duration: float, value: int) -> JobSpec:
    return JobSpec(token, duration=duration, value=value, raises=kind == "raises",
                   temp_failures={"temp1": 1, "temp2": 2, "temp9": 9,
                                  "temp_hang": 1}.get(kind, 0),
                   crash=kind == "crash", hang=kind in ("hang", "temp_hang"),
                   prints=3 if kind == "prints" else 0,
                   rss=4 * 1024 ** 3 if kind == "hog" else 0)


params_strategy = st.builds(
    SimParams,
    workers=st.lists(st.sampled_from([(1, 2.0), (2, 4.0), (4, 8.0)]), min_size=1,
                     max_size=3).map(tuple),
    latency=st.sampled_from([0.0, 0.0, 0.001, 0.02]),
    retries=st.sampled_from([0, 1, 2]),
    worker_grace=st.sampled_from([5.0, 30.0]),
    client_grace=st.sampled_from([10.0, 60.0]),
    reconnect_grace=st.sampled_from([10.0, 60.0]),
    wait_for_workers=st.sampled_from([30.0, 600.0]),
)


class ClusterMachine(RuleBasedStateMachine):
    """Programs and faults; the invariants after every step."""

    last_world: SimWorld | None = None
    """The world of the latest example (the failing one, after a failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.d: Driver | None = None
        self.jobs = 0

    # -- helpers -------------------------------------------------------------------------
    @property
    def drv(self) -> Driver:
        assert self.d is not None
        return self.d

    @property
    def world(self) -> SimWorld:
        assert self.d is not None and self.d.world is not None
        return self.d.world

    def live_clients(self) -> list[SimClient]:
        return [c for c in self.world.clients if c.state == "up" and c.session is not None
                and c.session._closed is None]

    def open_groups(self) -> list[SimWaitGroup]:
        return [g for c in self.live_clients() for g in c.wgs
                if not g.done and not g.closing and g.wg is not None]

    def busy(self) -> bool:
        """Jobs are in flight: the moment a fault is worth injecting."""
        w = self.world
        return bool(w.log.executing()) or any(
            t not in w.ends and t not in w.abandoned for t in w.specs)

    def may_break(self) -> bool:
        """A new fault is worth injecting: jobs are in flight, and at most one other part
        is broken now (a cluster broken everywhere at once runs nothing to test)."""
        return self.busy() and len(self.world.faults_active()) < 2

    def pick_worker(self, i: int) -> Any:
        """A worker, one running jobs if there is one (faults matter most there)."""
        ws = self.world.workers
        busy = {r.worker for r in self.world.log.executing()}
        return self.pick([w for w in ws if w.name in busy] or ws, i)

    @staticmethod
    def pick(items: list[Any], i: int) -> Any:
        return items[i % len(items)] if items else None

    # -- the cluster ---------------------------------------------------------------------
    @initialize(params=params_strategy)
    def start(self, params: SimParams) -> None:
        self.d = Driver(params)
        ClusterMachine.last_world = self.d.world
        self.drv.call(lambda w: w.new_client("alice"))

    def teardown(self) -> None:
        if self.d is None:
            return
        try:
            if sys.exc_info()[0] is None:   # a step failed: report that, not the rest
                self.finish_everything()
        finally:
            self.d.close()

    @invariant()
    def invariants_hold(self) -> None:
        if self.d is not None:
            self.drv.run(check_step)

    # -- client programs -----------------------------------------------------------------
    @precondition(lambda self: len(self.world.clients) < 3)
    @rule(user=st.sampled_from(["alice", "bob"]))
    def new_client(self, user: str) -> None:
        if self.world.executor is not None:
            self.drv.call(lambda w: w.new_client(user))

    @rule(i=st.integers(0, 5))
    def open_waitgroup(self, i: int) -> None:
        c = self.pick(self.live_clients(), i)
        if c is not None and sum(not g.done for g in c.wgs) < 3:
            self.drv.call(lambda w: w.open_waitgroup(c))

    @precondition(lambda self: self.jobs < MAX_JOBS)
    @rule(i=st.integers(0, 5), kind=st.sampled_from(KINDS),
          duration=st.sampled_from(DURATIONS), shape=st.sampled_from(SHAPE_MIX),
          n=st.integers(1, 4))
    def submit(self, i: int, kind: str, duration: float, shape: str, n: int) -> None:
        """``n`` jobs alike into a wait group of a client (one is opened if it has none)."""
        c = self.pick(self.live_clients(), i)
        if c is None:
            return
        groups = [g for g in self.open_groups() if g.client is c]
        g = self.pick(groups, i) or self.drv.call(lambda w: w.open_waitgroup(c))

        def go(w: SimWorld) -> None:
            for _ in range(n):
                t = w.next_token()
                w.submit(g, make_spec(t, kind, duration, 1000 + t), SHAPES[shape])
        self.jobs += n
        self.drv.run(go)

    @precondition(lambda self: self.jobs < MAX_JOBS)
    @rule(i=st.integers(0, 5), kind=st.sampled_from(KINDS),
          duration=st.sampled_from(DURATIONS), shape=st.sampled_from(SHAPE_MIX),
          n=st.integers(1, 6))
    def submit_more(self, i: int, kind: str, duration: float, shape: str, n: int) -> None:
        """``submit`` again (rules are drawn alike: programs submit more than they fail)."""
        self.submit(i, kind, duration, shape, n)

    @precondition(lambda self: self.jobs < MAX_JOBS)
    @rule(i=st.integers(0, 5), duration=st.sampled_from([0.0, 0.001, 0.004]),
          n=st.integers(6, 20))
    def submit_sweep(self, i: int, duration: float, n: int) -> None:
        """A sweep of short jobs of one function: once their run time is known, the
        executor chains them behind each other on one allocation."""
        self.submit(i, "ok", duration, "c1", n)

    @rule(i=st.integers(0, 5))
    def close_waitgroup(self, i: int) -> None:
        g = self.pick(self.open_groups(), i)
        if g is not None:
            self.drv.run(lambda w: w.close_waitgroup(g))

    @rule(i=st.integers(0, 5))
    def cancel_waitgroup(self, i: int) -> None:
        groups = [g for c in self.live_clients() for g in c.wgs if not g.done]
        g = self.pick(groups, i)
        if g is not None:
            self.drv.run(lambda w: w.cancel_waitgroup(g))

    @rule(i=st.integers(0, 5))
    def finish_client(self, i: int) -> None:
        """A program whose wait groups are all done returns: goodbye."""
        done = [c for c in self.live_clients() if all(g.done for g in c.wgs)]
        c = self.pick(done, i)
        if c is not None:
            self.drv.call(lambda w: w.finish_client(c))

    # -- time --------------------------------------------------------------------------
    @rule(dt=st.sampled_from([0.0005, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 40.0]))
    def advance(self, dt: float) -> None:
        self.drv.advance(dt)

    @rule(dt=st.sampled_from([0.01, 0.5, 2.0, 10.0]))
    def wait(self, dt: float) -> None:
        """``advance`` again (time passes between most steps of a real program)."""
        self.advance(dt)

    # -- faults ------------------------------------------------------------------------
    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 7))
    def crash_runner(self, i: int) -> None:
        runs = self.world.log.executing()
        r = self.pick(runs, i)
        if r is not None:
            self.drv.run(lambda w: w.crash_runner(r.runner))

    @precondition(lambda self: self.may_break())
    @rule(i=st.integers(0, 2), silent=st.booleans(),
          heal_after=st.sampled_from([0.5, 2.0, 10.0, 60.0, None]))
    def partition_worker(self, i: int, silent: bool, heal_after: float | None) -> None:
        w = self.pick_worker(i)
        self.drv.run(lambda world: world.partition_worker(w, silent, heal_after))

    @precondition(lambda self: self.may_break())
    @rule(i=st.integers(0, 2), restart_after=st.sampled_from([0.0, 1.0, 5.0, 60.0, None]))
    def crash_worker(self, i: int, restart_after: float | None) -> None:
        w = self.pick_worker(i)

        def go(world: SimWorld) -> None:
            world.crash_worker(w)
            if restart_after is not None:
                world.restart_worker(w, restart_after)
        self.drv.run(go)

    @precondition(lambda self: self.may_break())
    @rule(i=st.integers(0, 2), timeout=st.sampled_from([0.0, 1.0, 10.0, 60.0]),
          restart_after=st.sampled_from([1.0, 30.0, None]))
    def drain_worker(self, i: int, timeout: float, restart_after: float | None) -> None:
        w = self.pick_worker(i)

        def go(world: SimWorld) -> None:
            world.drain_worker(w, timeout)
            if restart_after is not None:
                world.restart_worker(w, timeout + world.p.drain_release_wait
                                     + restart_after)
        self.drv.run(go)

    @precondition(lambda self: self.may_break())
    @rule(downtime=st.sampled_from([0.0, 0.5, 3.0, 20.0]))
    def restart_executor(self, downtime: float) -> None:
        def go(world: SimWorld) -> None:
            world.stop_executor()
            world.start_executor(downtime)
        self.drv.run(go)

    @precondition(lambda self: self.may_break())
    @rule(i=st.integers(0, 2), heal_after=st.sampled_from([0.5, 5.0, 30.0, 100.0, None]))
    def partition_client(self, i: int, heal_after: float | None) -> None:
        c = self.pick(self.live_clients(), i)
        if c is not None:
            self.drv.run(lambda w: w.partition_client(c, heal_after))

    @precondition(lambda self: self.may_break())
    @rule(i=st.integers(0, 2))
    def crash_client(self, i: int) -> None:
        c = self.pick(self.live_clients(), i)
        if c is not None:
            self.drv.run(lambda w: w.crash_client(c))

    @precondition(lambda self: self.busy())
    @rule(party=st.integers(0, 5), extra=st.sampled_from([0.05, 0.3, 1.0]),
          duration=st.sampled_from([1.0, 5.0, 20.0]))
    def slow_link(self, party: int, extra: float, duration: float) -> None:
        parties = [f"worker:{w.name}" for w in self.world.workers] + \
            [f"client:{c.name}" for c in self.world.clients]
        p = self.pick(parties, party)
        self.drv.run(lambda w: w.slow_link(p, extra, duration))

    # -- recovery ----------------------------------------------------------------------
    @rule()
    def settle(self) -> None:
        """Heal every fault and wait out every grace: the cluster must recover."""
        d = self.drv
        d.run(lambda w: w.heal_all())
        p = self.world.p
        d.advance(max(p.client_grace, p.worker_grace, p.settle, p.reconnect_grace)
                  + 2 * BOUND)
        d.run(check_settled)

    def finish_everything(self) -> None:
        """Every program leaves its blocks (cancelling what never ends), says goodbye;
        then the executor, the workers and the runners hold nothing."""
        d = self.drv
        self.settle()
        d.run(close_all)
        for _ in range(20):
            if all(g.done for c in self.world.clients for g in c.wgs):
                break
            d.advance(30.0)
        d.run(cancel_all)
        d.advance(2 * BOUND)      # what was cancelled stops while the programs go on
        d.run(check_step)
        d.call(finish_all)
        d.advance(2 * BOUND)
        d.run(check_step)
        d.run(check_forgotten)


def close_all(world: SimWorld) -> None:
    for c in world.clients:
        for g in c.wgs:
            if not g.done:
                world.close_waitgroup(g)


def cancel_all(world: SimWorld) -> None:
    for c in world.clients:
        for g in c.wgs:
            if not g.done:
                world.cancel_waitgroup(g)


async def finish_all(world: SimWorld) -> None:
    for c in list(world.clients):
        await world.finish_client(c)


def check_settled(world: SimWorld) -> None:
    """After every fault healed and every grace passed: nothing the clients stopped
    waiting for (or got a result for) still runs, and the executor holds only the jobs
    of programs that still wait for them."""
    waiting = set()
    for c in world.clients:
        for g in c.wgs:
            if c.state == "up" and not g.done:
                waiting |= {t for t in g.tokens if t not in world.ends}
    for r in world.log.executing():
        if r.token not in waiting:
            why = "ended in its client" if r.token in world.ends else \
                f"abandoned ({world.abandoned.get(r.token)})"
            fail(f"job {r.token} still runs on {r.worker} after the cluster settled, "
                 f"though it {why}: {r}", r.token)
    ex = world.executor
    assert ex is not None
    live = {c.sid for c in world.clients if c.state == "up"}
    for s in ex.sessions.values():
        if s.sess not in live and (s.jobs or s.link is not None):
            fail(f"the executor still holds session {s.sess} of a program that ended: "
                 f"{len(s.jobs)} jobs")


def check_forgotten(world: SimWorld) -> None:
    """Every program ended: every job ended exactly once in its client (or its wait group
    stopped waiting for it), and nobody holds anything any more."""
    check_client_ends(world)
    for c in world.clients:
        for g in c.wgs:
            for t in g.tokens:
                if (t in world.ends) == (t in world.abandoned):
                    fail(f"job {t} of {c.name}/{g.index}: ended {world.ends.get(t)}, "
                         f"abandoned {world.abandoned.get(t)}", t)
    # Known limitation (see test_scenarios): a session known only to an executor that died
    # (before it ended the session, or before a worker away then was back to be told), and
    # that no worker reports a job or result of, is never ended on the workers: a new
    # executor cannot know it, so their idle runners of it stay.
    unknowable = {c.sid for c in world.clients if c.gone_at is not None and any(
        t >= c.connected_at for t in world.executor_stops)}
    ex = world.executor
    assert ex is not None
    if ex.sessions or ex.ledger.jobs or len(ex.placement):
        fail(f"the executor still holds sessions {list(ex.sessions)} and jobs "
             f"{[r.key for r in ex.ledger.jobs.values()]} after every program ended")
    for w in world.workers:
        if w.agent is not None and w.up and (w.agent.running or w.agent.held):
            fail(f"worker {w.name} still holds jobs {list(w.agent.running)} and results "
                 f"{list(w.agent.held)} after every program ended")
        if w.pool is not None and w.up:
            kept = [(r.pid, r.session) for r in w.pool.idle if r.session is not None
                    and r.session not in unknowable]
            if kept:
                fail(f"worker {w.name} keeps idle runners of sessions that ended: {kept}")
    if world.log.executing():
        fail(f"jobs still run after every program ended: {world.log.executing()}")


__all__ = ["ClusterMachine", "Violation"]
