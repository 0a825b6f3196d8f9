"""Helpers every test tier shares (tests/conftest.py puts tests/ on ``sys.path``).

- ``waiting``: ``wait_until`` (poll a condition, bounded, failing with what was awaited),
  its trio twin ``wait_until_async``, and ``free_port``.

A harness that programs started by a test import (``tests/network/grain_harness.py``) puts
tests/ on ``sys.path`` itself, as those programs run without this conftest.
"""
