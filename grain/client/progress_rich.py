"""The rich side of the progress display: its columns and the ``Progress`` it draws.

Imported only when a display is drawn (``progress.ProgressBoard``), so a program that
draws none never loads rich.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _CountsColumn(ProgressColumn):
    """``3 running · 1 failed`` (failed only when there are some)."""

    def render(self, task: Task) -> Text:
        text = Text(f"{task.fields.get('running', 0)} running")
        failed = task.fields.get("failed", 0)
        if failed:
            text.append(" · ")
            text.append(f"{failed} failed", style="red")
        return text


class _RateColumn(ProgressColumn):
    """Jobs ended per second (rich's speed estimate over the last half minute)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("– jobs/s", style="progress.data.speed")
        return Text(f"{speed:.3g} jobs/s", style="progress.data.speed")


def make_progress(console: Console, redirect_stdout: bool, redirect_stderr: bool
                  ) -> Progress:
    """The display: a row per wait group (name, bar, done/total, running and failed, rate,
    time, ETA), redrawn when asked (no thread of its own)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _CountsColumn(), _RateColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(),
                    console=console, auto_refresh=False, transient=False,
                    redirect_stdout=redirect_stdout, redirect_stderr=redirect_stderr)
