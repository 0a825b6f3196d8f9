"""Pickling of job payloads: stdlib pickle where it works, dill where it must.

stdlib pickle is C-fast on both ends; dill pickles by value what stdlib pickle cannot
(functions and classes of the user's ``__main__``, closures, lambdas). A stdlib pickle that
names ``__main__`` would not load in a runner, so it is redone with dill. Both are loaded
by ``pickle.loads`` (dill's pickles only name importable reconstructors in ``dill._dill``),
so a payload carries no tag and is never copied to add one; dill's own loader is the
fallback.

Two directions, two sets of functions:

- The client sends functions and arguments with ``dumps`` and reads results with
  ``loads``.
- A runner reads them with ``runner_loads``, which remembers every class that arrived *by
  value* from the client's ``__main__``, and sends results and exceptions with
  ``runner_dumps``, which pickles those classes *by reference* (``_from_main("Name")``).
  The client's unpickler resolves the reference to the user's own class, so a job's
  ``Result`` or ``MyError`` comes back as itself (``isinstance``, ``except``, ``==`` and
  ``pickle`` work). Classes defined inside a function (``<locals>`` in their qualified
  name) cannot be named and still go by value.

Objects that cannot be copied meaningfully (locks, open files, sockets, generators, threads,
subprocesses) are refused in both pickling paths with a ``SerializationError`` that names
the object and where it was found: dill would copy a lock or a file silently, and a lock
copied while held deadlocks every job.
"""

from __future__ import annotations

import io
import pickle
import socket
import subprocess
import sys
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from types import FunctionType, ModuleType
from typing import Any

from ..errors import SerializationError

# -- objects that must not be copied into a job ------------------------------------------
_LOCK = "a copied lock protects nothing, and one copied while held blocks every job " \
        "forever; create locks inside the job"
_REFUSED: list[tuple[tuple[type, ...], str, str]] = [
    ((type(threading.Lock()), type(threading.RLock())), "a threading lock", _LOCK),
    ((socket.socket,), "a socket",
     "a connection cannot be copied to another process; open it inside the job"),
    ((subprocess.Popen,), "a subprocess",
     "a process of this program cannot be copied; start it inside the job"),
    ((threading.Thread,), "a thread",
     "a thread of this program cannot be copied; start it inside the job"),
    ((types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType),
     "a generator or coroutine",
     "its running state cannot be copied; pass a list, or what the job needs to make it"),
    ((io.IOBase,), "an open file",
     "an open file cannot be copied to another machine; pass its path and open it in "
     "the job"),
]
_REFUSED_TYPES: tuple[type, ...] = tuple(t for types_, _, _ in _REFUSED for t in types_)
_IN_MEMORY_FILES = (io.BytesIO, io.StringIO)   # copied with their contents: fine
_COPY_BELOW = 16 * 1024       # pickles up to this size are returned as bytes, not a view


class _Refused(Exception):
    """An object that must not be copied was reached while pickling."""

    def __init__(self, obj: Any) -> None:
        super().__init__(obj)
        self.obj = obj


def _refused(obj: Any) -> bool:
    return isinstance(obj, _REFUSED_TYPES) and not isinstance(obj, _IN_MEMORY_FILES)


def _refusal(what: str, root: Any, obj: Any) -> SerializationError:
    desc, advice = next((d, a) for types_, d, a in _REFUSED if isinstance(obj, types_))
    where = _path_to(root, obj)
    if where is None or obj is root:
        return SerializationError(f"cannot pickle {what} {_short_repr(root)}: it is {desc}; "
                                  f"{advice}")
    return SerializationError(f"cannot pickle {what} {_short_repr(root)}: it refers to "
                              f"{desc} {_short_repr(obj)} ({where}); {advice}")


# -- classes of the client's __main__, by reference on the way back ------------------------
_client_classes: weakref.WeakSet[type] = weakref.WeakSet()
"""In a runner: the classes of the client's ``__main__`` that arrived by value. Known by
identity: dill may set a class's ``__qualname__`` only after building it."""


