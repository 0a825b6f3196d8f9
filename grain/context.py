"""Per-job context, shared by the client (``GVAR``) and the runner that sets it.

``res``: the job's concrete allocation (raises ``LookupError`` outside a job);
``instance``: the name of the worker running the job (``"local"`` in the client). Context
variables, so concurrent tasks and nested jobs each see their own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

JOB_VARS: dict[str, ContextVar[Any]] = {
    "res": ContextVar("GRAIN_RESOURCE"),
    "instance": ContextVar("GRAIN_INSTANCE", default="local"),
}


class Deferred:
    """A context value built on first use, once: the runner sets the job's ``res`` as one
    (built from the allocation's wire form), since most jobs never read it and building
    it was ~15% of a no-op job's time in its runner."""

    __slots__ = ("_build", "_value")

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build: Callable[[], Any] | None = build
        self._value: Any = None

    def get(self) -> Any:
        if self._build is not None:
            self._value, self._build = self._build(), None
        return self._value


def value_of(var: ContextVar[Any], *default: Any) -> Any:
    """``var.get(*default)``, with a ``Deferred`` value built."""
    v = var.get(*default)
    return v.get() if type(v) is Deferred else v
