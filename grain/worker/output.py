"""Bounds on what a job may print: its output reaches its client, but a chatty job must
not exhaust the worker's, the executor's or the client's memory, nor the links.

Pure code: ``OutputLimiter.admit`` says what of a job's output to forward now and how many
lines were dropped (the client prints "… N lines dropped" where they were).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import config


@dataclass(slots=True)
class OutputLimiter:
    """A job's output budget: ``total`` bytes in all, ``rate`` bytes per second (a token
    bucket holding at most one second's worth)."""

    total: int = config.OUTPUT_BYTES_PER_JOB
    rate: float = config.OUTPUT_BYTES_PER_SECOND
    sent: int = 0
    tokens: float = config.OUTPUT_BYTES_PER_SECOND
    last: float | None = None
    dropped: int = 0

    def admit(self, data: bytes, dropped: int, now: float) -> tuple[bytes, int]:
        """(bytes to forward, lines dropped before them) for ``data`` (whole lines)
        arriving at ``now``, ``dropped`` lines having been dropped upstream already."""
        self.dropped += dropped
        if self.last is not None:
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if not data:
            return b"", 0
        room = min(self.total - self.sent, int(self.tokens))
        if len(data) > room:
            keep = data.rfind(b"\n", 0, max(room, 0)) + 1   # whole lines only
            self.dropped += data.count(b"\n", keep) or 1
            data = data[:keep]
        self.sent += len(data)
        self.tokens -= len(data)
        if not data:
            return b"", 0
        dropped, self.dropped = self.dropped, 0
        return data, dropped

    def flush_dropped(self) -> int:
        """Lines dropped since the last forwarded output (to report at the job's end)."""
        dropped, self.dropped = self.dropped, 0
        return dropped
