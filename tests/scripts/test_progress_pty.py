"""Progress rows in a real terminal: programs run as ``python main.py`` on a
pseudo-terminal show one live display (a row per wait group, nested groups included), job
output lines scroll above it whole, and nothing is drawn through a pipe, with
``progress=False`` or with ``GRAIN_PROGRESS=0``."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from runner_cluster import script_env

pytestmark = pytest.mark.timeout(180)


BAR = "━"

SCRIPT = """
    import sys
    import time

    import grain
    from grain import Cores


    def tick(i):
        time.sleep(0.02)
        print(f"line {i} of the job")
        return i


    async def inner(k):
        async with grain.open_waitgroup(name=f"inner {k}") as wg:
            for i in range(8):
                wg.submit(Cores(1), tick, i)
        return sum(wg.results)


    async def main():
        async with grain.open_waitgroup(name="sweep") as wg:
            for i in range(24):
                wg.submit(Cores(1), tick, i)
        async with grain.open_waitgroup(name="outer") as outer:
            for k in range(10):
                outer.start_subtask(inner, k)
        print("RESULTS", sum(wg.results), outer.results)


    kw = {"progress": False} if sys.argv[1:] == ["off"] else {}
    grain.run_combine(main, **kw)
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_pty(project: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
               timeout: float = 120) -> tuple[int, str]:
    """Run ``python main.py`` with stdout and stderr on a pseudo-terminal of 120x40;
    return its exit code and everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    p = subprocess.Popen([sys.executable, "main.py", *args], cwd=project, stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave,
                         env=script_env({"TERM": "xterm-256color", **(env or {})}))
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
            try:
                data = os.read(master, 65536)
            except OSError:           # EIO: the program closed the terminal (it exited)
                break
            if not data:
                break
            chunks.append(data)
        code = p.wait(timeout=30)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "main.py").write_text(textwrap.dedent(SCRIPT))
    return d


def test_a_terminal_shows_rows_and_output_above_them(project: Path) -> None:
    code, drawn = run_on_pty(project)
    text = ANSI.sub("", drawn)
    assert code == 0, text[-3000:]
    assert BAR in text, text[-3000:]
    assert "sweep" in text and "24/24" in text and "jobs/s" in text
    assert "outer" in text and "10/10" in text
    assert re.search(r"inner \d", text), "nested groups have rows of their own"
    assert "RESULTS 276 [28, 28, 28, 28, 28, 28, 28, 28, 28, 28]" in text
    for i in range(24):        # every job line arrives whole, prefixed
        assert f"@local] line {i} of the job" in text
    assert "Only one live display" not in text


def test_nothing_is_drawn_through_a_pipe(project: Path) -> None:
    proc = subprocess.run([sys.executable, "main.py"], cwd=project, capture_output=True,
                          text=True, env=script_env({"TERM": "xterm-256color"}), timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert BAR not in proc.stdout + proc.stderr and "\x1b[" not in proc.stdout
    assert "RESULTS 276" in proc.stdout


@pytest.mark.parametrize("how", ["option", "env"])
def test_progress_can_be_turned_off_in_a_terminal(project: Path, how: str) -> None:
    if how == "option":
        code, drawn = run_on_pty(project, args=("off",))
    else:
        code, drawn = run_on_pty(project, env={"GRAIN_PROGRESS": "0"})
    assert code == 0, drawn[-3000:]
    assert BAR not in drawn and "jobs/s" not in drawn
    assert "RESULTS 276" in drawn
