"""Layering: the operator (asyncio, kopf) imports no trio and none of grain's I/O modules."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import grain_operator

pytestmark = pytest.mark.timeout(60)

#: grain modules the operator may import: the pure ones (none is needed today).
ALLOWED_GRAIN = {"grain.resource", "grain.errors"}


def test_grain_operator_imports_no_trio() -> None:
    modules = [f"grain_operator.{m.name}" for m in pkgutil.iter_modules(grain_operator.__path__)]
    assert "grain_operator.handlers" in modules and "grain_operator.render" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50,
                         cwd=Path(__file__).parent, check=True)
    loaded = set(json.loads(out.stdout))
    assert "trio" not in loaded and not any(m.startswith("trio.") for m in loaded)
    grain = {m for m in loaded if m == "grain" or m.startswith("grain.")}
    assert grain <= ALLOWED_GRAIN | {"grain"}, sorted(grain)  # today: none at all
