"""Progress bars for wait groups: one live display per program, one row per wait group.

A wait group with at least ``config.PROGRESS_MIN_JOBS`` children gets a row: done/total,
failed, running (counted from the session's ``Started`` events), rate and ETA. Nested wait
groups share the one display (rich's ``Live``), so they never fight over the screen; a
row disappears when its group ends while others go on, and the last rows stay on screen
when everything has ended. Nothing is drawn when stdout is not a terminal, with
``run_combine(progress=False)`` or ``GRAIN_PROGRESS=0``.

The board redraws from a trio task a few times a second (no thread); counters are plain
integers that wait groups bump as their children start and end.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import trio

from .. import config

if TYPE_CHECKING:   # rich is imported only when a display is drawn (it costs ~2.5 MiB)
    from rich.console import Console
    from rich.progress import Progress, TaskID

MAX_ROWS = 10
"""Rows shown at once; more groups wait for a row to free."""
REFRESH_SECONDS = 0.25


class GroupProgress:
    """One wait group's counts. The wait group calls ``added``, ``started``, ``ended``
    and ``close``; the board turns them into a row."""

    __slots__ = ("board", "name", "parent", "total", "done", "failed", "running", "closed",
                 "task")

    def __init__(self, board: ProgressBoard, name: str,
                 parent: GroupProgress | None = None) -> None:
        self.board = board
        self.name = name
        self.parent = parent       # the wait group it was opened in
        self.total = 0
        self.done = 0
        self.failed = 0
        self.running = 0
        self.closed = False
        self.task: TaskID | None = None

    def added(self) -> None:
        self.total += 1

    def started(self) -> None:
        self.running += 1

    def ended(self, ok: bool, was_running: bool) -> None:
        if was_running:
            self.running -= 1
        if ok:
            self.done += 1
        else:
            self.failed += 1

    def close(self) -> None:
        """The group ended: no more changes; its row goes at the next redraw."""
        self.closed = True
        self.running = 0


class ProgressBoard:
    """The program's one progress display (a no-op unless ``console`` is a terminal)."""

    def __init__(self, console: Console | None = None, *,
                 min_jobs: int = config.PROGRESS_MIN_JOBS, max_rows: int = MAX_ROWS) -> None:
        # without a console given: a terminal on stdout, found without importing rich
        self._console = console
        self.enabled = console.is_terminal if console is not None else _is_tty(sys.stdout)
        self.min_jobs = min_jobs
        self.max_rows = max_rows
        self._groups: list[GroupProgress] = []     # open groups, and closed ones with rows
        self._progress: Progress | None = None

    def group(self, name: str, parent: GroupProgress | None = None) -> GroupProgress | None:
        """Counters for a new wait group (``None`` when nothing is drawn); ``parent``: the
        counters of the wait group it was opened in."""
        if not self.enabled:
            return None
        g = GroupProgress(self, name, parent)
        self._groups.append(g)
        return g

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console
            self._console = Console()
        return self._console

    def _start(self) -> Progress:
        # While the display is live, the program's own prints and jobs' output lines go
        # through it (above the rows) instead of tearing them; only when it draws on the
        # real stdout, and stderr only when that is a terminal too.
        from .progress_rich import make_progress
        redirect = self.console.file in (sys.stdout, sys.__stdout__)
        p = make_progress(self.console, redirect, redirect and _is_tty(sys.stderr))
        p.start()
        return p

    def refresh(self) -> None:
        """Bring the rows up to date and redraw; start the display when a group is big
        enough, stop it (leaving the last rows on screen) when every row's group ended."""
        if not self.enabled:
            return
        shown = [g for g in self._groups if g.task is not None]
        for g in self._groups:
            if g.task is None and not g.closed and g.total >= self.min_jobs \
                    and len(shown) < self.max_rows:
                if self._progress is None:
                    self._progress = self._start()
                g.task = self._progress.add_task(g.name, total=g.total, failed=0, running=0)
                shown.append(g)
        p = self._progress
        if p is None:
            self._groups = [g for g in self._groups if not g.closed]
            return
        for g in shown:
            assert g.task is not None
            p.update(g.task, total=g.total, completed=g.done + g.failed,
                     running=g.running, failed=g.failed)
        open_rows = [g for g in shown if not g.closed]
        for g in shown:
            if not g.closed:
                continue
            assert g.task is not None
            # A group nested in one that has a row just makes room; any other that ends
            # while rows go on leaves its final row in the scrollback, above the live ones.
            nested = g.parent is not None and g.parent.task is not None
            if open_rows or nested:
                if not nested:
                    task = next(t for t in p.tasks if t.id == g.task)
                    p.console.print(p.make_tasks_table([task]))
                p.remove_task(g.task)
                g.task = None
        self._groups = [g for g in self._groups if not g.closed]
        p.refresh()
        if not open_rows:
            p.stop()                       # the final top-level rows stay on screen
            self._progress = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Redraw a few times a second until cancelled."""
        task_status.started()
        if not self.enabled:
            return
        try:
            while True:
                self.refresh()
                await trio.sleep(REFRESH_SECONDS)
        finally:
            self.stop()

    def stop(self) -> None:
        """Draw the last state and give the terminal back (stdout/stderr restored)."""
        if self._progress is not None:
            for g in self._groups:
                g.close()
            try:
                self.refresh()
            finally:
                if self._progress is not None:
                    self._progress.stop()
                    self._progress = None


def _is_tty(f: object) -> bool:
    isatty = getattr(f, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError, AttributeError):
        return False
