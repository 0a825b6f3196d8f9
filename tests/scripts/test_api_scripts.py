"""The client API in programs run as ``python main.py``: job output at the submitter,
results kept after a failure and after Ctrl-C, ``return_exceptions`` with the script's own
exception class, ``grain.combine`` inside ``trio.run``, cancelling a retried job over TCP,
and watching the embedded cluster (``GRAIN_DASHBOARD=1``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from runner_cluster import (  # noqa: F401
    REPO,
    RunScript,
    TcpCluster,
    last_json,
    script_env,
    tcp_cluster,
)

pytestmark = pytest.mark.timeout(240)


OUTPUT = """
    import json
    import sys

    import numpy as np

    import grain
    from grain import Cores


    def speak(i):
        print(f"hello {i}")
        print(f"warn {i}", file=sys.stderr)
        print("two\\nlines")
        return int(np.int64(i) * 2)


    async def main():
        async with grain.open_waitgroup() as wg:
            for i in range(3):
                wg.submit(Cores(1), speak, i)
        one = await grain.exec1(Cores(1), speak, 7)
        return wg.results, one, wg.output(1), wg.output(2, "stderr")


    kw = dict(address=sys.argv[1], token=sys.argv[2]) if len(sys.argv) > 2 else {}
    if len(sys.argv) in (2, 4):
        kw["output"] = sys.argv[-1]
    results, one, text, err = grain.run_combine(main, progress=False, **kw)
    print(json.dumps({"results": results, "one": one, "text": text, "err": err}))
"""


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def _check_printed(proc: subprocess.CompletedProcess[str], worker: str) -> None:
    out = last_json(proc)
    assert out["results"] == [0, 2, 4] and out["one"] == 14
    assert out["text"] == "hello 1\nwarn 1\ntwo\nlines\n" or \
        sorted(out["text"].splitlines()) == sorted(["hello 1", "warn 1", "two", "lines"])
    assert out["err"] == "warn 2\n"
    stdout, stderr = _lines(proc.stdout), _lines(proc.stderr)
    for i in range(3):
        assert f"[speak#{i} @{worker}] hello {i}" in stdout
        assert f"[speak#{i} @{worker}] two" in stdout and f"[speak#{i} @{worker}] lines" in stdout
        assert f"[speak#{i} @{worker}] warn {i}" in stderr
        assert f"[speak#{i} @{worker}] warn {i}" not in stdout
    assert f"[speak @{worker}] hello 7" in stdout         # exec1: the function's name
    # whole lines only: every job line carries its prefix
    assert all(re.match(r"\[speak(#\d)? @\S+\] ", line) for line in stdout + stderr)


def test_job_output_is_printed_at_the_submitter(run_script: RunScript) -> None:
    _check_printed(run_script(OUTPUT), "local")


def test_job_output_over_tcp(run_script: RunScript,
                             tcp_cluster: TcpCluster) -> None:  # noqa: F811
    _check_printed(run_script(OUTPUT, args=tcp_cluster.args), "w1")


@pytest.mark.parametrize("how", ["option", "env"])
def test_job_output_can_be_silenced_and_still_read(run_script: RunScript, how: str) -> None:
    if how == "option":
        proc = run_script(OUTPUT, args=("off",))
    else:
        proc = run_script(OUTPUT, env={"GRAIN_OUTPUT": "0"})
    out = last_json(proc)
    assert "hello" not in proc.stdout.replace(json.dumps(out), "")
    assert "warn" not in proc.stderr
    assert "hello 1\n" in out["text"]


def test_job_output_to_a_file(run_script: RunScript, tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    proc = run_script(OUTPUT, args=(str(log),))
    last_json(proc)
    text = log.read_text()
    assert "[speak#0 @local] hello 0" in text and "[speak#0 @local stderr] warn 0" in text
    assert _lines(proc.stdout) == [] and _lines(proc.stderr) == []


KEEP = """
    import json
    import os
    import sys
    import time

    import grain
    from grain import Cores


    class Unlucky(Exception):
        pass


    def job(i, gate):
        if i == 5:
            while not os.path.exists(gate):      # fail once the others are in
                time.sleep(0.01)
            raise Unlucky(f"job {i}")
        if i == 6:
            time.sleep(600)                      # still running: cancelled by the failure
        return i * i


    async def main(gate):
        async with grain.open_waitgroup() as wg:
            for i in range(7):
                wg.submit(Cores(1), job, i, gate)
            async for _ in wg.as_completed():
                if len(wg.finished) == 5:
                    open(gate, "w").close()


    async def keep(gate):
        async with grain.open_waitgroup(return_exceptions=True) as wg:
            for i in range(6):
                wg.submit(Cores(1), job, i, gate)
        return wg.results


    gate = sys.argv[1]
    try:
        grain.run_combine(lambda: main(gate), output="off", progress=False)
    except Unlucky as e:                         # the script's own class, caught as itself
        finished = e.grain_finished
    results = grain.run_combine(lambda: keep(gate), output="off", progress=False)
    print(json.dumps({"finished": {str(k): v for k, v in finished.items()},
                      "kept": [r if not isinstance(r, Unlucky) else "Unlucky" for r in results]}))
