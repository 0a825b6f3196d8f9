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
            return data
    except Exception:  # noqa: BLE001 - fall through to dill, which pickles more
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
