"""``GVAR``: per-job context, as in the original grain.

``GVAR.res`` is the job's concrete allocation (``CPU_Cores([6-7,9]) & Memory(4GB)``) inside
a job, and raises ``LookupError`` outside one; ``GVAR.instance`` names the worker running
the job (``"local"`` in the client). Backed by context variables, so concurrent tasks and
nested jobs each see their own.
"""

from __future__ import annotations

from typing import Any

from ..context import JOB_VARS as _VARS
from ..context import value_of


class GrainVar:
    """Attribute access to Grain's context variables (``res``, ``instance``)."""

    def __getattr__(self, k: str) -> Any:
        try:
            var = _VARS[k]
        except KeyError:
            raise AttributeError(f"GVAR has no variable {k!r} (it has {sorted(_VARS)})") from None
        return value_of(var)

    def __setattr__(self, k: str, v: Any) -> None:
        if k not in _VARS:
            raise AttributeError(f"GVAR has no variable {k!r} (it has {sorted(_VARS)})")
        _VARS[k].set(v)

    def __getstate__(self) -> dict[str, Any]:
        _none = object()
        return {k: value_of(v, _none) for k, v in _VARS.items()
                if v.get(_none) is not _none}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


GVAR = GrainVar()
