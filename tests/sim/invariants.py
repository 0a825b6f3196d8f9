"""What must hold in the simulated cluster, checked after every step and at the end.

Each check reads the world's records (what each client saw, ``world.ends`` and
``world.abandoned``), the runners' ground truth (``world.log``: every start of every job,
where, on which CPUs, and how it ended) and the executor's own state, and raises
``Violation`` naming the job and what went wrong.
"""

from __future__ import annotations

import itertools
from typing import Any

from grain import config, errors
from grain.executor.ledger import JobState
from grain.testing.fake_runners import Run
from grain.testing.jobs import JobFailed, TempError
from grain.testing.world import SimWorker, SimWorld
from grain.worker.agent import memory_allowance

BOUND = 5.0
"""Mock seconds within which a whole, healthy cluster carries a cancellation to the
runner (a few link hops and a sweep)."""


class Violation(AssertionError):
    """An invariant does not hold; ``token`` names the job concerned, if one is."""

    def __init__(self, what: str, token: int | None = None) -> None:
        super().__init__(what)
        self.token = token


def fail(what: str, token: int | None = None) -> None:
    raise Violation(what, token)


def check_step(world: SimWorld) -> None:
    """The invariants that hold at every instant."""
    check_client_ends(world)
    check_runs(world)
    check_cores(world)
    check_cancelled_stop(world)
    check_client_knows_where(world)
    check_output(world)
    check_results(world)
    check_executor(world)


# -- what the client saw -----------------------------------------------------------------
def check_client_ends(world: SimWorld) -> None:
    """Every job ends at most once in its client, never after the client stopped waiting
    for it, and how it ended is explained by what it does and what happened to it."""
    for token, ends in world.ends.items():
        if len(ends) > 1:
            fail(f"job {token} ended {len(ends)} times in its client: {ends}", token)
        gave_up = world.abandoned.get(token)
        if gave_up is not None and ends and ends[0].at >= gave_up[0]:
            fail(f"job {token} ended in its client at {ends[0].at:g} ({ends[0].value!r}), "
                 f"after its wait group stopped waiting for it at {gave_up[0]:g}", token)
        if ends:
            _check_outcome(world, token, ends[0].ok, ends[0].value)


def _check_outcome(world: SimWorld, token: int, ok: bool, value: Any) -> None:
    spec = world.specs[token]
    runs = world.log.runs.get(token, [])
    if ok:
        if value != spec.value or spec.raises or spec.crash or spec.hang:
            fail(f"job {token} ({spec}) returned {value!r}", token)
        return
    request = world.requests[token]
    kinds = request.kinds()
    wtime = kinds.get("WTime")
    mem = kinds.get("Memory")
    faults = any(_faulted_after(world, r) for r in runs)
    explained = {
        JobFailed: spec.raises,
        TempError: any(r.how == "temp" for r in runs),
        errors.RunnerCrashed: any(r.how == "crashed" for r in runs),
        errors.JobTimeout: wtime is not None and (spec.hang or spec.duration >= wtime.T),
        errors.MemoryLimitExceeded: mem is not None
        and spec.rss > memory_allowance(int(mem.m * 1024 ** 3)),
        errors.WorkerLost: faults or any(w.outages for w in world.workers),
        errors.ExecutorLost: _client_gave_up_or_was_given_up(world, token),
        errors.Unschedulable: not any(w.inventory.capacity.request(request)
                                      for w in world.workers)
        or any(w.outages for w in world.workers),
    }
    for cls, why in explained.items():
        if isinstance(value, cls):
            if not why:
                fail(f"job {token} ({spec}, {request}) failed with {value!r}, which "
                     f"nothing that happened explains; its runs: {runs}", token)
            return
    fail(f"job {token} ({spec}) failed with an unexpected {value!r}; its runs: {runs}",
         token)


def _client_gave_up_or_was_given_up(world: SimWorld, token: int) -> bool:
    """Its client's session closed (the executor away past the client's grace), or its
    client was away past the executor's grace (which then ended the session)."""
    sid = world.cids[token][0]
    c = next(c for c in world.clients if c.sid == sid)
    now = world.now()
    return (c.session is not None and c.session._closed is not None) or any(
        (end if end is not None else now) - start >= world.p.client_grace
        for start, end in c.outages)


