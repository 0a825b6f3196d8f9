"""What placement gave one running job: a ``Grant``, kept out of the garbage collector's sight.

An allocation as ``Resource.alloc`` makes it is a small graph of objects (the composite, a
``Cores`` and a ``Memory`` part, the set of core ids, the parts' ``__dict__`` once sent, and
then each part's ``_parts`` dict naming the part itself): about nine objects the cyclic
collector tracks, held for as long as the job runs. On 1,000 nodes of 64 cores busy with
60,000 running jobs that was half a million tracked objects, and every full collection
walked them with the event loop stopped, every 2 s (``grain.executor.heap``): half the
executor's busy time (py-spy, ``bench.capacity --window 60000 --job-seconds 60``). And
since each part then named itself, every ended job left cyclic garbage that only the
collector could free (a kind's parts are computed now, ``Resource._parts``).

A ``Grant`` is one object that the collector never tracks (``gc=False``: it refers to no
other grant and nothing it holds refers back): the core ids as a tuple, the memory as a
float. Kinds other than the built-in ``Cores`` and ``Memory`` (GPUs, custom kinds) stay a
``Resource`` in ``rest``, as their kinds allocate them; such jobs are few. ``resource()``
builds the ``Resource`` that ``Resource.alloc`` would have made (tests and status pages
use it), ``wire()`` the same wire form as ``to_wire`` of it, without building it.
"""

from __future__ import annotations

import msgspec

from ..resource import Cores, Memory, Resource, WirePart, to_wire

_CORES, _MEMORY = "Cores", "Memory"    # the built-in kinds' names, on the wire too


class Grant(msgspec.Struct, gc=False, frozen=True):
    """One job's allocation on one worker (see the module's docstring)."""

    cores: tuple[int, ...] | None = None    # the built-in Cores: ids, ascending
    mem: float | None = None                # the built-in Memory: the amount
    rest: Resource | None = None            # every other kind, as it allocated itself

    @classmethod
    def of(cls, alloc: Resource) -> Grant:
        """The grant for an allocation made elsewhere (e.g. reported by a worker)."""
        cores: tuple[int, ...] | None = None
        mem: float | None = None
        rest: dict[str, Resource] = {}
        for name, part in alloc.kinds().items():
            t = type(part)
            if t is Cores and name == _CORES and part.N == len(part.c):
                cores = tuple(sorted(part.c))
            elif t is Memory and name == _MEMORY and part.m == part.M:
                mem = part.m
            else:
                rest[name] = part
        r: Resource | None = None
        if rest:
            r = Resource(init=False)
            r._parts = rest
        return cls(cores, mem, r)

    def resource(self) -> Resource:
        """The allocation as a ``Resource``: what ``Resource.alloc`` gives (Cores first,
        then Memory, then the other kinds)."""
        parts: dict[str, Resource] = {}
        if self.cores is not None:
            parts[_CORES] = Cores(list(self.cores))
        if self.mem is not None:
            parts[_MEMORY] = Memory(self.mem)
        if self.rest is not None:
            parts.update(self.rest.kinds())
        r = Resource(init=False)
        r._parts = parts
        return r

    def wire(self) -> list[WirePart]:
        """``to_wire(self.resource())``, without building the resource."""
        out: list[WirePart] = []
        if self.cores is not None:
            out.append((_CORES, {"c": list(self.cores), "N": len(self.cores)}))
        if self.mem is not None:
            out.append((_MEMORY, {"m": self.mem, "M": self.mem}))
        if self.rest is not None:
            out.extend(to_wire(self.rest))
        return out

    def core_ids(self) -> list[int]:
        """The core ids held, ascending."""
        if self.cores is not None:
            return list(self.cores)
        part = self.rest.kinds().get(_CORES) if self.rest is not None else None
        return sorted(getattr(part, "c", ()) or ())
