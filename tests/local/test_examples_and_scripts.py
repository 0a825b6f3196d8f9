"""Every example runs; scripts behave like users' scripts (``__main__``, Ctrl-C)."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(path, timeout=120, **kw):
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=timeout, cwd=kw.get("cwd", ROOT))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example):
    out = run(example)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_demo_reports_exact_pinning():
    out = run(ROOT / "examples" / "demo.py")
    assert "every job pinned to exactly its allocated cores" in out.stdout


def test_custom_resource_limits_concurrency():
    out = run(ROOT / "examples" / "licences.py")
    assert "peak concurrent licensed jobs: 2" in out.stdout, out.stdout + out.stderr


def test_external_program_inherits_pinning():
    out = run(ROOT / "examples" / "external_program.py")
    alloc = out.stdout.split("CPU_Cores([")[1].split("])")[0]
    assert f"[{alloc}] 1" in out.stdout


def test_main_module_functions_use_module_globals(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        import math
        import grain
        from grain.resource import Cores

        SCALE = 10

        class Point:
            def __init__(self, x):
                self.x = x

        def job(p):
            return math.floor(p.x * SCALE + 0.5), type(p).__name__

        async def main():
            async with grain.open_waitgroup() as wg:
                for i in range(3):
                    wg.submit(Cores(1), job, Point(i + 0.25))
            print(wg.results)

        grain.run_combine(main)
    """))
    out = run(script, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[(3, 'Point'), (13, 'Point'), (23, 'Point')]" in out.stdout


def test_a_program_holding_thousands_of_open_files_runs_its_jobs(tmp_path):
    """A program with more than 1,024 files open (select()'s limit) before it starts the
    embedded cluster: its runners get their socket at a descriptor number above that,
    and must still wait on it (they crashed: "filedescriptor out of range in select()")."""
    script = tmp_path / "many_files.py"
    script.write_text(textwrap.dedent("""
        import os, resource
        import grain
        from grain.resource import Cores

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        assert max(held) > 1024

        def square(x):
            return x * x

        async def main():
            async with grain.open_waitgroup() as wg:
                for i in range(6):
                    wg.submit(Cores(1), square, i)
            print(wg.results)

        grain.run_combine(main)
    """))
    out = run(script, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[0, 1, 4, 9, 16, 25]" in out.stdout


def start_sleepy_program(tmp_path, jobs):
    """A user program whose ``jobs`` one-core jobs sleep; returns it once their runners
    are up, with those runners."""
    script = tmp_path / "sleepy.py"
    script.write_text(textwrap.dedent(f"""
        import time, grain
        from grain.resource import Cores
        def sleepy():
            time.sleep(600)
        async def main():
            async with grain.open_waitgroup() as wg:
                for _ in range({jobs}):
                    wg.submit(Cores(1), sleepy)
                print("submitted", flush=True)
        grain.run_combine(main)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "submitted"
    want = min(jobs, len(os.sched_getaffinity(0)))
    deadline = time.monotonic() + 20
    runners = []
    while time.monotonic() < deadline and len(runners) < want:
        runners = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "grain.runner" in " ".join(p.cmdline())]
        time.sleep(0.05)
    assert runners, "the jobs' runners should be up"
    return proc, runners


def test_ctrl_c_stops_everything(tmp_path):
    proc, runners = start_sleepy_program(tmp_path, 4)
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode != 0
        gone, alive = psutil.wait_procs(runners, timeout=10)
        assert not alive, f"runners survived Ctrl-C: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_client_takes_its_runners_along(tmp_path):
    proc, runners = start_sleepy_program(tmp_path, 1)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(runners, timeout=10)
        assert not alive, "runners die with their worker (PR_SET_PDEATHSIG)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