def _nameable(qualname: str) -> bool:
    return all(part.isidentifier() for part in qualname.split("."))


def _remembering(create: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one of dill's class constructors so that the runner remembers the class."""
    def create_and_remember(*args: Any) -> Any:
        cls = create(*args)
        if isinstance(cls, type) and cls.__module__ == "__main__":
            _client_classes.add(cls)
        return cls
    return create_and_remember


_CLASS_MAKERS = {("dill._dill", "_create_type"), ("dill._dill", "_create_namedtuple")}


class _RunnerUnpickler(pickle.Unpickler):
    """The C unpickler, noting the classes dill builds from the client's ``__main__``."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) in _CLASS_MAKERS:
            return _remembering(found)
        return found


def _from_main(qualname: str) -> Any:
    """Reconstructor of a class sent by reference: the class as the runner received it
    (in a runner), or the program's own ``__main__.<name>`` (in the client)."""
    for cls in list(_client_classes):   # in a runner (checking its own reply)
        if cls.__qualname__ == qualname:
            return cls
    obj: Any = sys.modules.get("__main__")
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise pickle.UnpicklingError(
            f"the job's value refers to class {qualname} of the script (__main__), which "
            f"this program does not define") from None
    return obj


def _by_reference(obj: Any) -> Any:
    """``_from_main`` reduction of a class that came from the client's ``__main__``."""
    if isinstance(obj, type) and obj.__module__ == "__main__" and obj in _client_classes \
            and _nameable(obj.__qualname__):
        return _from_main, (obj.__qualname__,)
    return None


# -- the pickler behind both directions --------------------------------------------------
# dill is imported only when a payload needs it (the executor never does, nor a client
# whose jobs are all importable): it costs memory and start-up time, and its import asks
# for a writable temporary directory, which a read-only container may not have.
_DILL_PICKLERS: tuple[type[Any], type[Any]] | None = None


def _dill_picklers() -> tuple[type[Any], type[Any]]:
    """(client pickler, runner pickler): dill, except that importable modules go by
    reference, objects that cannot be copied are refused and (in a runner) classes of the
    client's ``__main__`` go by reference.

    dill pickles every module outside ``sys.prefix`` by value (its whole ``__dict__``),
    which drags the user's local packages, and Grain itself when installed in develop
    mode, into each function. Runners import them instead, as the client does."""
    global _DILL_PICKLERS
    if _DILL_PICKLERS is None:
        import dill
        from dill._dill import _import_module, save_module

        class Pickler(dill.Pickler):  # type: ignore[misc]  # dill has no type information
            dispatch = dill.Pickler.dispatch.copy()
            by_reference = False

            def reducer_override(self, obj: Any) -> Any:
                if _refused(obj):
                    raise _Refused(obj)
                if self.by_reference:
                    ref = _by_reference(obj)
                    if ref is not None:
                        return ref
                return NotImplemented

        class RunnerPickler(Pickler):
            by_reference = True

        def save(pickler: Any, obj: ModuleType) -> None:
            if obj.__name__ != "__main__" and sys.modules.get(obj.__name__) is obj:
                pickler.save_reduce(_import_module, (obj.__name__,), obj=obj)
            else:
                save_module(pickler, obj)

        Pickler.dispatch[ModuleType] = save
        _DILL_PICKLERS = (Pickler, RunnerPickler)
    return _DILL_PICKLERS


def preload() -> None:
    """Import dill now (a runner's idle moment) rather than at the first payload needing
    it."""
    _dill_picklers()


def _dill_loads(data: bytes) -> Any:
    import dill
    return dill.loads(data)


class _NeedsDill(Exception):
    """The object refers to the user's ``__main__``: stdlib pickle would name it by
    reference, and a runner could not import it."""


class _StdPickler(pickle.Pickler):
    """stdlib pickle at C speed, stopping at the first reference into ``__main__`` and at
    the first object that must not be copied.

    ``reducer_override`` sees only objects that are pickled by reduction or by name
    (functions, classes, instances), never ints, strings, bytes or containers, so the
    check costs nothing on bulk data (no scan of the pickled bytes)."""

    by_reference = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | FunctionType):
            module = getattr(obj, "__module__", None)
        else:
            module = type(obj).__module__
            if _refused(obj):
                raise _Refused(obj)
        if module == "__main__":
            if self.by_reference:
                ref = _by_reference(obj)
                if ref is not None:
                    return ref
                if not isinstance(obj, type | FunctionType) \
                        and _by_reference(type(obj)) is not None:
                    return NotImplemented   # its class goes by reference
            raise _NeedsDill
        return NotImplemented