def _worker(world: SimWorld, name: str) -> SimWorker:
    return next(w for w in world.workers if w.name == name)


def _faulted_after(world: SimWorld, run: Run, until: float | None = None) -> bool:
    """Did the run's worker go away (crash, partition) after the run started, or drain
    while it ran (a job given to a worker before its drain may start after it began)?"""
    w = _worker(world, run.worker)
    end = until if until is not None else float("inf")
    return any(run.started <= start <= end for start, _, _ in w.outages) or \
        any(start <= end and (exit is None or exit >= run.started)
            for start, exit in w.drains)


SLACK = 3.5
"""Mock seconds by which a worker's return may trail the end of its outage (its redial
backoff is at most 2 s) plus the executor's sweep interval."""


def _lost_after(world: SimWorld, run: Run, until: float) -> bool:
    """Was the run's worker *lost* between the run's start and ``until``: it died or
    drained, or it was away longer than the grace the executor gives such a worker? (A
    worker back within its grace keeps its jobs: they are never run again.)"""
    w = _worker(world, run.worker)
    grace = world.p.worker_grace
    for start, end, kind in w.outages:
        # an outage that overlaps the run: one that began as it started counts too (its
        # Run arrived just before the cut)
        if start > until or (end is not None and end < run.started):
            continue
        if kind in ("crashed", "drained"):
            return True
        away = (end if end is not None else world.now()) - start
        wait = grace if kind == "silence" else min(grace, config.CLOSED_WORKER_GRACE)
        if away + SLACK >= wait:
            return True
    return any(start <= until and (exit is None or exit >= run.started)
               for start, exit in w.drains)


# -- what ran where ----------------------------------------------------------------------
def _killed_for_the_job_ahead(world: SimWorld, run: Run, token: str) -> bool:
    """``run`` (of job ``token``) was killed (its runner stopped: for memory, time or a
    cancellation) though the kill was meant for the job that ran on the same runner just
    before it: that job ended the moment ``run`` started (the worker had not read that
    yet), and could have earned such a kill (a job over its memory, one that runs long
    or hangs, one its client cancelled while this one was never cancelled)."""
    reason = run.how.split(":", 1)[1] if run.how else ""
    ahead: tuple[float, int] | None = None      # (when it ended, token), the latest
    for token, runs in world.log.runs.items():
        for r in runs:
            if r is not run and r.runner == run.runner and r.ended is not None \
                    and r.ended <= run.started and (ahead is None or r.ended > ahead[0]):
                ahead = (r.ended, token)
    if ahead is None or ahead[0] != run.started:
        return False
    spec = world.specs[ahead[1]]
    if reason == "MEMORY":
        return spec.rss > 0
    if reason == "TIMEOUT":
        return spec.hang or spec.duration > 0
    if reason == "CANCELLED":
        return ahead[1] in world.abandoned and token not in world.abandoned
    return False


def check_runs(world: SimWorld) -> None:
    """A job never runs twice at once, and never starts again, unless its worker was lost
    (or drained), or its client retried it after a temporary error."""
    for token, runs in world.log.runs.items():
        live = [r for r in runs if r.ended is None and not _faulted_after(world, r)]
        if len(live) > 1:
            fail(f"job {token} is running twice at once on workers that were never lost: "
                 f"{live}", token)
        for prev, nxt in itertools.pairwise(runs):
            if prev.how in ("temp", "died"):
                continue
            if prev.how is not None and prev.how.startswith("killed:") \
                    and _killed_for_the_job_ahead(world, prev, token):
                # the kill was meant for the job chained ahead on that runner, which had
                # just ended there; this one was handed back to run again
                continue
            if _lost_after(world, prev, nxt.started):
                continue
            fail(f"job {token} started again at {nxt.started:g} on {nxt.worker} although "
                 f"its previous run ({prev}) was not lost with its worker", token)
        # A temporary error is one of the client's attempts only if it could reach the
        # client. A run that ended with one while its worker was cut off, the worker then
        # lost (it died, or stayed away past its grace) before the job started again, may
        # have lost its result with it, unseen: the executor then rightly ran the job
        # again as one of its ``retries`` re-runs after a lost worker, not as a temporary
        # attempt (docs/api.md: ``temporary_attempts`` bounds the attempts after
        # temporary errors, ``retries`` the re-runs of a job whose worker was lost). Such
        # runs are not counted (a worker lost right after a temporary error that did
        # reach the client is forgiven too: the check is an upper bound).
        temps = sum(r.how == "temp" and not (nxt is not None
                                             and _lost_after(world, r, nxt.started))
                    for r, nxt in itertools.zip_longest(runs, runs[1:]))
        if temps > world.p.temporary_attempts:
            fail(f"job {token} was retried after {temps} temporary errors, more than its "
                 f"{world.p.temporary_attempts} attempts", token)


