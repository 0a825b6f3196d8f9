"""The client API against a scripted executor (the other end of an in-memory link): job
output at the submitter, progress rows from Started events, a lost connection, map's
bounded submission and the client's memory per queued job — exactly, without runners."""

from __future__ import annotations

import io
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

import grain
from grain import errors
from grain.client.display import KeptOutput, OutputPrinter, View, reset_view, use_view
from grain.client.progress import ProgressBoard
from grain.client.session import Session
from grain.client.waitgroup import _RUNTIME
from grain.net.link import MemoryLink, memory_link_pair
from grain.protocol import messages as m
from grain.protocol import payload as pl
from grain.protocol.messages import End
from grain.resource import Cores


def square(x: int) -> int:
    return x * x


class FakeExecutor:
    """The executor's end of a client link, answering as a test says."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.submits: list[m.Submit] = []
        self.cancels: list[int] = []

    async def take(self, n: int) -> list[m.Submit]:
        """Receive until ``n`` more jobs were submitted; return them."""
        start = len(self.submits)
        while len(self.submits) - start < n:
            await self.batch()
        return self.submits[start:start + n]

    async def batch(self) -> None:
        for msg, _ in await self.link.receive():
            if type(msg) is m.Submit:
                self.submits.append(msg)
            elif type(msg) is m.Cancel:
                self.cancels.append(msg.cid)

    def started(self, cid: int, worker: str = "w7") -> None:
        self.link.send(m.Started(cid, worker, []), b"")

    def output(self, cid: int, stream: int, data: bytes, dropped: int = 0) -> None:
        self.link.send(m.Output(cid, stream, dropped), data)

    def result(self, cid: int, value: Any, worker: str = "w7") -> None:
        self.link.send(m.Result(cid, int(End.OK), worker), pl.dumps(value))

    def raised(self, cid: int, exc: BaseException) -> None:
        self.link.send(m.Result(cid, int(End.RAISED), "w7", repr(exc)),
                       pl.dumps((exc, "remote traceback")))


@asynccontextmanager
async def scripted(view: View | None = None
                   ) -> AsyncIterator[tuple[Session, FakeExecutor]]:
    """A session whose executor is the test; wait groups and exec1 use it."""
    mine, theirs = memory_link_pair("client", "executor")
    session = Session(mine, session_id=1, reconnect_grace=0)
    fake = FakeExecutor(theirs)
    async with trio.open_nursery() as n:
        n.start_soon(session.run)
        reset = _RUNTIME.set(session)
        vreset = use_view(view) if view is not None else None
        try:
            yield session, fake
        finally:
            _RUNTIME.reset(reset)
            if vreset is not None:
                reset_view(vreset)
            n.cancel_scope.cancel()


# -- job output --------------------------------------------------------------------------

def test_output_lines_are_printed_prefixed_per_stream_and_kept(
        capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> grain.WaitGroup:
        async with scripted(View(printer=OutputPrinter(None))) as (_, fake):
            async with grain.open_waitgroup() as wg:
                wg.submit(Cores(1), square, 1)
                wg.submit(Cores(1), square, 2)
                a, b = await fake.take(2)
                fake.started(a.cid, "node-a")
                fake.started(b.cid, "node-b")
                fake.output(a.cid, 1, b"first\nsecond\n")
                fake.output(b.cid, 2, "ünï\n".encode())
                fake.output(a.cid, 2, b"late\n", dropped=3)
                fake.result(a.cid, 1)
                fake.result(b.cid, 4)
            return wg
    wg = trio.run(main)
    out, err = capsys.readouterr()
    assert out == "[square#0 @node-a] first\n[square#0 @node-a] second\n"
    assert err == ("[square#1 @node-b] ünï\n"
                   "[square#0 @node-a] … 3 lines dropped (output limit)\n"
                   "[square#0 @node-a] late\n")
    assert wg.output(0) == "first\nsecond\n… 3 lines dropped (output limit)\nlate\n"
    assert wg.output(0, "stdout") == "first\nsecond\n"
    assert wg.output(1, "stderr") == "ünï\n" and wg.output(-1) == "ünï\n"
    assert wg.results == [1, 4]


def test_output_off_still_keeps_each_jobs_text_and_names_label_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[tuple[str, str, str, str]] = []

    async def main(printer: OutputPrinter | None) -> grain.WaitGroup:
        async with scripted(View(printer=printer)) as (_, fake):
            async with grain.open_waitgroup(name="sweep") as wg:
                wg.submit(Cores(1), square, 1)
                (a,) = await fake.take(1)
                fake.started(a.cid)
                fake.output(a.cid, 1, b"x\ny\n")
                fake.result(a.cid, 1)
            return wg
    assert OutputPrinter.from_option("off") is None
    wg = trio.run(main, None)
    assert capsys.readouterr() == ("", "")
    assert wg.output(0) == "x\ny\n"
    trio.run(main, OutputPrinter.from_option(lambda *a: lines.append(a)))
    assert lines == [("sweep#0", "w7", "stdout", "x"), ("sweep#0", "w7", "stdout", "y")]


def test_grain_output_names_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "jobs.log"
    monkeypatch.setenv("GRAIN_OUTPUT", str(target))
    printer = OutputPrinter.from_option(None)
    assert printer is not None
    printer.emit("f#2", "w1", 1, b"hello\n", 0)
    printer.emit("f#2", "w1", 2, b"bad\n", 0)
    printer.close()
    assert target.read_text() == "[f#2 @w1] hello\n[f#2 @w1 stderr] bad\n"
    monkeypatch.setenv("GRAIN_OUTPUT", "0")
    assert OutputPrinter.from_option(None) is None
    with pytest.raises(TypeError, match="output="):
        OutputPrinter.from_option(42)  # type: ignore[arg-type]


def test_each_write_is_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)
    monkeypatch.setattr(sys, "stdout", Recorder())
    printer = OutputPrinter(None)
    for i in range(50):
        printer.emit(f"job#{i}", "w", 1, b"".join(b"line %d of %d\n" % (k, i) for k in range(7)),
                     0)
        printer.emit(f"job#{i}", "w", 1, b"no newline at the end", 0)
    assert len(writes) == 100
    assert all(w.endswith("\n") for w in writes)
    assert all(all(line.startswith("[job#") for line in w.splitlines()) for w in writes)


def test_kept_output_is_bounded_and_keeps_the_tail() -> None:
    kept = KeptOutput(limit=64 * 1024)
    for i in range(400):
        kept.add(1, (f"{i:05d} " + "x" * 1000 + "\n").encode(), 0)
    text = kept.text()
    head, body = text.split("\n", 1)
    assert head.startswith("… ") and head.endswith("earlier bytes not kept")
    assert len(body.encode()) <= 64 * 1024
    assert body.endswith("00399 " + "x" * 1000 + "\n")
    assert body.startswith(body.splitlines()[0]) and body[5] == " "   # starts at a line


# -- progress ----------------------------------------------------------------------------

def _board() -> tuple[ProgressBoard, io.StringIO]:
    buf = io.StringIO()
    return ProgressBoard(Console(file=buf, force_terminal=True, width=150,
                                 color_system=None)), buf


def test_progress_rows_count_done_failed_and_running_from_started_events() -> None:
    board, buf = _board()

    async def main() -> list[str]:
        frames: list[str] = []

        def frame() -> str:
            board.refresh()
            text = buf.getvalue()
            buf.truncate(0)
            buf.seek(0)
            frames.append(text)
            return text
        async with scripted(View(board=board)) as (session, fake):
            async with grain.open_waitgroup(return_exceptions=True, name="sweep") as wg:
                for i in range(10):
                    wg.submit(Cores(1), square, i)
                subs = await fake.take(10)
                for s in subs[:3]:
                    fake.started(s.cid)
                fake.started(subs[0].cid)          # again (a re-attach): counted once
                await _settle(session)
                assert "0/10" in frame() and "3 running" in frame()
                fake.result(subs[0].cid, 0)
                fake.raised(subs[1].cid, ValueError("no"))
                await _settle(session)
                text = frame()
                assert "2/10" in text and "1 running" in text and "1 failed" in text
                for s in subs[2:]:
                    fake.result(s.cid, 0)
        frames.append(frame())
        return frames
    frames = trio.run(main)
    assert "sweep" in frames[-1] and "10/10" in frames[-1]
    assert board._progress is None            # the display stopped with its last group


def test_nested_groups_share_one_display_with_a_row_each() -> None:
    board, buf = _board()

    async def main() -> str:
        async with scripted(View(board=board)) as (session, fake):
            async with grain.open_waitgroup(name="outer") as outer:
                for i in range(8):
                    outer.submit(Cores(1), square, i)
                async with grain.open_waitgroup(name="inner") as inner:
                    for i in range(9):
                        inner.submit(Cores(1), square, i)
                    subs = await fake.take(17)
                    board.refresh()
                    live = board._progress
                    assert live is not None and len(live.tasks) == 2
                    text = buf.getvalue()
                    for s in subs[8:]:
                        fake.result(s.cid, 0)
                board.refresh()                     # inner ended, outer goes on
                assert live is not None and board._progress is live and len(live.tasks) == 1
                for s in subs[:8]:
                    fake.result(s.cid, 0)
            board.refresh()
            return text
    text = trio.run(main)
    assert "outer" in text and "inner" in text and "0/8" in text and "0/9" in text


def test_nothing_is_drawn_when_not_a_terminal_or_for_small_groups() -> None:
    buf = io.StringIO()
    board = ProgressBoard(Console(file=buf))           # a file, not a terminal
    assert not board.enabled and board.group("x") is None
    board2, buf2 = _board()

    async def main() -> None:
        async with scripted(View(board=board2)) as (_, fake):
            async with grain.open_waitgroup() as wg:
                for i in range(7):                       # fewer than PROGRESS_MIN_JOBS
                    wg.submit(Cores(1), square, i)
                for s in await fake.take(7):
                    fake.result(s.cid, 0)
            board2.refresh()
    trio.run(main)
    assert buf.getvalue() == "" and buf2.getvalue() == ""


async def _settle(session: Session) -> None:
    """Let the session's receive loop handle what the fake sent."""
    await trio.testing.wait_all_tasks_blocked()


