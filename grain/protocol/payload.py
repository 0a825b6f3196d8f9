"""Pickling of job payloads: stdlib pickle where it works, dill where it must.

stdlib pickle is C-fast on both ends; dill pickles by value what stdlib pickle cannot
(functions and classes of the user's ``__main__``, closures, lambdas). A stdlib pickle that
names ``__main__`` would not load in a runner, so it is redone with dill. Both are loaded
by ``pickle.loads`` (dill's pickles only name importable reconstructors in ``dill._dill``),
so a payload carries no tag and is never copied to add one; dill's own loader is the
fallback.
"""

from __future__ import annotations

import io
import pickle
import sys
from types import FunctionType, ModuleType
from typing import Any

import dill
from dill._dill import _import_module, save_module

from ..errors import SerializationError


class _Pickler(dill.Pickler):
    """dill, except that importable modules go by reference.

    dill pickles every module outside ``sys.prefix`` by value (its whole ``__dict__``),
    which drags the user's local packages, and Grain itself when installed in develop
    mode, into each function. Runners import them instead, as the client does.
    """

    dispatch = dill.Pickler.dispatch.copy()


def _save_module(pickler: dill.Pickler, obj: ModuleType) -> None:
    if obj.__name__ != "__main__" and sys.modules.get(obj.__name__) is obj:
        pickler.save_reduce(_import_module, (obj.__name__,), obj=obj)
    else:
        save_module(pickler, obj)


_Pickler.dispatch[ModuleType] = _save_module


def _dill_dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=5, recurse=True).dump(obj)
    return buf.getvalue()


class _NeedsDill(Exception):
    """The object refers to the user's ``__main__``: stdlib pickle would name it by
    reference, and a runner could not import it."""


class _StdPickler(pickle.Pickler):
    """stdlib pickle at C speed, stopping at the first reference into ``__main__``.

    ``reducer_override`` sees only objects that are pickled by reduction or by name
    (functions, classes, instances), never ints, strings, bytes or containers, so the
    check costs nothing on bulk data (no scan of the pickled bytes)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | FunctionType):
            module = getattr(obj, "__module__", None)
        else:
            module = type(obj).__module__
        if module == "__main__":
            raise _NeedsDill
        return NotImplemented


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle ``obj``; raise ``SerializationError`` naming ``what`` when it cannot be."""
    buf = io.BytesIO()
    try:
        _StdPickler(buf, protocol=5).dump(obj)
        return buf.getbuffer()  # a view: no copy of a big payload
    except Exception:  # noqa: BLE001 - _NeedsDill or unpicklable: dill pickles more
        pass
    try:
        return _dill_dumps(obj)
    except Exception as e:
        raise SerializationError(f"cannot pickle {what} {_short_repr(obj)}: "
                                 f"{type(e).__name__}: {e}") from e


def loads(data: bytes) -> Any:
    """Inverse of ``dumps``."""
    try:
        return pickle.loads(data)
    except Exception as first:  # noqa: BLE001 - dill's loader knows a few more tricks
        try:
            return dill.loads(data)
        except Exception:  # noqa: BLE001
            raise first from None


def _short_repr(obj: Any) -> str:
    try:
        r = repr(obj)
    except Exception:  # noqa: BLE001
        r = f"<{type(obj).__name__}>"
    return r if len(r) <= 120 else r[:117] + "..."