"""


def test_a_failure_keeps_what_finished_and_return_exceptions_keeps_all(
        run_script: RunScript, tmp_path: Path) -> None:
    out = last_json(run_script(KEEP, args=(str(tmp_path / "gate"),)))
    assert out["finished"] == {str(i): i * i for i in range(5)}
    assert out["kept"] == [0, 1, 4, 9, 16, "Unlucky"]


CANCELLED = """
    import json

    import numpy as np

    import grain
    from grain import Cores


    def total(n):
        return int(np.arange(n).sum())


    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1), total, 4)
            async for _ in wg.as_completed():
                wg.cancel()                      # every job submitted so far has ended
        return wg.results, wg.finished


    results, finished = grain.run_combine(main, output="off", progress=False)
    print(json.dumps({"results": results, "finished": finished}))
"""


def test_a_cancelled_group_has_no_results_even_when_every_submitted_job_ended(
        run_script: RunScript) -> None:
    """docs/api.md: ``wg.results`` is ``[]`` after a cancellation (``wg.finished`` says
    what ended), also when the jobs submitted so far had all ended when it came."""
    out = last_json(run_script(CANCELLED))
    assert out == {"results": [], "finished": {"0": 6}}


CTRL_C = """
    import json
    import os
    import sys
    import time

    import grain
    from grain import Cores


    def job(i):
        if i >= 4:
            time.sleep(600)
        return i + 100


    async def main(ready):
        async with grain.open_waitgroup() as wg:
            for i in range(8):
                wg.submit(Cores(1), job, i)
            async for _ in wg.as_completed():
                if len(wg.finished) == 4:
                    open(ready, "w").close()     # the test presses Ctrl-C now


    try:
        grain.run_combine(lambda: main(sys.argv[1]), output="off", progress=False)
    except KeyboardInterrupt as e:
        print(json.dumps({str(k): v for k, v in e.grain_finished.items()}))
"""


def test_ctrl_c_keeps_what_finished(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text(textwrap.dedent(CTRL_C))
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "main.py", str(ready)], cwd=project,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=script_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the program never got its first results"
            time.sleep(0.02)
        kids = psutil.Process(p.pid).children(recursive=True)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert json.loads(out.strip().splitlines()[-1]) == {str(i): i + 100 for i in range(4)}, err
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"runners or jobs outlived the program: {alive}"


COMBINE = """
    import json

    import trio

    import grain
    from grain import Cores


    def square(x):
        return x * x


    async def main():
        async with grain.open_waitgroup() as wg:
            wg.map(Cores(1), square, range(10))
        return wg.results


    async def program():
        # a program that already runs trio: Grain is one of its tasks
        async with trio.open_nursery() as n:
            ticks = []

            async def ticker():
                while True:
                    ticks.append(1)
                    await trio.sleep(0.01)
            n.start_soon(ticker)
            first = await grain.combine(main, output="off", progress=False)
            second = await grain.combine(main, output="off", progress=False)
            n.cancel_scope.cancel()
        return first, second, len(ticks) > 0


    print(json.dumps(trio.run(program)))
"""


def test_combine_inside_trio_run(run_script: RunScript) -> None:
    first, second, ticked = last_json(run_script(COMBINE))
    assert first == second == [i * i for i in range(10)] and ticked


RETRY_CANCEL = """
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import trio

    import grain
    from grain import Cores


    class Flaky(Exception):
        pass


    def flaky_then_hang(d):
        d = Path(d)
        if not (d / "first").exists():
            (d / "first").write_text("")
            raise Flaky("first attempt")
        (d / "pid").write_text(str(os.getpid()))
        time.sleep(600)


    def cores_free():
        return "ok"


    async def main(d):
        pid_file = Path(d) / "pid"
        async with grain.open_waitgroup() as wg:
            for _ in range(2):                          # both cores of the worker
                wg.submit(Cores(1), flaky_then_hang, d)
            while not pid_file.exists():                # a retried attempt is running
                await trio.sleep(0.02)
            wg.cancel()
        with trio.fail_after(60):       # only runs if the cancelled jobs' cores came back
            async with grain.open_waitgroup() as again:
                for _ in range(2):
                    again.submit(Cores(1), cores_free)
        return int(pid_file.read_text()), again.results


    d, address, token = sys.argv[1:4]
    pid, after = grain.run_combine(lambda: main(d), address=address, token=token,
                                   temporary_err=(Flaky,), output="off", progress=False)
    print(json.dumps({"pid": pid, "after": after}))
