"""Root of every test tier: tests/ goes on ``sys.path``, so each tier imports the helpers
they share from ``tests/support`` (``from support.waiting import wait_until, free_port``)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
