"""A job's processes end with the job, by every path: it returns, raises, is cancelled,
runs past its WTime or past its Memory. Children, grandchildren and double-forked
``setsid`` daemons included (the runner is their subreaper). And memory accounting counts
only the current job's processes: a previous job's leftovers no longer exist to count.

On the embedded cluster and on a real ``grain worker`` process (over TCP). Each job reports
the pids it started through a file, so that even a killed job's processes can be checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import grain
from grain import errors
from grain.resource import Cores, Memory, WTime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))
from grain_harness import ExecutorProc, Harness, run_client  # noqa: E402
from support.waiting import wait_until_async  # noqa: E402 - on the path: grain_harness

pytestmark = pytest.mark.timeout(180)
F = Callable[..., Any]


def script_function(fn: F) -> F:
    """Send ``fn`` by value, as a user's script's functions travel (a worker process
    cannot import this test module)."""
    fn.__module__ = "__main__"
    return fn


@script_function
def fork_and(path: str, then: str) -> Any:
    """Start a child (``sleep``), a grandchild (a shell's ``sleep``) and a double-forked
    setsid daemon; write their pids to ``path``; then return, raise, hang or grow."""
    import json
    import os
    import subprocess
    import sys
    import time
    child = subprocess.Popen(["sleep", "300"])
    shell = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
    assert shell.stdout is not None
    grandchild = int(shell.stdout.readline())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:          # the classic daemon: fork, setsid, fork again, parent exits
        try:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                time.sleep(300)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    daemon = int(os.read(r, 32))
    os.close(r)
    pids = [child.pid, shell.pid, grandchild, daemon]
    if then == "grow":      # a child far over the job's Memory request
        pids.append(subprocess.Popen([sys.executable, "-c", "import time\n"
                                      "b = b'x' * (700 << 20)\ntime.sleep(300)"]).pid)
    with open(path + ".tmp", "w") as f:
        json.dump(pids, f)
    os.rename(path + ".tmp", path)
    if then == "raise":
        raise RuntimeError("failed after forking")
    if then == "exit":      # the runner itself dies abruptly, nobody left to clean up
        os._exit(3)
    if then in ("hang", "grow"):
        time.sleep(300)
    return os.getpid()


@script_function
def leave_a_fat_child() -> int:
    """Start a child holding 500 MB and return at once (without the cleanup it would
    outlive the job and be counted against the runner's next job)."""
    import os
    import subprocess
    import sys
    fat = subprocess.Popen([sys.executable, "-c", "import sys, time\nb = b'x' * (500 << 20)\n"
                            "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(300)"],
                           stdout=subprocess.PIPE)
    assert fat.stdout is not None
    fat.stdout.readline()   # it holds its 500 MB now
    return os.getpid()


@script_function
def small_job() -> int:
    import os
    import time
    time.sleep(1.0)   # several memory samples of this job
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pids(path: Path) -> list[int]:
    return [int(p) for p in json.loads(path.read_text())]


async def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Pids still running after ``timeout`` (a kill from outside takes a moment to land;
    the embedded cluster runs in this loop, so the wait must not block it)."""
    with trio.move_on_after(timeout):
        while any(_alive(p) for p in pids):
            await trio.sleep(0.02)
    return [p for p in pids if _alive(p)]


# -- the cases, each a main() for run_combine ------------------------------------------------
def case_returns(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        await grain.exec1(Cores(1), fork_and, str(tmp / "r"), "return")
        pids = _pids(tmp / "r")
        # nothing waited for: the runner killed and reaped them before it replied
        return [p for p in pids if _alive(p)]
    return main


def case_raises(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        with pytest.raises(RuntimeError, match="failed after forking"):
            await grain.exec1(Cores(1), fork_and, str(tmp / "e"), "raise")
        return [p for p in _pids(tmp / "e") if _alive(p)]
    return main


def case_cancelled(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        async with trio.open_nursery() as n:
            n.start_soon(grain.exec1, Cores(1), fork_and, str(tmp / "c"), "hang")
            pids = await wait_until_async(lambda: _pids(tmp / "c"), 30, "the job's pids")
            assert all(_alive(p) for p in pids)
            n.cancel_scope.cancel()
        return await _gone(pids)
    return main


def case_wtime(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        with pytest.raises(errors.JobTimeout):
            await grain.exec1(Cores(1) & WTime(3), fork_and, str(tmp / "t"), "hang")
        return await _gone(_pids(tmp / "t"))
    return main


def case_memory(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        with pytest.raises(errors.MemoryLimitExceeded):
            await grain.exec1(Cores(1) & Memory(0.3), fork_and, str(tmp / "m"), "grow")
        return await _gone(_pids(tmp / "m"))
    return main


def case_leftovers_do_not_count(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        first = await grain.exec1(Cores(2), leave_a_fat_child)
        second = await grain.exec1(Cores(2) & Memory(0.3), small_job)
        assert first == second, "both jobs ran in the same runner"
        return []
    return main


CASES = [case_returns, case_raises, case_cancelled, case_wtime, case_memory,
         case_leftovers_do_not_count]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_a_jobs_processes_end_with_it_on_the_embedded_cluster(case: Callable[..., Any],
                                                               tmp_path: Path) -> None:
    assert grain.run_combine(case(tmp_path), output="off", progress=False) == []


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[ExecutorProc]:
    """An executor and a ``grain worker`` with two cores (stopped before the check that
    no runner outlives its test)."""
    (tmp_path / "cluster").mkdir()
    h = Harness(tmp_path / "cluster")
    try:
        ex = h.executor()
        h.worker("w1", ex, cores="0,1", memory="4GB")
        yield ex
    finally:
        problems = h.cleanup()
        assert not problems, "processes outlived their worker:\n" + "\n".join(problems)


def case_runner_dies(tmp: Path) -> Callable[[], Any]:
    async def main() -> list[int]:
        with pytest.raises(errors.RunnerCrashed):
            await grain.exec1(Cores(1), fork_and, str(tmp / "x"), "exit")
        return await _gone(_pids(tmp / "x"))
    return main


@pytest.mark.parametrize("case", [*CASES, case_runner_dies], ids=lambda c: c.__name__[5:])
def test_a_jobs_processes_end_with_it_on_a_worker_process(case: Callable[..., Any],
                                                          tmp_path: Path,
                                                          worker_process: ExecutorProc) -> None:
    assert run_client(worker_process, case(tmp_path), limit=60, output="off",
                      progress=False) == []


def test_the_runner_is_the_subreaper_of_its_jobs_processes(tmp_path: Path) -> None:
    """Without the subreaper, the daemon's parent would be init (pid 1), out of reach."""
    @script_function
    def daemon_parent(path: str) -> tuple[int, int]:
        import os
        import time
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(0.3)
                    with open(path, "w") as f:
                        f.write(str(os.getppid()))
                    time.sleep(300)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        while not os.path.exists(path) or not open(path).read():
            time.sleep(0.01)
        return os.getpid(), int(open(path).read())

    async def main() -> Any:
        return await grain.exec1(Cores(1), daemon_parent, str(tmp_path / "ppid"))
    runner, parent = grain.run_combine(main, output="off", progress=False)
    assert parent == runner


def test_no_job_process_survives_a_worker_exit(tmp_path: Path) -> None:
    """The worker stops (Ctrl-C) while a job's processes run: none of them survives."""
    h = Harness(tmp_path)
    try:
        ex = h.executor()
        w = h.worker("w1", ex, cores="0")
        out = tmp_path / "pids"
        client = subprocess.Popen(
            [sys.executable, "-c", "import grain, sys\n"
             "from grain import Cores\n"
             "sys.path.insert(0, sys.argv[3])\n"
             "from test_job_processes import fork_and\n"
             "async def main():\n"
             "    await grain.exec1(Cores(1), fork_and, sys.argv[4], 'hang')\n"
             "grain.run_combine(main, address=sys.argv[1], token=sys.argv[2])\n",
             ex.address, h.token, str(Path(__file__).parent), str(out)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not out.exists():
                assert time.monotonic() < deadline and client.poll() is None
                time.sleep(0.05)
            pids = _pids(out)
            w.stop()
            assert trio.run(_gone, pids) == []
        finally:
            client.kill()
            client.wait()
    finally:
        assert not h.cleanup()
