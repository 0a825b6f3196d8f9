"""A job's stdout and stderr, captured by its runner and sent to the worker as lines.

The runner's file descriptors 1 and 2 are pipes that it reads itself, so everything a job
writes is captured, whoever writes it: ``print``, ``logging``, C code, ``os.system``,
subprocesses (which inherit the descriptors). A thread drains the pipes while the job runs
(a job is never blocked by a full pipe) and cuts what it reads into lines:

- only whole lines are sent; a line still open when the job ends is closed with a newline,
  and one longer than ``OUTPUT_LINE_MAX`` is cut there, with a marker saying how long it
  was (the rest is never held);
- lines are batched: one ``RunnerOutput(jid, stream, dropped)`` per run of lines of one
  stream, sent when ``BATCH_BYTES`` are waiting or ``BATCH_SECONDS`` after the first one;
- a job may send ``OUTPUT_BYTES_PER_JOB`` in all (what the worker would forward anyway);
  past it, whole lines are dropped and counted in ``dropped``, so a job printing 100 MB
  costs the runner no memory;
- ``end()`` (the job is over) flushes Python's and C's buffers, drains the pipes and
  returns the last batches, which the runner sends *before* the job's ``RunnerDone``: a
  line is always attributed to the job that wrote it, chained jobs included. What is
  written between jobs (by a thread a job left running) is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import config
from ..protocol import messages as m
from ..protocol.frames import Message

BATCH_BYTES = 32 * 1024
BATCH_SECONDS = 0.05
_READ = 64 * 1024


def _cut_marker(total: int) -> bytes:
    return f" [... line cut: {total} bytes]\n".encode()


def _whole_chars(buf: bytearray) -> int:
    """How much of ``buf`` to keep so as not to end inside a UTF-8 character."""
    i = len(buf) - 1
    while i >= 0 and len(buf) - i < 4 and buf[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0 or buf[i] < 0xC0:
        return len(buf)
    need = 4 if buf[i] >= 0xF0 else 3 if buf[i] >= 0xE0 else 2
    return i if i + need > len(buf) else len(buf)


class _Lines:
    """One stream's partial line, bounded by ``line_max``."""

    __slots__ = ("line_max", "partial", "extra")

    def __init__(self, line_max: int) -> None:
        self.line_max = line_max
        self.partial = bytearray()
        self.extra = 0   # bytes of the current line past line_max, not kept

    def feed(self, data: bytes) -> list[bytes]:
        """Whole lines completed by ``data`` (each ending in a newline)."""
        out: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            room = self.line_max - len(self.partial)
            if len(piece) <= room:
                self.partial += piece
            else:
                self.partial += piece[:max(room, 0)]
                self.extra += len(piece) - max(room, 0)
            if nl < 0:
                return out
            out.append(self.close())
            start = nl + 1

    def close(self) -> bytes:
        """The current line, closed (and marked if it was cut)."""
        if self.extra:
            keep = _whole_chars(self.partial)
            line = bytes(self.partial[:keep]) + _cut_marker(len(self.partial) + self.extra)
        else:
            line = bytes(self.partial) + b"\n"
        self.partial.clear()
        self.extra = 0
        return line

    def skip(self, data: bytes) -> int:
        """Over budget: forget ``data``, return how many lines it ended."""
        n = data.count(b"\n")
        if n:
            self.partial.clear()
            self.extra = len(data) - data.rfind(b"\n") - 1
        else:
            self.extra += len(data)
        return n

    @property
    def open(self) -> bool:
        return bool(self.partial or self.extra)


