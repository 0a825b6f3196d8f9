"""Pure structural diffs: does a live object already have the desired fields, and the JSON
merge patch (RFC 7386) that gets it there. Used by ``apply`` (children) and ``status``.
"""

from __future__ import annotations

import copy
from typing import Any

from grain_operator.model import parse_quantity

_QUANTITY_KEYS = ("resources", "requests", "limits")


def _quantity_equal(desired: Any, actual: Any) -> bool:
    try:
        return parse_quantity(desired) == parse_quantity(actual)
    except ValueError:
        return False


def covers(desired: Any, actual: Any, *, quantities: bool = False) -> bool:
    """Whether ``actual`` already has every field of ``desired`` (extra fields allowed).

    Lists must have the same length and cover element-wise; numbers under ``resources`` are
    compared as quantities ("1" covers 1, "1000m" covers "1").
    """
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(
            k in actual and covers(v, actual[k], quantities=quantities or k in _QUANTITY_KEYS)
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(covers(d, a, quantities=quantities) for d, a in zip(desired, actual, strict=True))
    if desired == actual and type(desired) is type(actual):
        return True
    return quantities and _quantity_equal(desired, actual)


def merge_patch(last: dict[str, Any], desired: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch taking ``actual`` to (at least) ``desired``; {} when nothing to do.

    ``last`` is what was applied before: its keys that ``desired`` no longer has are removed.
    Lists are replaced whole (merge-patch semantics), so a list is sent as desired when it
    differs at all.
    """
    patch: dict[str, Any] = {}
    for key in last:
        if key not in desired and key in actual:
            patch[key] = None
    for key, want in desired.items():
        have = actual.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            before = last.get(key)
            sub = merge_patch(before if isinstance(before, dict) else {}, want, have)
            if sub:
                patch[key] = sub
        elif not covers(want, have, quantities=key in _QUANTITY_KEYS) or key not in actual:
            patch[key] = copy.deepcopy(want)
    return patch
