"""Waiting on state, the one way: poll a condition until it holds, bounded in time.

A test waits for what it needs to be true (a process registered, a file written, a status
field reached), never for a fixed time: ``wait_until(lambda: ..., timeout, "what")``
returns the condition's first truthy value or fails naming what it waited for and the last
error the condition raised (a condition that raises is polled again: a file not written
yet, a server not listening yet).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: BaseException | None) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                          + (f" (last error: {last!r})" if last is not None else ""))


def wait_until(pred: Callable[[], T], timeout: float = 20.0, what: str = "condition",
               interval: float = 0.05) -> T:
    """Poll ``pred`` every ``interval`` seconds until it returns something truthy (returned);
    fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = pred()
        except Exception as e:  # noqa: BLE001 - not yet: poll again, report the last one
            last = e
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def wait_until_async(pred: Callable[[], T], timeout: float = 20.0,
                           what: str = "condition", interval: float = 0.02) -> T:
    """``wait_until`` for trio code: an embedded cluster runs in the test's own loop, so the
    wait must not block it."""
    import trio

    deadline = trio.current_time() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = pred()
        except Exception as e:  # noqa: BLE001 - not yet: poll again, report the last one
            last = e
        else:
            if value:
                return value
        if trio.current_time() > deadline:
            raise _timed_out(what, timeout, last)
        await trio.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
