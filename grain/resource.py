"""Resources: what a job requests and what a worker offers.

Pure code (no I/O). Used by the client (requests), the executor (placement) and the
worker (capacity, pinning). Compatible with the original grain's ``grain.resource``:
``Cores``, ``Memory``, ``Node``, ``WTime``, ``ZERO``, ``&`` composition, ``request``/
``alloc``/``dealloc``, ``>=`` and the original reprs.

A ``Resource`` is a composite of *kinds* (one object per kind, keyed by class name).
A request and an allocation have the same shape as a pool, so a pool can ``request`` and
``alloc`` a request and later ``dealloc`` the allocation.

Custom kinds subclass ``Resource``, call ``super().__init__()`` and implement ``_request``,
``_alloc``, ``_dealloc``, ``_repr`` and ``_stat``. They travel to the executor as plain data
(see ``to_wire``): the executor rebuilds them by class from ``kind_registry`` and never
unpickles a client's payload. A kind must therefore be importable by the executor (an
embedded cluster runs in the client's process, so any class works there; a remote executor
imports the modules named by ``--resource-module``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

__all__ = [
    "Resource", "ZERO", "Cores", "Memory", "Node", "WTime", "GPU",
    "res2link0", "to_wire", "from_wire", "kind_registry", "UnknownResourceKind",
    "InvalidResource", "request_from_wire", "capacity_from_wire",
]


class UnknownResourceKind(ValueError):
    """A wire-form resource names a kind this process has not imported."""


class InvalidResource(ValueError):
    """A wire-form resource with a field out of range; the message names the field."""


#: wire name -> class, filled in by ``Resource.__init_subclass__``.
kind_registry: dict[str, type[Resource]] = {}

_BUILTIN_MODULE = __name__


def _wire_name(cls: type) -> str:
    if cls.__module__ == _BUILTIN_MODULE:
        return cls.__qualname__
    return f"{cls.__module__}:{cls.__qualname__}"


class Resource:
    """A (possibly composite) resource. Subclass it to define a kind.

    ``a & b`` combines kinds (the same kind twice raises ``ValueError``); ``pool >= req``
    is ``pool.request(req)``; attributes of the parts (``.c``, ``.N``, ``.m``) are reachable
    on the composite.
    """

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        kind_registry[_wire_name(cls)] = cls

    # -- to be implemented by kinds -------------------------------------------------
    def _request(self, res: Resource) -> bool:
        """True when ``alloc(res)`` would succeed now."""
        raise NotImplementedError

    def _alloc(self, res: Resource) -> Resource:
        """Take ``res`` out of this pool; return the concrete allocation."""
        raise NotImplementedError

    def _dealloc(self, res: Resource) -> None:
        """Give an allocation back."""
        raise NotImplementedError

    def _repr(self) -> str:
        raise NotImplementedError

    def _stat(self) -> tuple[float, float]:
        """(available, total)."""
        return 1, 1

    def _to_wire(self) -> dict[str, Any]:
        """Plain data (msgpack-able) from which ``_from_wire`` rebuilds this kind."""
        return {k: (sorted(v) if isinstance(v, set | frozenset) else v)
                for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def _from_wire(cls, state: dict[str, Any]) -> Resource:
        obj = cls.__new__(cls)
        Resource.__init__(obj)
        for k, v in state.items():
            setattr(obj, k, v)
        return obj

    # -- composite machinery --------------------------------------------------------
    def __init__(self, init: bool = True) -> None:
        if not init:
            self._parts = {}    # a composite, empty until kinds are added

    @property
    def _parts(self) -> dict[str, Resource]:
        """The kinds in this resource, by class name. A composite stores them; a kind is its
        own only part, computed, not stored: a kind naming itself was a reference cycle,
        freed only by the cyclic collector (``grain.executor.heap``)."""
        stored: dict[str, Resource] | None = self.__dict__.get("_parts")
        return stored if stored is not None else {type(self).__name__: self}

    @_parts.setter
    def _parts(self, parts: dict[str, Resource]) -> None:
        self.__dict__["_parts"] = parts

    def __repr__(self) -> str:
        if not self._parts:
            return "Ø"
        return " & ".join(p._repr() for p in self._parts.values())

    def __and__(self, other: Resource) -> Resource:
        if any(k in self._parts for k in other._parts):
            raise ValueError("Combining resources of the same type is not supported")
        r = Resource(init=False)
        r._parts = {**self._parts, **other._parts}
        return r

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr == "_parts":
            raise AttributeError(attr)
        for part in self.__dict__.get("_parts", {}).values():
            if attr in part.__dict__:
                return part.__dict__[attr]
        raise AttributeError(f"Resource object {self} has no attribute {attr}")

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __ge__(self, other: Resource) -> bool:
        return self.request(other)

    def __le__(self, other: Resource) -> bool:
        return other.request(self)

    def __gt__(self, other: Resource) -> bool:
        return not other.request(self)

    def __lt__(self, other: Resource) -> bool:
        return not self.request(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return to_wire(self) == to_wire(other)

    __hash__ = object.__hash__

    def kinds(self) -> dict[str, Resource]:
        """The parts of this resource, by kind name."""
        return dict(self._parts)

    def request(self, res: Resource) -> bool:
        """True when this pool could allocate ``res`` now. A kind the pool lacks: False."""
        parts = self._parts
        for k, v in res._parts.items():
            mine = parts.get(k)
            if mine is None or not mine._request(v):
                return False
        return True

    def alloc(self, res: Resource) -> Resource:
        """Allocate ``res`` from this pool; raises ``ValueError`` when it cannot."""
        if any(k not in self._parts for k in res._parts):
            raise ValueError(f"Cannot alloc: resource {self} does not have the same shape as {res}")
        r = Resource(init=False)
        try:
            for k, v in res._parts.items():
                r &= self._parts[k]._alloc(v)
        except BaseException:  # rewind what was taken
            self.dealloc(r)
            raise
        return r

    def take(self, alloc: Resource) -> None:
        """Take exactly ``alloc`` (an allocation made elsewhere, e.g. reported by a worker
        that reconnects with running jobs) out of this pool; ``ValueError`` when any part
        of it is not free here (nothing is taken then)."""
        if any(k not in self._parts for k in alloc._parts):
            raise ValueError(f"Cannot take: resource {self} does not have the shape of {alloc}")
        taken: list[tuple[Resource, Resource]] = []
        try:
            for k, v in alloc._parts.items():
                self._parts[k]._take(v)
                taken.append((self._parts[k], v))
        except BaseException:
            for part, v in taken:
                part._dealloc(v)
            raise

    def _take(self, res: Resource) -> None:
        """Take exactly ``res``; kinds with identities (cores, GPUs) override this."""
        self._alloc(res)

    def dealloc(self, res: Resource) -> None:
        """Return an allocation made by ``alloc``."""
        if any(k not in self._parts for k in res._parts):
            raise ValueError(f"Cannot dealloc: resource {self} does not have the same shape as {res}")
        for k, v in res._parts.items():
            self._parts[k]._dealloc(v)

    def stat(self) -> dict[str, tuple[float, float]]:
        """{kind: (available, total)}."""
        return {k: v._stat() for k, v in self._parts.items()}


ZERO = Resource(init=False)
"""The empty request: a job asking ``ZERO`` runs in the client, not on a worker."""


def _compact_ranges(ids: set[int]) -> str:
    if not ids:
        return ""
    first, *rest = sorted(ids)
    runs = [[first, first]]
    for x in rest:
        if x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class _IdPool(Resource):
    """A kind made of numbered devices (cores, GPUs): a count to ask, ids to hold.

    Subclasses name their attributes: ``_ids`` (the set of ids) and ``_count``.
    """

    _ids = "ids"
    _count = "n"
    _label = "Ids"
    _unit = "id(s)"

    def __init__(self, n: int | Any) -> None:
        super().__init__()
        if isinstance(n, int):
            if n < 0:
                raise ValueError(f"{type(self).__name__}({n}): the count must be >= 0")
            ids, count = set(range(n)), n
        else:
            ids = {int(x) for x in n}
            count = len(ids)
        setattr(self, self._ids, ids)
        setattr(self, self._count, count)

    def _held(self) -> set[int]:
        held: set[int] = self.__dict__[self._ids]
        return held

    def _repr(self) -> str:
        return f"{self._label}([{_compact_ranges(self._held())}])"

    def _request(self, res: Resource) -> bool:
        want: int = getattr(res, self._count)
        return len(self._held()) >= want

    def _alloc(self, res: Resource) -> Resource:
        want = getattr(res, self._count)
        if not self._request(res):
            raise ValueError(f"{self} cannot allocate {want} {self._unit}")
        held = self._held()
        taken = sorted(held)[:want]
        held.difference_update(taken)
        return type(self)(taken)

    def _dealloc(self, res: Resource) -> None:
        self._held().update(res.__dict__[self._ids])

    def _take(self, res: Resource) -> None:
        ids = res.__dict__[self._ids]
        held = self._held()
        if not ids <= held:
            raise ValueError(f"{self} does not hold {sorted(ids - held)}")
        held.difference_update(ids)

    def _stat(self) -> tuple[float, float]:
        return len(self._held()), getattr(self, self._count)

    def _to_wire(self) -> dict[str, Any]:
        return {self._ids: sorted(self._held()), self._count: getattr(self, self._count)}

    @classmethod
    def _from_wire(cls, state: dict[str, Any]) -> Resource:
        obj = cls(state[cls._ids])
        setattr(obj, cls._count, state[cls._count])
        return obj


class Cores(_IdPool):
    """CPU cores: ``Cores(3)`` asks for three, ``Cores([6, 7, 9])`` names them.

    ``.c`` is the set of core ids, ``.N`` the count. Allocation hands out the lowest free
    ids first, so jobs pack onto neighbouring cores.
    """

    _ids, _count, _label, _unit = "c", "N", "CPU_Cores", "core(s)"


class Memory(Resource):
    """Memory in GB: ``.m`` is what is available (or asked), ``.M`` the total."""

    def __init__(self, M: float) -> None:
        super().__init__()
        if M < 0:
            raise ValueError(f"Memory({M}): the size must be >= 0")
        self.m = M
        self.M = M

    def _repr(self) -> str:
        return f"Memory({self.m}GB)"

    def _request(self, res: Resource) -> bool:
        want: float = res.m
        return self.m >= want

    def _alloc(self, res: Resource) -> Resource:
        if not self._request(res):
            raise ValueError(f"{self} cannot allocate {res}")
        self.m -= res.m
        return Memory(res.m)

    def _dealloc(self, res: Resource) -> None:
        self.m += res.m

    def _stat(self) -> tuple[float, float]:
        return self.m, self.M


def Node(N: int, M: float) -> Resource:  # noqa: N802 - the original's name
    """``Cores(N) & Memory(M)``."""
    return Cores(N) & Memory(M)


def _parse_hms(T: str) -> int:
    *d, h, m, s = map(int, T.replace("-", ":").split(":"))
    return 86400 * (d or [0])[-1] + 3600 * h + 60 * m + s


class WTime(Resource):
    """Wall time. As a request, ``WTime(T)`` is the job's time limit in seconds (or
    ``"[d-]hh:mm:ss"``); ``softT`` (default ``T``) is what placement asks of a worker's
    remaining lifetime. As a capacity, ``WTime(T, countdown=True)`` is a worker's
    remaining lifetime (``math.inf`` for a worker that does not expire).
    """

    def __init__(self, T: float | str, softT: float | str | None = None,
                 countdown: bool = False) -> None:
        super().__init__()
        if isinstance(T, str):
            T = _parse_hms(T)
        if isinstance(softT, str):
            softT = _parse_hms(softT)
        if T <= 0:
            raise ValueError(f"WTime({T}): the time must be > 0")
        self.deadline = time.time() + T if countdown else 0
        self.T = T
        self.softT = softT or T

    def _repr(self) -> str:
        t = self.deadline - time.time() if self.deadline else self.T
        if math.isinf(t):
            return "Walltime(unlimited)"
        t = int(t)
        return f"Walltime({t // 3600:02}:{t % 3600 // 60:02}:{t % 60:02})"

    def _request(self, res: Resource) -> bool:
        want: float = res.softT
        return self.deadline - time.time() >= want

    def _alloc(self, res: Resource) -> Resource:
        if not self._request(res):
            raise ValueError(f"{self} cannot allocate {res}")
        return res

    def _dealloc(self, res: Resource) -> None:
        pass

    def _to_wire(self) -> dict[str, Any]:
        # A deadline is a clock reading; send what is left so other clocks can use it.
        left = self.deadline - time.time() if self.deadline else None
        return {"T": self.T, "softT": self.softT, "left": left}

    @classmethod
    def _from_wire(cls, state: dict[str, Any]) -> Resource:
        obj = cls(state["T"], state["softT"])
        if state.get("left") is not None:
            obj.deadline = time.time() + state["left"]
        return obj


class GPU(_IdPool):
    """GPUs: ``GPU(2)`` asks for two devices, ``GPU([0, 1])`` names them.

    ``.g`` is the set of device ids, ``.G`` the count. A job given GPUs sees them in
    ``CUDA_VISIBLE_DEVICES``.
    """

    _ids, _count, _label, _unit = "g", "G", "GPU", "GPU(s)"


WirePart = tuple[str, dict[str, Any]]
"""One kind on the wire: its name and its state (a msgpack array of two)."""


def to_wire(res: Resource) -> list[WirePart]:
    """Plain, msgpack-able form: ``[(kind_name, state), ...]``."""
    return [(_wire_name(type(p)), p._to_wire()) for p in res._parts.values()]


class _OpaqueKind(Resource):
    """Stand-in for a kind this process cannot import: its state as attributes."""

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        super().__init__()
        self._name = name
        for k, v in state.items():
            setattr(self, k, v)

    def _repr(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self._name.rpartition(':')[2]}({fields})"


def from_wire(data: Iterable[WirePart | list[Any]], strict: bool = True) -> Resource:
    """Rebuild a resource from ``to_wire`` output, by registered kind.

    An unknown kind raises ``UnknownResourceKind``; with ``strict=False`` it becomes a
    stand-in whose attributes are its state (enough for ``GVAR.res`` inside a job).
    """
    r = Resource(init=False)
    for name, state in data:
        cls = kind_registry.get(name)
        if cls is None and not strict:
            r._parts[name.rpartition(":")[2]] = _OpaqueKind(name, state)
            continue
        if cls is None:
            raise UnknownResourceKind(
                f"unknown resource kind {name!r}: import the module that defines it in the "
                f"executor and the workers (grain executor --resource-module MODULE)")
        part = cls._from_wire(state)
        r._parts[type(part).__name__] = part
    return r


def res2link0(res: Resource) -> str:
    """Gaussian link0 lines for an allocation (the original's helper)."""
    s = ""
    if getattr(res, "c", set()):
        s += f"%CPU={','.join(map(str, sorted(res.c)))}\n"
    if getattr(res, "m", 0):
        s += f"%Mem={res.m}GB\n"
    return s


# -- checking what peers send ----------------------------------------------------------------
MAX_IDS = 65536
MAX_MEMORY_GB = float(2 ** 40)
MAX_SECONDS = 10.0 ** 9


def _count(state: dict[str, Any], key: str, kind: str, lo: int) -> int:
    v = state.get(key)
    if type(v) is not int or not lo <= v <= MAX_IDS:
        raise InvalidResource(f"{kind}.{key} must be an integer from {lo} to {MAX_IDS}, "
                              f"got {v!r}")
    return v


def _ids(state: dict[str, Any], key: str, kind: str) -> list[int]:
    v = state.get(key)
    if not isinstance(v, list) or len(v) > MAX_IDS or \
            any(type(x) is not int or not 0 <= x < MAX_IDS for x in v):
        raise InvalidResource(f"{kind}.{key} must be a list of at most {MAX_IDS} ids from 0 "
                              f"to {MAX_IDS - 1}")
    if len(set(v)) != len(v):
        raise InvalidResource(f"{kind}.{key} lists an id twice")
    return v


def _number(state: dict[str, Any], key: str, kind: str, lo: float, hi: float,
            positive: bool = False, infinite: bool = False) -> float:
    v = state.get(key)
    if infinite and v == math.inf:
        return math.inf
    if not (type(v) is int or type(v) is float) or not math.isfinite(v) \
            or not lo <= v <= hi or (positive and v <= 0):
        raise InvalidResource(f"{kind}.{key} must be a finite number "
                              f"{'> 0' if positive else f'>= {lo:g}'} and <= {hi:g}, got {v!r}")
    return float(v)


def _optional_number(state: dict[str, Any], key: str, kind: str, lo: float,
                     hi: float) -> float | None:
    """``_number`` (infinity allowed), or None when the field is missing or nil."""
    if state.get(key) is None:
        return None
    return _number(state, key, kind, lo, hi, infinite=True)


def _plain(value: Any, depth: int = 0) -> bool:
    """msgpack scalars, and short lists of them (what a custom kind's state may hold)."""
    if value is None or type(value) in (bool, int, str):
        return not isinstance(value, str) or len(value) <= 256
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, list) and depth == 0:
        return len(value) <= 1024 and all(_plain(x, 1) for x in value)
    return False


