"""Per-job context, shared by the client (``GVAR``) and the runner that sets it.

``res``: the job's concrete allocation (raises ``LookupError`` outside a job);
``instance``: the name of the worker running the job (``"local"`` in the client). Context
variables, so concurrent tasks and nested jobs each see their own.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

JOB_VARS: dict[str, ContextVar[Any]] = {
    "res": ContextVar("GRAIN_RESOURCE"),
    "instance": ContextVar("GRAIN_INSTANCE", default="local"),
}
