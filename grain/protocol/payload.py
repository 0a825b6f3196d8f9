"""Pickling of job payloads: stdlib pickle where it works, dill where it must.

The first byte says which: ``P`` (stdlib pickle, C speed on both ends) or ``D`` (dill: by
value, for functions and classes of the user's ``__main__`` and for closures and lambdas).
A stdlib pickle that names ``__main__`` would not load in a runner, so it is redone with dill.
"""

from __future__ import annotations

import io
import pickle
import sys
from types import ModuleType
from typing import Any

import dill
from dill._dill import _import_module, save_module

from ..errors import SerializationError

_MAIN = b"__main__"


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


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle ``obj``; raise ``SerializationError`` naming ``what`` when it cannot be."""
    try:
        data = pickle.dumps(obj, protocol=5)
        if _MAIN not in data:
            return b"P" + data
    except Exception:  # noqa: BLE001 - fall through to dill, which pickles more
        pass
    try:
        return b"D" + _dill_dumps(obj)
    except Exception as e:
        raise SerializationError(f"cannot pickle {what} {_short_repr(obj)}: "
                                 f"{type(e).__name__}: {e}") from e


def loads(data: bytes) -> Any:
    """Inverse of ``dumps``."""
    tag = data[:1]
    if tag == b"P":
        return pickle.loads(memoryview(data)[1:])
    if tag == b"D":
        return dill.loads(data[1:])
    raise SerializationError(f"unknown payload tag {tag!r}")


def _short_repr(obj: Any) -> str:
    try:
        r = repr(obj)
    except Exception:  # noqa: BLE001
        r = f"<{type(obj).__name__}>"
    return r if len(r) <= 120 else r[:117] + "..."