def check_client_knows_where(world: SimWorld) -> None:
    """Once the cluster has been whole for ``BOUND``, a client knows where each of its
    running jobs runs (what it names as ``started_on`` when it resubmits after a restart,
    so that the job is re-attached there rather than run again)."""
    healthy = world.healthy_since()
    if healthy is None:
        return
    now = world.now()
    for r in world.log.executing():
        if now - max(r.started, healthy) <= BOUND or _faulted_after(world, r):
            continue
        sid, cid = world.cids.get(r.token, (None, None))
        c = next((c for c in world.clients if c.sid == sid), None)
        job = c.session._jobs.get(cid) if c is not None and c.session is not None \
            and cid is not None else None
        if job is not None and job.worker != r.worker:
            fail(f"job {r.token} runs on {r.worker} since {r.started:g}, but its client "
                 f"believes it started on {job.worker}", r.token)


def check_output(world: SimWorld) -> None:
    """A job that printed and ended while the cluster stayed whole delivered each of its
    lines to its client once, in order, before its result."""
    healthy = world.healthy_since()
    if healthy is None:
        return
    for token, ends in world.ends.items():
        spec = world.specs[token]
        runs = world.log.runs.get(token, [])
        if not spec.prints or not ends or not ends[0].ok or not runs \
                or runs[0].started < healthy:
            continue
        want = [f"job {token} line {i}".encode() for i in range(spec.prints)] * len(runs)
        got = [line for data in world.outputs.get(token, []) for line in data.splitlines()]
        if got != want:
            fail(f"job {token} printed {want} and its client got {got}", token)


def check_cores(world: SimWorld) -> None:
    """No core is ever allocated twice: on each worker, the jobs executing now hold
    disjoint CPUs within its capacity, and memory within its capacity."""
    for w in world.workers:
        runs = [r for r in world.log.executing() if r.worker == w.name]
        seen: dict[int, int] = {}
        for r in runs:
            for cpu in r.cpus:
                if cpu in seen:
                    fail(f"CPU {cpu} of worker {w.name} runs jobs {seen[cpu]} and "
                         f"{r.token} at once")
                if not 0 <= cpu < w.cores:
                    fail(f"job {r.token} runs on CPU {cpu}, not one of worker {w.name}'s")
                seen[cpu] = r.token
        mem = sum(r.memory for r in runs)
        if mem > w.memory + 1e-9:
            fail(f"worker {w.name} runs jobs holding {mem} GB of its {w.memory} GB")


def check_cancelled_stop(world: SimWorld) -> None:
    """A job its client cancelled stops, and its cores return, within ``BOUND`` of the
    cancellation once the cluster is whole. (A program that ended since may have had no
    connection to say so: the executor then learns it when the client's grace ends, which
    ``settle`` and the teardown check.)"""
    healthy = world.healthy_since()
    if healthy is None:
        return
    now = world.now()
    up = {c.sid for c in world.clients if c.state == "up"}
    for token, (at, why) in world.abandoned.items():
        if why != "cancelled" or now - max(at, healthy) <= BOUND \
                or world.cids[token][0] not in up:
            continue
        for r in world.log.runs.get(token, ()):
            if r.ended is None:
                fail(f"job {token} was cancelled at {at:g} and still runs at {now:g} on "
                     f"worker {r.worker}, CPUs {list(r.cpus)}: {r}", token)
        ex = world.executor
        key = world.cids.get(token)
        if ex is not None and key is not None:
            s = ex.sessions.get(key[0])
            if s is not None and key[1] in s.jobs:
                fail(f"job {token} was cancelled at {at:g} and the executor still holds it "
                     f"at {now:g}: {s.jobs[key[1]]}", token)