# -- a lost connection -------------------------------------------------------------------

def test_lost_connection_keeps_the_results_that_finished() -> None:
    async def main() -> tuple[grain.WaitGroup, BaseException]:
        async with scripted() as (_, fake):
            wg = grain.open_waitgroup()
            with pytest.raises(errors.ExecutorLost) as info:
                async with wg:
                    for i in range(5):
                        wg.submit(Cores(1), square, i)
                    subs = await fake.take(5)
                    fake.result(subs[0].cid, 0)
                    fake.result(subs[3].cid, 9)
                    await _settle_until(lambda: len(wg.finished) == 2)
                    fake.link.close("the executor went away")
            return wg, info.value
    wg, exc = trio.run(main)
    assert exc.grain_finished == {0: 0, 3: 9}          # type: ignore[attr-defined]
    assert wg.finished == {0: 0, 3: 9} and wg.results == []


async def _settle_until(pred: Callable[[], bool]) -> None:
    for _ in range(100):
        if pred():
            return
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError("the session never got there")


# -- map and memory ----------------------------------------------------------------------

def test_map_never_has_more_than_window_jobs_in_flight() -> None:
    consumed = [0]

    def items() -> Any:
        for i in range(1_000_000):
            consumed[0] += 1
            yield i

    async def main() -> tuple[int, int, int]:
        async with scripted() as (_, fake):
            async with grain.open_waitgroup() as wg:
                wg.map(Cores(1), square, items(), window=100)
                await fake.take(1)
                first_batch = len(fake.submits)
                read_then = consumed[0]
                peak = 0
                answered = 0
                while answered < 1000:
                    peak = max(peak, len(fake.submits) - answered)
                    for s in fake.submits[answered:]:
                        fake.result(s.cid, 0)
                    answered = len(fake.submits)
                    with trio.fail_after(30):
                        await fake.batch()
                wg.cancel()
            return first_batch, read_then, peak
    first_batch, read_then, peak = trio.run(main)
    assert 0 < first_batch <= 100 and read_then <= 101, (first_batch, read_then)
    assert peak <= 100


