"""Placement's side of recovery: jobs found running on a worker that (re)connects are
recorded as placed (``attach``, ``attach_behind`` for jobs chained behind them), and a
draining worker takes nothing new (``cordon``). Part of ``Placement``, as a mixin; pure.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from ..resource import Resource
from .grant import Grant
from .jobtable import JobTable
from .placement_index import CapacityIndex, Shape, WorkerState, shape_of
from .placement_queue import Chain, JobQueue, User


class PlacementHost(Protocol):
    """What these methods use of ``Placement`` (their ``self`` type: mypy checks them
    against it, and ``Placement`` against it wherever one of them is called)."""

    workers: dict[int, WorkerState]
    index: CapacityIndex
    chain_depth: int
    _where: JobTable[int]
    _run: dict[int, int]
    _queues: list[JobQueue]
    _shapes: dict[Hashable, Shape]
    _chain_of: dict[int, Chain]

    def _user(self, name: str) -> User: ...
    def _charge(self, q: JobQueue, sign: int) -> None: ...


class AttachMixin:
    """Recording jobs that placement did not place itself (mixed into ``Placement``)."""

    def cordon(self: PlacementHost, wid: int) -> None:
        """Start nothing new on ``wid`` (it is draining): it leaves the index, so no search
        finds it and no job is chained onto it; its running jobs stay until released."""
        w = self.workers.get(wid)
        if w is not None:
            self.index.remove(w)

    def attach(self: PlacementHost, wid: int, gid: int, alloc: Grant, request: Resource,
               shape: Hashable | None = None, *, user: str = "") -> bool:
        """Record job ``gid`` of ``user`` found running on ``wid`` with exactly ``alloc`` (a
        worker that reconnects reports it); its user is charged for it as for a placed job.
        False (nothing changed) when that allocation is not free there."""
        w = self.workers.get(wid)
        if w is None or gid in w.running or gid in self._where:
            return False
        try:
            w.free.take(alloc.resource())
        except ValueError:
            return False
        w.version += 1
        self.index._reindex(w)
        key = shape_of(request) if shape is None else shape
        sh = self._shapes.get(key)
        if sh is None:
            sh = self._shapes[key] = Shape(key, request)
        u = self._user(user)
        q = u.queues.get(key)
        if q is None:
            q = u.queues[key] = JobQueue(len(self._queues), u, sh, self._where)
            self._queues.append(q)
            sh.queues[q] = None
        w.running.add(gid)
        self._run[gid] = q.qid
        u.running += 1
        self._charge(q, +1)
        if self.chain_depth:   # jobs that were chained behind it re-attach with it
            self._chain_of[gid] = Chain(w.wid, alloc, q, (gid,))
        return True

    def attach_behind(self: PlacementHost, wid: int, gid: int, ahead: int) -> bool:
        """Record job ``gid`` found waiting on ``wid`` behind job ``ahead`` (attached just
        before) on its allocation: chained, as ``chain`` would have made it. False when
        ``ahead`` holds no allocation there."""
        w = self.workers.get(wid)
        ch = self._chain_of.get(ahead)
        if w is None or ch is None or ch.wid != wid or gid in w.running or \
                gid in self._where or ch.jobs[-1] != ahead:
            return False
        ch.jobs += (gid,)
        self._chain_of[gid] = ch
        w.running.add(gid)
        self._run[gid] = ch.queue.qid
        ch.queue.user.running += 1
        return True