def check_results(world: SimWorld) -> None:
    """A wait group that finished gives its jobs' values in submission order; one that
    failed raises one of its jobs' errors."""
    for c in world.clients:
        for g in c.wgs:
            if g.outcome == "results":
                want = [world.specs[t].value for t in g.tokens]
                if g.results != want:
                    fail(f"wait group {c.name}/{g.index} gave {g.results}, expected {want}")
            elif g.outcome == "error":
                errs = [e.value for t in g.tokens for e in world.ends.get(t, ())
                        if not e.ok]
                leaves = _leaves(g.error)
                if not all(any(x is e for e in errs) for x in leaves):
                    fail(f"wait group {c.name}/{g.index} raised {g.error!r}, not one of its "
                         f"jobs' errors {errs}")


def _leaves(e: BaseException | None) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in _leaves(sub)]
    return [e] if e is not None else []


# -- the executor's books ----------------------------------------------------------------
def check_executor(world: SimWorld) -> None:
    """The executor's sessions, ledger, placement and recovery agree with each other, and
    each worker's free cores plus the cores of its running jobs are its capacity."""
    ex = world.executor
    if ex is None:
        return
    for s in ex.sessions.values():
        for cid, rec in s.jobs.items():
            if ex.ledger.jobs.get(rec.gid) is not rec or rec.key != (s.sess, cid):
                fail(f"session {s.sess} holds job {cid} ({rec}) that the ledger does not")
    pl = ex.placement
    for rec in ex.ledger.jobs.values():
        owner = ex.sessions.get(rec.sess)
        if owner is None or owner.jobs.get(rec.cid) is not rec:
            fail(f"the ledger holds job {rec.key} ({rec.state}) that no session does")
        if rec.state is JobState.RUNNING:
            ws = pl.workers.get(rec.worker) if rec.worker is not None else None
            if ws is None or rec.gid not in ws.running:
                fail(f"job {rec.key} is RUNNING on worker {rec.worker}, which placement "
                     f"does not know it on")
        elif rec.state is JobState.QUEUED:
            if not pl.is_queued(rec.gid) and rec.gid not in ex.deferred:
                fail(f"job {rec.key} is QUEUED but neither queued nor held back")
        elif rec.gid not in ex.parked.get(rec.parked_on or "", ()):
            fail(f"job {rec.key} is PARKED on {rec.parked_on} but not waiting for it")
    for wid, ws in pl.workers.items():
        held: dict[int, frozenset[int]] = {}    # allocation -> its cores
        for gid in ws.running:
            placed = ex.ledger.jobs.get(gid)
            if placed is None or placed.state is not JobState.RUNNING or placed.worker != wid:
                fail(f"placement has job {gid} running on worker {ws.name}; the ledger "
                     f"says {placed}")
            assert placed is not None and placed.alloc is not None
            chain = pl._chain_of.get(gid)    # chained jobs share one allocation
            held[id(chain) if chain is not None else gid] = frozenset(placed.alloc.core_ids())
        used: set[int] = set()
        for cores in held.values():
            if used & cores:
                fail(f"worker {ws.name}: allocations overlap on {sorted(used & cores)}")
            used |= cores
        free, total = _cores(ws.free), _cores(ws.total)
        if free & used or (free | used) != total:
            fail(f"worker {ws.name}: free cores {sorted(free)} and cores of running jobs "
                 f"{sorted(used)} are not its {sorted(total)}")


def _cores(res: Any) -> frozenset[int]:
    c = res.kinds().get("Cores")
    return frozenset(c.c) if c is not None else frozenset()