class _StdRunnerPickler(_StdPickler):
    by_reference = True


class TooLarge(SerializationError):
    """A payload grew past its size limit while being pickled."""


class _Capped(io.BytesIO):
    """A buffer that refuses to grow past ``limit`` bytes (pickling stops at once)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, b: Any) -> int:
        if self.tell() + memoryview(b).nbytes > self.limit:
            raise TooLarge(f"over {self.limit} bytes")
        return super().write(b)


_PLAIN = frozenset({type(None), bool, int, float})
"""Types whose pickle needs none of the checks (no reference, nothing refused): a
job's usual small result goes by ``pickle.dumps`` (~1 us instead of ~5)."""


def _dumps(obj: Any, what: str, limit: int | None, std: type[_StdPickler],
           runner: bool) -> bytes:
    if type(obj) in _PLAIN:
        data = pickle.dumps(obj, protocol=5)
        if limit is None or len(data) <= limit:
            return data
    buf = io.BytesIO() if limit is None else _Capped(limit)
    try:
        std(buf, protocol=5).dump(obj)
        if buf.tell() <= _COPY_BELOW:
            # A small pickle is cheaper copied than held as a view (the view keeps the
            # BytesIO and its export alive: ~400 bytes per queued job in the client).
            return buf.getvalue()
        return buf.getbuffer()  # type: ignore[return-value]  # a view: no copy of a big payload
    except (_Refused, TooLarge) as e:
        _raise(e, what, obj, limit)
    except Exception:  # noqa: BLE001, S110 - _NeedsDill or unpicklable: dill pickles more
        pass
    buf = io.BytesIO() if limit is None else _Capped(limit)
    try:
        slow = _dill_picklers()[1 if runner else 0]
        slow(buf, protocol=5, recurse=True).dump(obj)
        return buf.getvalue()
    except (_Refused, TooLarge) as e:
        _raise(e, what, obj, limit)
    except Exception as e:
        raise SerializationError(f"cannot pickle {what} {_short_repr(obj)}: "
                                 f"{type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")


def _raise(e: Exception, what: str, obj: Any, limit: int | None) -> None:
    if isinstance(e, _Refused):
        raise _refusal(what, obj, e.obj) from None
    raise TooLarge(f"{what} is over the size limit of {_size(limit or 0)} when pickled") \
        from None


def dumps(obj: Any, what: str = "object", *, limit: int | None = None) -> bytes:
    """Pickle ``obj`` (the client's side); raise ``SerializationError`` naming ``what``
    when it cannot be, or ``TooLarge`` when its pickle would pass ``limit`` bytes."""
    return _dumps(obj, what, limit, _StdPickler, runner=False)


def loads(data: bytes) -> Any:
    """Inverse of ``dumps`` and ``runner_dumps``."""
    try:
        return pickle.loads(data)
    except Exception as first:  # noqa: BLE001 - dill's loader knows a few more tricks
        try:
            return _dill_loads(data)
        except Exception:  # noqa: BLE001
            raise first from None


