"""Job output at the submitter: each line a job writes, printed prefixed with the job and
its worker, and kept (bounded) for ``wg.output(i)``.

Output reaches the client as ``Output`` messages carrying whole lines (the runner, worker
and executor frame and bound them). Here every line is prefixed with the job (its wait
group's name or its function, and its index in the group) and the worker, and written
with a single ``write`` call to ``sys.stdout`` or ``sys.stderr``, looked up at each call:
lines of different jobs never interleave mid-line, stdout stays stdout and stderr stays
stderr, and while a progress display is live (it redirects both) the lines scroll above
it. Where the limits dropped lines, a ``… N lines dropped`` line says so.

Where output goes is the ``output=`` option of ``run_combine`` (or ``GRAIN_OUTPUT``):
``"print"`` (the default), ``"off"``, a file path (appended to), an open text file, or a
callable ``fn(job, worker, stream, line)``.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .. import config
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .progress import ProgressBoard

STDOUT, STDERR = 1, 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}

LineCallback = Callable[[str, str, str, str], None]
"""``fn(job, worker, stream, line)``: ``stream`` is ``"stdout"`` or ``"stderr"``, ``line``
has no trailing newline."""

OutputTarget = str | IO[str] | LineCallback | bool | None
"""What ``run_combine(output=...)`` accepts (see the module docstring)."""

_OFF = ("0", "off", "false", "no", "none")
_PRINT = ("1", "on", "true", "yes", "print")


def dropped_line(n: int) -> str:
    """The marker printed where the output limits dropped ``n`` lines."""
    return f"… {n} line{'s' if n != 1 else ''} dropped (output limit)"


def decode_lines(data: bytes) -> list[str]:
    """Whole lines of a job's output (UTF-8 where it was; anything else replaced)."""
    if not data:
        return []
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n")


class OutputPrinter:
    """Writes jobs' lines to where ``target`` says; ``None`` when output is off."""

    def __init__(self, target: OutputTarget) -> None:
        self._file: IO[str] | None = None
        self._owned = False
        self._callback: LineCallback | None = None
        if callable(target):
            self._callback = target
        elif isinstance(target, str):
            self._file = open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._owned = True
        elif target is not None and not isinstance(target, bool):
            self._file = target

    @staticmethod
    def from_option(option: OutputTarget) -> OutputPrinter | None:
        """The printer for ``run_combine(output=option)`` (``None``: read
        ``GRAIN_OUTPUT``); ``None`` when output is off."""
        if option is None:
            option = config.env_str(config.ENV_OUTPUT, "print")
        if option is False:
            return None
        if option is True:
            return OutputPrinter(None)
        if isinstance(option, str):
            low = option.strip().lower()
            if low in _OFF:
                return None
            if low in _PRINT:
                return OutputPrinter(None)
            if not option.strip():
                raise ConfigurationError("output='' names no file: use 'print', 'off' or a "
                                         "path")
            return OutputPrinter(option)
        if callable(option) or hasattr(option, "write"):
            return OutputPrinter(option)
        raise TypeError(f"output={option!r}: expected 'print', 'off', a file path, an open "
                        f"text file or a callable fn(job, worker, stream, line)")

    def emit(self, job: str, worker: str, stream: int, data: bytes, dropped: int) -> None:
        """Print one Output message's lines (and the dropped-lines marker first)."""
        lines = decode_lines(data)
        if dropped:
            lines.insert(0, dropped_line(dropped))
        if not lines:
            return
        name = STREAM_NAMES.get(stream, "stdout")
        if self._callback is not None:
            for line in lines:
                self._callback(job, worker, name, line)
            return
        tag = f"[{job} @{worker}{' stderr' if stream == STDERR and self._file else ''}] "
        block = "".join(f"{tag}{line}\n" for line in lines)
        if self._file is not None:
            out = self._file
        else:
            out = sys.stderr if stream == STDERR else sys.stdout
        # One write per message: a line is never split by another job's or the program's.
        out.write(block)
        out.flush()

    def close(self) -> None:
        if self._owned and self._file is not None:
            self._file.close()


KEEP_PER_GROUP = config.OUTPUT_KEEP_PER_GROUP
"""Output a wait group keeps for ``wg.output`` in all; past it, the output of the jobs that
printed first is let go (a million chatty jobs must not fill the client's memory)."""
LET_GO = "… this job's output is no longer kept (its wait group keeps 32 MiB in all)\n"


class KeptOutput:
    """The last ``limit`` bytes of one job's output, by stream, for ``wg.output(i)``."""

    __slots__ = ("chunks", "size", "lost", "limit")

    def __init__(self, limit: int = config.OUTPUT_KEEP_PER_JOB) -> None:
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.lost = 0          # bytes of older output let go to stay within the limit
        self.limit = limit

    def add(self, stream: int, data: bytes, dropped: int) -> None:
        if dropped:
            data = (dropped_line(dropped) + "\n").encode() + data
        if not data:
            return
        self.chunks.append((stream, data))
        self.size += len(data)
        while self.size > self.limit and self.chunks:
            s, old = self.chunks.popleft()
            cut = self.size - self.limit
            if cut < len(old):     # keep the tail of this chunk, from a line start
                nl = old.find(b"\n", cut - 1)
                rest = old[nl + 1:] if nl >= 0 else b""
                if rest:
                    self.chunks.appendleft((s, rest))
                self.lost += len(old) - len(rest)
                self.size -= len(old) - len(rest)
            else:
                self.lost += len(old)
                self.size -= len(old)

    def text(self, stream: int | None = None) -> str:
        body = b"".join(d for s, d in self.chunks if stream is None or s == stream)
        head = f"… {self.lost} earlier bytes not kept\n" if self.lost else ""
        return head + body.decode("utf-8", errors="replace")


@dataclass
class View:
    """What a program shows while it runs: jobs' output and progress rows. Set for a
    ``run_combine``/``combine`` by ``use_view``; wait groups find it with ``current_view``."""

    printer: OutputPrinter | None = None
    board: ProgressBoard | None = None

    def emit(self, job: str, worker: str, stream: int, data: bytes, dropped: int) -> None:
        if self.printer is not None:
            self.printer.emit(job, worker, stream, data, dropped)


_VIEW: ContextVar[View] = ContextVar("grain_view")
_NO_VIEW = View()


def current_view() -> View:
    """The running program's view (one that shows nothing outside ``run_combine``)."""
    return _VIEW.get(_NO_VIEW)


def use_view(view: View) -> Any:
    """Make ``view`` current for this task and its children; returns the reset token."""
    return _VIEW.set(view)


def reset_view(token: Any) -> None:
    _VIEW.reset(token)
