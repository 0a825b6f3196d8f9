"""Hostile jobs: a job owns its runner process, so it can write anything to the runner's
socket, return a result far over the limits, or kill its worker. The worker must survive
everything short of being killed itself; a job that kills workers must not be retried
onto worker after worker; another user's jobs carry on throughout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from grain_harness import Harness
from hostile_peers import last_json, run_program, start_program, write_program

pytestmark = pytest.mark.timeout(180)

HOSTILE = """\
    import json
    import os
    import sys
    import time

    import numpy  # noqa: F401 - a user's program imports its libraries at the top
    import trio

    import grain
    from grain import Cores, Memory

    ADDRESS, TOKEN_FILE, WHAT = sys.argv[1:4]


    def runner_socket():
        # the runner is started as `python -m grain.runner FD WORKER_PID`: the job runs
        # inside it and holds the socket to the worker like the runner does
        return int(sys.argv[1])


    def garbage():
        os.write(runner_socket(), b"\\xde\\xad\\xbe\\xef" * 2)
        time.sleep(30)
        return "not reached"


    def lies():
        # a well-framed runner message answering for a job the runner is not running
        from grain.protocol import messages as m
        from grain.protocol.frames import encode
        os.write(runner_socket(), encode(m.RunnerDone(987654, 0, ""), b"\\x80\\x04N."))
        time.sleep(30)
        return "not reached"


    def forge():
        # well-formed answers for the ids a worker counting its jobs from one would give
        # (this is the first job on a fresh worker), then a proper return: a made-up
        # answer must not pass for this job's own
        from grain.protocol import messages as m
        from grain.protocol.frames import encode
        for jid in range(1, 64):
            os.write(runner_socket(), encode(m.RunnerDone(jid, 0, ""), b"\\x80\\x04N."))
        return "made up"


    def huge():
        return numpy.zeros(int(1.1 * 2 ** 30), dtype=numpy.uint8)


    def kill_worker():
        os.kill(os.getppid(), 9)
        time.sleep(30)


    def ok(i):
        return i


    async def main():
        fn = {"garbage": garbage, "lies": lies, "forge": forge, "huge": huge,
              "kill": kill_worker}[WHAT]
        res = Cores(1) & Memory(3) if WHAT == "huge" else Cores(1)
        t0 = time.monotonic()
        try:
            await grain.exec1(res, fn)
            out = {"kind": "ok", "message": ""}
        except Exception as e:
            out = {"kind": type(e).__name__, "message": str(e)}
        out["seconds"] = time.monotonic() - t0
        # the same program goes on: its next jobs run
        out["after"] = [await grain.exec1(Cores(1), ok, i) for i in range(3)]
        print(json.dumps(out))


    grain.run_combine(main, address=ADDRESS, token=open(TOKEN_FILE).read().strip(),
                      heartbeat=0.5, timeout=2)
"""

BYSTANDER = """\
    import json
    import os
    import sys
    import time

    import grain
    from grain import Cores

    ADDRESS, TOKEN_FILE, STOP = sys.argv[1:4]


    def square(x):
        time.sleep(0.01)
        return x * x


    async def main():
        rounds = 0
        while not os.path.exists(STOP) or rounds < 3:
            async with grain.open_waitgroup() as wg:
                for i in range(10):
                    wg.submit(Cores(1), square, i)
            assert wg.results == [i * i for i in range(10)], wg.results
            rounds += 1
        print(json.dumps({"rounds": rounds}))


    grain.run_combine(main, address=ADDRESS, token=open(TOKEN_FILE).read().strip(),
                      heartbeat=0.5, timeout=2)
