"""The executor's status document: what ``/status``, ``grain status`` and the web page show.

Built on demand from the executor's live state (nothing is kept for it on the job path,
except the ``history`` observer's per-second counters). The fields are documented in
docs/interfaces.md. Cost: O(workers + running jobs + users × request shapes), never
O(queued jobs): a million queued jobs are summed per user and shape, not listed.

A core map names each running job by its function (as errors name it), its user and its
client *by name* (``host:pid``). The client's session id is left out on purpose: it is
what a client that lost its connection presents to take its session back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import trio

from .._version import __version__
from ..resource import Resource
from . import history
from .ledger import JobRecord

if TYPE_CHECKING:
    from .core import Executor

#: the most cores listed in the core maps of one document; past it, the remaining
#: workers say ``core_map_truncated`` (a document must stay cheap to build and to send)
CORE_MAP_LIMIT = 8192
#: the stepped builder checks the time every this many running jobs ...
STEP_JOBS = 128
#: ... and lets other tasks run once this long has passed
STEP_SECONDS = 0.002


def describe_request(request: Resource) -> str:
    """A request as people write it: ``Cores(2) & Memory(1.5)``."""
    parts = []
    for kind, p in request.kinds().items():
        if kind == "Cores":
            parts.append(f"Cores({getattr(p, 'N', '?')})")
        elif kind == "Memory":
            parts.append(f"Memory({getattr(p, 'm', 0):g})")
        elif kind == "GPU":
            parts.append(f"GPU({getattr(p, 'G', '?')})")
        elif kind == "WTime":
            parts.append(f"WTime({getattr(p, 'T', '?')})")
        else:
            parts.append(repr(p))
    return " & ".join(parts) or "nothing"


def _ids(alloc: Resource | None, kind: str, attr: str) -> list[int]:
    part = alloc.kinds().get(kind) if alloc is not None else None
    return sorted(getattr(part, attr, ()) or ()) if part is not None else []


def _core_maps(ex: Executor, now: float, out: dict[int, tuple[dict[str, Any], bool]]
               ) -> Iterator[None]:
    """Fill ``out``, per worker id: (core id -> what runs there, truncated). Jobs chained
    behind a running one (waiting on its cores) are counted on that job's entry as
    ``queued_behind``. Yields every ``STEP_JOBS`` jobs: a caller may let others run there
    (it iterates over copies, so the executor may change meanwhile)."""
    budget = CORE_MAP_LIMIT
    n = 0
    for wid, st in list(ex.placement.workers.items()):
        cores: dict[str, Any] = {}
        truncated = False
        for gid in list(st.running):
            n += 1
            if n % STEP_JOBS == 0:
                yield
            rec: JobRecord | None = ex.ledger.jobs.get(gid)
            if rec is None or rec.alloc is None:
                continue
            chain = ex.placement.chain_of(gid)
            if chain is not None and chain[0] > 0:
                continue   # waiting behind another job on the same cores
            ids = rec.alloc.core_ids()
            if len(ids) > budget:
                truncated = True
                continue
            budget -= len(ids)
            s = ex.sessions.get(rec.sess)
            entry = {
                "id": rec.gid,
                "job": rec.name,
                "user": rec.user,
                "session": s.name if s is not None else "",
                "running_s": round(max(0.0, now - rec.started_at), 3),
                "queued_behind": chain[1] - 1 if chain is not None else 0,
            }
            for c in ids:
                cores[str(c)] = entry
        out[wid] = ({k: cores[k] for k in sorted(cores, key=int)}, truncated)


def _queues(ex: Executor, now: float) -> dict[str, list[dict[str, Any]]]:
    """Per user: one entry per request shape with jobs queued, oldest first."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    # O(users × shapes): placement's per-user queues, read through their counts and heads
    for name, request, queued, head in ex.placement.queue_heads():
        rec = ex.ledger.jobs.get(head) if head is not None else None
        out.setdefault(name, []).append((head or 0, {
            "request": describe_request(request),
            "queued": queued,
            "next": rec.name if rec is not None else "",
            "waiting_s": round(max(0.0, now - rec.submitted_at), 3)
            if rec is not None else 0.0,
        }))
    return {name: [e for _, e in sorted(entries, key=lambda x: x[0])]
            for name, entries in out.items()}