class OutputCapture:
    """Captures fds 1 and 2 of this process; ``send`` writes messages to the worker (it
    may be called from the capture's thread)."""

    def __init__(self, send: Callable[[list[Message]], None], *,
                 line_max: int = config.OUTPUT_LINE_MAX,
                 budget: int = config.OUTPUT_BYTES_PER_JOB) -> None:
        self._send = send
        self.line_max = line_max
        self.budget = budget
        self._lock = threading.Lock()
        self.jid: int | None = None
        self._lines = {1: _Lines(line_max), 2: _Lines(line_max)}
        self._batch: list[tuple[int, list[bytes]]] = []
        self._batch_bytes = 0
        self._first: float | None = None
        self._room = budget
        self._dropped = 0
        # the worker's stderr stays reachable for the runner's own last words
        self.log_fd = os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        self._fds: dict[int, int] = {}
        for stream in (1, 2):
            r, w = os.pipe()
            os.dup2(w, stream)      # inheritable: the job's subprocesses write here too
            os.close(w)
            os.set_blocking(r, False)
            self._fds[r] = stream
        # which pipes hold output, in one call: most jobs print nothing, and a read that
        # finds nothing raises (two per drain, two drains per job: ~10 us of a no-op job)
        self._readable = select.poll()
        self._pumped = select.poll()     # the capture thread's own: it waits unlocked
        for r in self._fds:
            self._readable.register(r, select.POLLIN)
            self._pumped.register(r, select.POLLIN)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        for f in (sys.stdout, sys.stderr):
            if isinstance(f, io.TextIOWrapper):   # a print reaches the pipe at its newline
                f.reconfigure(line_buffering=True)
        self._libc_fflush = _libc_fflush()
        threading.Thread(target=self._pump, name="grain-output", daemon=True).start()

    # -- the job's side ----------------------------------------------------------------
    def begin(self, jid: int) -> None:
        """A job starts: what is written from now on is its output."""
        with self._lock:
            self._drain(keep=False)
            self.jid = jid
            self._room = self.budget
            self._dropped = 0

    def end(self) -> list[Message]:
        """The job is over (and its processes are gone): its last output, to be sent
        before its result."""
        streams = [sys.stdout, sys.stderr]
        if streams != [self.stdout, self.stderr]:    # the job replaced them
            streams += [self.stdout, self.stderr]
        for f in streams:
            try:
                f.flush()
            except Exception:  # noqa: BLE001, S112 - a stream the job broke: its loss
                continue
        sys.stdout, sys.stderr = self.stdout, self.stderr
        if self._libc_fflush is not None:
            self._libc_fflush(None)
        with self._lock:
            self._drain(keep=True)
            for stream, lines in self._lines.items():
                if lines.open:
                    self._add(stream, [lines.close()])
            out = self._take()
            if self._dropped and self.jid is not None:
                out.append((m.RunnerOutput(self.jid, 1, self._dropped), b""))
                self._dropped = 0
            self.jid = None
            return out

    # -- the capture thread ------------------------------------------------------------
    def _pump(self) -> None:
        while True:
            try:
                self._pump_once()
            except OSError:
                return   # the worker is gone; the runner goes with it
            except Exception:  # noqa: BLE001 - never stop draining: a full pipe blocks the job
                with contextlib.suppress(OSError):
                    os.write(self.log_fd, traceback.format_exc().encode(errors="replace"))
                with self._lock:
                    self._batch, self._batch_bytes, self._first = [], 0, None

    def _pump_once(self) -> None:
        with self._lock:
            wait = None if self._first is None else \
                max(0.0, self._first + BATCH_SECONDS - time.monotonic())
        ready = [fd for fd, _ in self._pumped.poll(None if wait is None else wait * 1000)]
        with self._lock:
            self._drain(keep=self.jid is not None, only=ready)
            if self._first is not None and (
                    self._batch_bytes >= BATCH_BYTES
                    or time.monotonic() >= self._first + BATCH_SECONDS):
                self._flush_locked()

    # -- under the lock ------------------------------------------------------------------
    def _drain(self, keep: bool, only: list[int] | None = None) -> None:
        if only is None:
            only = [fd for fd, _ in self._readable.poll(0)]
        for fd in only:
            stream = self._fds[fd]
            while True:
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:
                    break
                if not data:
                    break
                if not keep:
                    continue
                if self._room <= 0:   # over budget: count lines, keep nothing
                    self._dropped += self._lines[stream].skip(data)
                    continue
                self._add(stream, self._lines[stream].feed(data))
                if self._batch_bytes >= BATCH_BYTES * 4:
                    self._flush_locked()

    def _add(self, stream: int, lines: list[bytes]) -> None:
        for line in lines:
            if len(line) > self._room:
                self._room = 0
                self._dropped += 1
                continue
            self._room -= len(line)
            if self._batch and self._batch[-1][0] == stream:
                self._batch[-1][1].append(line)
            else:
                self._batch.append((stream, [line]))
            self._batch_bytes += len(line)
            if self._first is None:
                self._first = time.monotonic()

    def _take(self) -> list[Message]:
        out: list[Message] = []
        if self.jid is not None:
            for stream, lines in self._batch:
                out.append((m.RunnerOutput(self.jid, stream, self._dropped), b"".join(lines)))
                self._dropped = 0
        self._batch = []
        self._batch_bytes = 0
        self._first = None
        return out

    def _flush_locked(self) -> None:
        msgs = self._take()
        if msgs:
            self._send(msgs)


def _libc_fflush() -> Any:
    """libc's ``fflush``: C code's ``printf`` is block-buffered into a pipe."""
    try:
        fflush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):
        return None
    fflush.argtypes = [ctypes.c_void_p]
    return fflush