def request_from_wire(data: Any) -> Resource:
    """A job's request from what a client sent, every field checked.

    Raises ``InvalidResource`` naming the field (counts that are not positive integers,
    NaN or negative sizes, an explicit core list in a request, ...) or
    ``UnknownResourceKind``. A request must ask for at least one core: a job that runs in
    a runner is always pinned and accounted (``ZERO`` jobs run in the client and never
    reach the executor). Cores and GPUs are asked by count: ids in a request are ignored.
    """
    r = _from_checked_wire(data, request=True)
    cores = r._parts.get("Cores")
    if cores is None or cores.N < 1:
        raise InvalidResource("a job must ask for at least Cores(1) (ZERO jobs run in the "
                              "client and are never sent)")
    return r


def capacity_from_wire(data: Any) -> Resource:
    """A worker's registered capacity, every field checked (``InvalidResource``)."""
    r = _from_checked_wire(data, request=False)
    if "Cores" not in r._parts:
        raise InvalidResource("a worker's capacity must include Cores")
    return r


def _from_checked_wire(data: Any, request: bool) -> Resource:
    if not isinstance(data, list) or len(data) > 64:
        raise InvalidResource("a resource must be a list of at most 64 [kind, state] pairs")
    r = Resource(init=False)
    for item in data:
        if not isinstance(item, list | tuple) or len(item) != 2 or \
                not isinstance(item[0], str) or not isinstance(item[1], dict):
            raise InvalidResource("each part of a resource must be [kind name, state map]")
        name, state = item
        part = _checked_part(name, state, request)
        key = type(part).__name__
        if key in r._parts:
            raise InvalidResource(f"the kind {key} appears twice")
        r._parts[key] = part
    return r