def build_status(ex: Executor) -> dict[str, Any]:
    """The JSON document served at /status (fields: docs/interfaces.md), in one go."""
    steps = _build(ex)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            doc: dict[str, Any] = done.value
            return doc


async def build_status_stepped(ex: Executor, step: float = STEP_SECONDS) -> dict[str, Any]:
    """``build_status`` in steps of about ``step`` seconds, letting the executor's other
    tasks run in between (a document over thousands of running jobs takes tens of ms)."""
    steps = _build(ex)
    deadline = time.perf_counter() + step
    while True:
        try:
            next(steps)
        except StopIteration as done:
            doc: dict[str, Any] = done.value
            return doc
        if time.perf_counter() > deadline:
            await trio.lowlevel.checkpoint()
            deadline = time.perf_counter() + step


def _build(ex: Executor) -> Generator[None, None, dict[str, Any]]:
    now = ex.clock()
    hist = history.attach(ex)
    hist.sample_executor(ex)
    maps: dict[int, tuple[dict[str, Any], bool]] = {}
    yield from _core_maps(ex, now, maps)
    workers = []
    tc = fc = 0
    tm = fm = 0.0
    for w in ex.workers.values():
        st = ex.placement.workers.get(w.wid)
        if st is None:
            continue
        stat = st.free.stat()
        cfree, ctot = (int(x) for x in stat.get("Cores", (0, 0)))
        mfree, mtot = stat.get("Memory", (0.0, 0.0))
        tc, fc, tm, fm = tc + ctot, fc + cfree, tm + mtot, fm + mfree
        cmap, truncated = maps.get(w.wid, ({}, False))
        workers.append({
            "name": w.name, "address": w.link.peer,
            "cores_total": ctot, "cores_free": cfree,
            "memory_total_gb": mtot, "memory_free_gb": round(mfree, 3),
            "running_jobs": len(st.running),
            "cpuset": w.info.get("cpuset", []),
            "exclusive_cpuset": bool(w.info.get("exclusive_cpuset", False)),
            "gpus": w.info.get("gpus", []),
            "capacity": repr(st.total),
            "draining": w.draining,
            "core_ids": _ids(st.total, "Cores", "c"),
            "core_map": cmap,
            "core_map_truncated": truncated,
            "connected_s": round(max(0.0, now - w.connected_at), 3),
        })
    users = []
    sessions_of = Counter(s.user for s in ex.sessions.values())
    queues = _queues(ex, now)
    for name, us in sorted(ex.placement.user_stats().items()):
        if not (us.queued or us.running or name in sessions_of):
            continue
        done, failed = hist.user_totals(name)
        users.append({"name": name, "weight": us.weight,
                      "running_jobs": us.running, "queued_jobs": us.queued,
                      "cores_in_use": us.cores, "memory_in_use_gb": round(us.memory, 3),
                      "share": round(us.share, 4),
                      "weighted_share": round(us.weighted_share, 4),
                      "max_cores": us.max_cores, "max_queued": us.max_queued,
                      "finished_jobs": done, "failed_jobs": failed,
                      "sessions": sessions_of.get(name, 0),
                      "queue": queues.get(name, [])})
    led = ex.ledger
    return {
        "version": __version__,
        "name": ex.name,
        "time": round(time.time(), 3),
        "uptime_s": round(time.time() - ex.started_at, 3),
        "queue_length": len(ex.placement),
        "clients": sum(1 for s in ex.sessions.values() if s.link is not None),
        "sessions": len(ex.sessions),
        "running_jobs": sum(len(s.running) for s in ex.placement.workers.values()),
        "cores": {"total": tc, "free": fc},
        "memory_gb": {"total": tm, "free": round(fm, 3)},
        "jobs": {"submitted": led.submitted, "started": led.started,
                 "finished": led.finished, "failed": led.failed,
                 "cancelled": led.cancelled, "retried": led.retried,
                 "handed_back": led.handed_back, "reattached": led.reattached},
        "workers": workers,
        "users": users,
        "recovering": ex.recovery_status(),
        "history": hist.series(),
        "failures": hist.recent_failures(),
    }