"""


def _bystander(h: Harness, tmp: Path, ex_address: str):  # type: ignore[no-untyped-def]
    stop = tmp / "stop"
    p = start_program(write_program(tmp / "bystander", BYSTANDER), ex_address,
                      str(h.token_file), str(stop), log=tmp / "bystander.log", harness=h)
    return p, stop


def _finish_bystander(p, stop: Path, log: Path) -> dict:  # type: ignore[no-untyped-def]
    stop.write_text("stop")
    assert p.wait(60) == 0, log.read_text()
    import json
    out = json.loads([x for x in log.read_text().splitlines() if x.strip()][-1])
    assert out["rounds"] >= 3
    return out


@pytest.mark.parametrize("what, words", [
    ("garbage", "sent garbage to the worker"),
    ("lies", "answered for job 987654"),
])
def test_a_job_writing_to_its_runner_socket_fails_alone(grain_procs: Harness, tmp_path: Path,
                                                        what: str, words: str) -> None:
    """A job writes bytes that are not the runner protocol (or a well-formed lie) into its
    runner's socket: that job fails with RunnerCrashed saying so, its runner is replaced,
    the worker stays up, and another program's jobs on the same worker run throughout."""
    ex = grain_procs.executor()
    worker = grain_procs.worker("wa", ex, cores="0,1")
    pid = worker.pid
    by, stop = _bystander(grain_procs, tmp_path, ex.address)
    prog = write_program(tmp_path / "hostile", HOSTILE)
    out = last_json(run_program(prog, ex.address, str(grain_procs.token_file), what,
                                timeout=60))
    assert out["kind"] == "RunnerCrashed" and words in out["message"], out
    assert out["after"] == [0, 1, 2]
    _finish_bystander(by, stop, tmp_path / "bystander.log")
    assert worker.alive() and worker.pid == pid
    assert [w["name"] for w in ex.status()["workers"]] == ["wa"]
    assert "executor link closed" not in worker.text(), worker.tail()
    ex.wait_idle()


def test_a_made_up_answer_naming_a_guessable_id_fails_its_job_not_the_next(
        grain_procs: Harness, tmp_path: Path) -> None:
    """The first job on a fresh worker writes well-formed ``RunnerDone`` answers for ids
    1-63 into its runner's socket and returns: none names the job (its id on the runner is
    random), so it fails with RunnerCrashed, and the same program's next jobs run (a
    made-up answer taken for its own would end it early, and its runner's true answer
    would then fail the next job on that runner)."""
    ex = grain_procs.executor()
    worker = grain_procs.worker("wa", ex, cores="0,1")
    prog = write_program(tmp_path / "hostile", HOSTILE)
    out = last_json(run_program(prog, ex.address, str(grain_procs.token_file), "forge",
                                timeout=60))
    assert out["kind"] == "RunnerCrashed" and "answered for job" in out["message"], out
    assert out["after"] == [0, 1, 2]
    assert worker.alive()
    ex.wait_idle()


def test_a_result_over_a_gibibyte_fails_the_job_not_the_worker(grain_procs: Harness,
                                                               tmp_path: Path) -> None:
    """A job returns 1.1 GiB: it fails with an error naming the limit, the worker stays up
    and registered (it never buffers the result), and another program is unaffected."""
    ex = grain_procs.executor()
    worker = grain_procs.worker("wa", ex, cores="0,1", memory="8GB")
    by, stop = _bystander(grain_procs, tmp_path, ex.address)
    prog = write_program(tmp_path / "hostile", HOSTILE)
    out = last_json(run_program(prog, ex.address, str(grain_procs.token_file), "huge",
                                timeout=120))
    assert out["kind"] in ("LimitExceeded", "RunnerCrashed"), out
    assert "limit" in out["message"], out
    assert out["after"] == [0, 1, 2]
    _finish_bystander(by, stop, tmp_path / "bystander.log")
    assert worker.alive()
    assert [w["name"] for w in ex.status()["workers"]] == ["wa"]
    assert "executor link closed" not in worker.text(), worker.tail()
    ex.wait_idle()


def test_a_job_that_kills_its_worker_is_not_retried_onto_worker_after_worker(
        grain_procs: Harness, tmp_path: Path) -> None:
    """With the executor's default retries, a job that SIGKILLs its worker takes at most
    two workers with it (the first loss is retried, the second fails the job with
    WorkerLost naming both); the third worker, and the other program, carry on."""
    ex = grain_procs.executor()   # default --retries
    workers = {n: grain_procs.worker(n, ex, cores=c) for n, c in
               (("wa", "0"), ("wb", "1"), ("wc", "0"))}
    prog = write_program(tmp_path / "hostile", HOSTILE)
    proc = run_program(prog, ex.address, str(grain_procs.token_file), "kill", timeout=90)
    out = last_json(proc)
    dead = [n for n, w in workers.items() if not w.alive()]
    assert len(dead) == 2, (dead, out)
    assert out["kind"] == "WorkerLost", out
    tried = re.search(r"tried on: (\w+), (\w+)\)", out["message"])
    assert tried and set(tried.groups()) == set(dead), out
    assert "not retried again" in out["message"], out
    survivor, = set(workers) - set(dead)
    st = ex.status()
    assert [w["name"] for w in st["workers"]] == [survivor]
    assert st["jobs"]["retried"] == 1
    # the survivor serves another program
    by, stop = _bystander(grain_procs, tmp_path, ex.address)
    _finish_bystander(by, stop, tmp_path / "bystander.log")
    assert workers[survivor].alive()
