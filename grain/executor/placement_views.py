"""Placement's read-only views of its queue and running jobs, for sweeps, tests and status
pages. Part of ``Placement``, as a mixin; pure.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Protocol

from ..resource import Resource
from .placement_index import Shape, WorkerState
from .placement_queue import Chain, JobQueue, User


class PlacementViews(Protocol):
    """What these methods read of ``Placement`` (their ``self`` type)."""

    workers: dict[int, WorkerState]
    _run: dict[int, int]
    _queues: list[JobQueue]
    _shapes: dict[Hashable, Shape]
    _users: dict[str, User]
    _chain_of: dict[int, Chain]


class ViewsMixin:
    """What is queued and what runs where (mixed into ``Placement``)."""

    def shapes(self: PlacementViews) -> list[tuple[Resource, list[int]]]:
        """(request, queued ids oldest first) per shape, all users together, for sweeps
        over what is waiting. O(queued): see ``requests`` for the cheap part."""
        return [(s.request, sorted(g for q in s.queues for g in q.ids()))
                for s in self._shapes.values() if any(q.live for q in s.queues)]

    def requests(self: PlacementViews) -> list[tuple[Hashable, Resource]]:
        """(shape, request) per shape with queued jobs: O(shapes)."""
        return [(s.key, s.request) for s in self._shapes.values()
                if any(q.live for q in s.queues)]

    def queued_of(self: PlacementViews, shape: Hashable) -> list[int]:
        """The queued ids of one shape, all users, oldest first."""
        s = self._shapes.get(shape)
        return [] if s is None else sorted(g for q in s.queues for g in q.ids())

    def queues(self: PlacementViews) -> list[tuple[str, Resource, list[int]]]:
        """(user, request, queued ids oldest first) per user and shape."""
        return [(u.name, q.shape.request, q.ids())
                for u in self._users.values() for q in u.queues.values() if q.live]

    def chain_of(self: PlacementViews, gid: int) -> tuple[int, int] | None:
        """(position, length) of the chain job ``gid`` is part of (0: it runs; more:
        it waits behind others on the same allocation), or None when it is not chained."""
        ch = self._chain_of.get(gid)
        if ch is None:
            return None
        return ch.jobs.index(gid) if gid in ch.jobs else 0, len(ch.jobs)

    def queue_heads(self: PlacementViews) -> Iterator[tuple[str, Resource, int, int | None]]:
        """(user, request, jobs queued, the next job's id) per user and shape with jobs
        queued. O(users x shapes)."""
        for u in self._users.values():
            for q in u.queues.values():
                if q.live > 0:
                    yield u.name, q.shape.request, q.live, q.peek()

    def running_on(self: PlacementViews, wid: int) -> Iterator[tuple[int, str]]:
        """(job id, user) of the jobs placed on ``wid``."""
        w = self.workers.get(wid)
        for gid in (w.running if w is not None else ()):
            qn = self._run.get(gid)
            yield gid, self._queues[qn].user.name if qn is not None else ""