class _ViewFile:
    """A read-only file over a buffer, for the unpickler. ``io.BytesIO`` shares a
    ``bytes`` object but copies any other buffer first: a big payload arrives as a view
    of the frame it was received into, and is then read into its objects with no copy
    beside theirs (the unpickler ``readinto``s big ``bytes`` straight from it)."""

    __slots__ = ("_view", "_pos")

    def __init__(self, data: Any) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = len(self._view) if n < 0 else min(start + n, len(self._view))
        self._pos = end
        return bytes(self._view[start:end])

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        n = min(len(out), len(self._view) - self._pos)
        out[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def readline(self) -> bytes:
        # only protocol 0-2 opcodes read lines (the client writes protocol 5): searched
        # a chunk at a time, so a hand-made pickle's long line costs no loop per byte
        view, start = self._view, self._pos
        end = pos = start
        while pos < len(view):
            chunk = bytes(view[pos:pos + 4096])
            nl = chunk.find(b"\n")
            if nl >= 0:
                end = pos + nl + 1
                break
            pos = end = min(pos + 4096, len(view))
        self._pos = end
        return bytes(view[start:end])


def runner_loads(data: bytes) -> Any:
    """``loads`` in a runner: also remembers the classes of the client's ``__main__``
    that arrive by value, so that ``runner_dumps`` can send them back by reference."""
    try:
        src = io.BytesIO(data) if type(data) is bytes else _ViewFile(data)
        return _RunnerUnpickler(src).load()
    except Exception as first:  # noqa: BLE001
        try:
            return _dill_loads(data)
        except Exception:  # noqa: BLE001
            raise first from None


def runner_dumps(obj: Any, what: str = "object", *, limit: int | None = None) -> bytes:
    """``dumps`` in a runner: classes that came from the client's ``__main__`` go back by
    reference, so the client gets its own classes."""
    return _dumps(obj, what, limit, _StdRunnerPickler, runner=True)


# -- naming where a refused object was found ------------------------------------------------
def _path_to(root: Any, target: Any, budget: int = 50_000) -> str | None:
    """Where ``target`` sits inside ``root``, as a readable path (breadth first over
    containers, attributes, and functions' closures, globals and defaults)."""
    seen = {id(root)}
    queue: deque[tuple[Any, str]] = deque([(root, "")])
    while queue and budget > 0:
        obj, path = queue.popleft()
        for child, step in _children(obj):
            budget -= 1
            if child is target:
                return (path + step).lstrip(" →") or "itself"
            if id(child) not in seen and not isinstance(child, str | bytes | int | float):
                seen.add(id(child))
                queue.append((child, path + step))
    return None


def _children(obj: Any) -> Iterator[tuple[Any, str]]:
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:10_000]:
            yield v, f"[{_short_repr(k, 40)}]"
    elif isinstance(obj, list | tuple | set | frozenset | deque):
        for i, v in enumerate(list(obj)[:10_000]):
            yield v, f"[{i}]"
    elif isinstance(obj, FunctionType):
        name = obj.__qualname__
        code_names = _code_names(obj.__code__)
        for k in sorted(code_names & obj.__globals__.keys()):
            yield obj.__globals__[k], f" → global {k} of {name}"
        for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield cell.cell_contents, f" → variable {var} of {name}"
            except ValueError:
                pass
        for i, d in enumerate(obj.__defaults__ or ()):
            yield d, f" → default {i} of {name}"
        for k, d in (obj.__kwdefaults__ or {}).items():
            yield d, f" → default {k} of {name}"
    elif isinstance(obj, types.MethodType):
        yield obj.__self__, " → its object"
        yield obj.__func__, ""
    elif not isinstance(obj, type | ModuleType):
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for k, v in list(attrs.items())[:10_000]:
                yield v, f".{k}"
        for k in getattr(type(obj), "__slots__", ()):
            if isinstance(k, str) and hasattr(obj, k):
                yield getattr(obj, k), f".{k}"


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def _short_repr(obj: Any, n: int = 120) -> str:
    try:
        r = repr(obj)
    except Exception:  # noqa: BLE001
        r = f"<{type(obj).__name__}>"
    return r if len(r) <= n else r[:n - 3] + "..."