def _checked_part(name: str, state: dict[str, Any], request: bool) -> Resource:
    if name in ("Cores", "GPU"):
        cls: type[_IdPool] = Cores if name == "Cores" else GPU
        if request:   # asked by count; which ids is the pool's choice
            return cls(_count(state, cls._count, name, 0))
        ids = _ids(state, cls._ids, name)
        return cls(ids)
    if name == "Memory":
        m = _number(state, "m", name, 0.0, MAX_MEMORY_GB)
        mem = Memory(m if request else _number(state, "M", name, 0.0, MAX_MEMORY_GB))
        mem.m = m
        return mem
    if name == "WTime":
        cap = not request   # a worker's lifetime may be unlimited; a job's limit may not
        t = _number(state, "T", name, 0.0, MAX_SECONDS, positive=True, infinite=cap)
        soft = _number(state, "softT", name, 0.0, MAX_SECONDS, positive=True, infinite=cap)
        left = _optional_number(state, "left", name, -MAX_SECONDS, MAX_SECONDS) \
            if cap else None
        return WTime._from_wire({"T": t, "softT": soft, "left": left})
    cls2 = kind_registry.get(name)
    if cls2 is None:
        raise UnknownResourceKind(
            f"unknown resource kind {name!r}: import the module that defines it in the "
            f"executor and the workers (grain executor --resource-module MODULE)")
    if len(state) > 64 or not all(isinstance(k, str) and len(k) <= 64 and _plain(v)
                                  for k, v in state.items()):
        raise InvalidResource(f"{name}: a custom kind's state must be a small map of plain "
                              f"values")
    try:
        part = cls2._from_wire(state)
        probe = cls2._from_wire(state)
        part._request(probe)   # the kind's own code must be able to read it
    except Exception as e:  # noqa: BLE001 - whatever the kind's code raises: a bad request
        raise InvalidResource(f"{name}: {type(e).__name__}: {e}") from None
    return part