@pytest.mark.parametrize("how", ["submit", "map"])
def test_client_memory_per_queued_job_is_under_a_kilobyte(how: str) -> None:
    n = 20_000

    async def main() -> float:
        async with scripted() as (_, fake):
            async with grain.open_waitgroup() as wg:
                wg.submit(Cores(1), square, -1)          # the function is defined once
                await fake.take(1)
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    if how == "submit":
                        for i in range(n):
                            wg.submit(Cores(1), square, 10_000_000 + i)
                    else:
                        wg.map(Cores(1), square, range(10_000_000, 10_000_000 + n),
                               window=n + 1)
                    await fake.take(n)                   # queued at the executor now
                    fake.submits.clear()
                    per_job = (tracemalloc.get_traced_memory()[0] - before) / n
                finally:
                    tracemalloc.stop()
                print(f"client memory per queued job ({how}): {per_job:.0f} bytes")
                wg.cancel()
            return per_job
    assert trio.run(main) <= 1024


def test_a_group_keeps_a_bounded_amount_of_output_in_all(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from grain.client import display
    monkeypatch.setattr(display, "KEEP_PER_GROUP", 10_000)

    async def main() -> grain.WaitGroup:
        async with scripted(View()) as (_, fake):
            async with grain.open_waitgroup() as wg:
                for i in range(20):
                    wg.submit(Cores(1), square, i)
                subs = await fake.take(20)
                for s in subs:
                    fake.started(s.cid)
                    fake.output(s.cid, 1, (f"{s.cid} " + "x" * 1000 + "\n").encode())
                    fake.result(s.cid, 0)
            return wg
    wg = trio.run(main)
    assert wg._kept_bytes <= 10_000
    assert wg.output(19).endswith("x" * 1000 + "\n")          # the latest are kept
    assert wg.output(0).startswith("… this job's output is no longer kept")
    assert sum(len(wg.output(i)) for i in range(20)) < 20 * 1000