"""


def test_cancelling_a_retried_job_over_tcp(run_script: RunScript, tmp_path: Path,
                                           tcp_cluster: TcpCluster) -> None:  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    out = last_json(run_script(RETRY_CANCEL, args=(str(marks), *tcp_cluster.args)))
    assert (marks / "first").exists() and out["after"] == ["ok", "ok"]
    gone, alive = psutil.wait_procs([psutil.Process(out["pid"])] if psutil.pid_exists(
        out["pid"]) else [], timeout=10)
    assert not alive, "the retried job still runs"


DASHBOARD = """
    import os
    import sys
    import time

    import grain
    from grain import Cores


    def wait(gate):
        while not os.path.exists(gate):
            time.sleep(0.02)
        return "done"


    async def main():
        print(await grain.exec1(Cores(1), wait, sys.argv[1]))


    grain.run_combine(main, output="off", progress=False)
"""


def test_dashboard_says_how_to_watch_and_attach(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text(textwrap.dedent(DASHBOARD))
    gate = tmp_path / "gate"
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        p = subprocess.Popen([sys.executable, "main.py", str(gate)], cwd=project,
                             stdout=subprocess.PIPE, stderr=err, text=True,
                             env=script_env({"GRAIN_DASHBOARD": "1"}),
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "grain: add workers" not in err_path.read_text():
            assert p.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.02)
        said = err_path.read_text()
        url = re.search(r"watch this run at (http://127\.0\.0\.1:\d+/)", said)
        status = re.search(r"grain status (--executor grain://127\.0\.0\.1:\d+ "
                           r"--token-file (\S+))", said)
        assert url and status, said
        token_file = Path(status.group(2))
        assert token_file.stat().st_mode & 0o077 == 0, "the token file is private"
        with urllib.request.urlopen(url.group(1) + "status", timeout=10) as r:  # noqa: S310
            doc: dict[str, Any] = json.loads(r.read())
        assert [w["name"] for w in doc["workers"]] == ["local"]
        cli = subprocess.run([sys.executable, "-m", "grain.cli", "status", "--json",
                              *status.group(1).split()], capture_output=True, text=True,
                             env=script_env(), timeout=60, cwd=REPO)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["running_jobs"] == 1
        gate.write_text("")
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "done" in out
    assert not token_file.exists(), "the token file is removed at the end"


def test_no_dashboard_lines_by_default(run_script: RunScript) -> None:
    proc = run_script(DASHBOARD.replace("sys.argv[1]", "__file__"))
    assert proc.returncode == 0 and "grain:" not in proc.stderr


ARGS = """
    import json
    import sys
    import grain

    async def main():
        return "ran"

    what = {"str": "abc", "bool": True, "int": 3}[sys.argv[1]]
    try:
        grain.run_combine(main, what)
    except TypeError as e:
        print(json.dumps(str(e)))
"""


@pytest.mark.parametrize("what", ["str", "bool", "int"])
def test_misread_arguments_fail_at_once_saying_how_to_pass_them(run_script: RunScript,
                                                                what: str) -> None:
    message = last_json(run_script(ARGS, args=(what,), timeout=20))
    assert "waddrs" in message and "functools.partial" in message


REMOTE_DASHBOARD = """
    import sys

    import grain
    from grain import Cores


    async def main():
        return await grain.exec1(Cores(1), abs, -3)


    print(grain.run_combine(main, address=sys.argv[1], token=sys.argv[2], dashboard=True))
"""


def test_dashboard_names_a_remote_executor(run_script: RunScript,
                                           tcp_cluster: TcpCluster) -> None:  # noqa: F811
    proc = run_script(REMOTE_DASHBOARD, args=tcp_cluster.args)
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr
    address = tcp_cluster.executor.address
    assert f"grain: this run's executor is {address}" in proc.stderr
    assert f"grain status --executor {address}" in proc.stderr
