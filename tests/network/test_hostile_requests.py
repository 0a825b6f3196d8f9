"""Hand-edited resource requests and greedy users, from real client programs.

A user can edit a request after building it (``m = Memory(1); m.m = -1000``) and can switch
the client library's own check off: the executor must refuse such requests by itself, with
``InvalidRequest`` naming the field, and nothing else may notice. The programs here are
run as users run them (``python main.py``, functions in ``__main__``, numpy imported at
the top) against a real executor and worker; a second user's jobs run throughout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from grain_harness import Harness, wait_until
from hostile_peers import files_in, last_json, run_program, start_program, write_program

pytestmark = pytest.mark.timeout(150)

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
WORKERS = "worker-secret-0123456789abcdef"

HOSTILE = """\
    import json
    import os
    import sys

    import numpy  # noqa: F401 - a user's program imports its libraries at the top
    import trio

    import grain
    import grain.client.session
    from grain import Cores, Memory, WTime
    from grain.errors import InvalidRequest

    # This user turned the client's own check of requests off: what reaches the executor
    # is exactly what the program built.
    grain.client.session.request_from_wire = lambda wire: None

    ADDRESS, TOKEN_FILE, MARKS = sys.argv[1:4]


    def touch(tag):
        with open(os.path.join(MARKS, tag), "w") as f:
            f.write(str(os.getpid()))
        return tag


    def requests():
        m = Memory(1)
        m.m = -1000
        half = Cores(1)
        half.N = 1.5
        negative = Cores(1)
        negative.N = -1
        huge = Cores(1)
        huge.N = 2 ** 40
        return {
            "negative memory": Cores(1) & m,
            "fractional cores": half,
            "NaN wall time": Cores(1) & WTime(float("nan")),
            "no cores": Cores(0),
            "negative cores": negative,
            "huge cores": huge,
        }


    async def one(res, tag, out):
        try:
            await grain.exec1(res, touch, tag)
            out[tag] = ["ran", ""]
        except InvalidRequest as e:
            out[tag] = ["InvalidRequest", str(e)]
        except Exception as e:
            out[tag] = [type(e).__name__, str(e)]


    async def main():
        out = {}
        for name, res in requests().items():
            await one(res, name, out)
        # forty at once, as in the report that started 40 runner processes
        async with trio.open_nursery() as n:
            for i in range(40):
                n.start_soon(one, Cores(0), f"zero-{i}", out)
        print(json.dumps(out))


    grain.run_combine(main, address=ADDRESS, token=open(TOKEN_FILE).read().strip())
"""

BYSTANDER = """\
    import json
    import os
    import sys
    import time

    import numpy  # noqa: F401
    import trio

    import grain
    from grain import Cores

    ADDRESS, TOKEN_FILE, MARKS, RELEASE = sys.argv[1:5]


    def hold(tag):
        # runs on a core until the test says so
        with open(os.path.join(MARKS, tag), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 90
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.02)
        return tag


    def square(x):
        return x * x


    async def main():
        async with grain.open_waitgroup() as wg:
            for i in range(2):
                wg.submit(Cores(1), hold, f"bob-{i}")
        held = wg.results
        async with grain.open_waitgroup() as wg:
            for i in range(20):
                wg.submit(Cores(1), square, i)
        print(json.dumps({"held": held, "squares": wg.results}))


    grain.run_combine(main, address=ADDRESS, token=open(TOKEN_FILE).read().strip())
"""

# what each refusal must name
FIELDS = {
    "negative memory": "Memory.m",
    "fractional cores": "Cores.N",
    "NaN wall time": "WTime.T",
    "no cores": "at least Cores(1)",
    "negative cores": "Cores.N",
    "huge cores": "Cores.N",
}


def _cluster(h: Harness, tmp: Path, tokens: str, cores: str = "0,1"):  # type: ignore[no-untyped-def]
    (tmp / "clients").write_text(tokens)
    (tmp / "alice.token").write_text(ALICE + "\n")
    (tmp / "bob.token").write_text(BOB + "\n")
    (tmp / "workers.token").write_text(WORKERS + "\n")
    ex = h.executor(extra=["--client-tokens", str(tmp / "clients"),
                           "--worker-token-file", str(tmp / "workers.token")])
    w = h.worker("wa", ex, cores=cores, token_file=tmp / "workers.token")
    return ex, w


def test_hand_edited_requests_are_refused_and_nobody_else_notices(grain_procs: Harness,
                                                                  tmp_path: Path) -> None:
    """Negative memory, fractional, zero, negative and absurd core counts, a NaN time
    limit, sent while every core is busy with another user's jobs: each is refused with
    InvalidRequest naming the field; nothing of them runs; the executor, the worker and
    the other user's jobs carry on as if nothing happened."""
    ex, worker = _cluster(grain_procs, tmp_path, f"alice {ALICE}\nbob {BOB}\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    release = tmp_path / "release"
    bob = start_program(write_program(tmp_path / "bob", BYSTANDER), ex.address,
                        str(tmp_path / "bob.token"), str(marks), str(release),
                        log=tmp_path / "bob.log", harness=grain_procs)
    wait_until(lambda: len(files_in(marks)) == 2, 30, "bob's jobs to hold both cores")
    ex.wait_status(lambda st: st["cores"]["free"] == 0 and st["running_jobs"] == 2, 10,
                   "both cores busy")

    alice = run_program(write_program(tmp_path / "alice", HOSTILE), ex.address,
                        str(tmp_path / "alice.token"), str(marks), timeout=60)
    out = last_json(alice)
    for name, field in FIELDS.items():
        kind, message = out[name]
        assert kind == "InvalidRequest" and field in message, (name, out[name])
    zeros = [out[f"zero-{i}"] for i in range(40)]
    assert all(k == "InvalidRequest" and "Cores(1)" in msg for k, msg in zeros), zeros
    # nothing of alice's ran: no marker, no runner beyond bob's, accounting unchanged
    assert files_in(marks) == ["bob-0", "bob-1"]
    st = ex.status()
    assert st["running_jobs"] == 2 and st["queue_length"] == 0 and st["cores"]["free"] == 0
    assert [w["name"] for w in st["workers"]] == ["wa"]

    release.write_text("go")
    assert bob.wait(60) == 0, (tmp_path / "bob.log").read_text()
    done = [line for line in (tmp_path / "bob.log").read_text().splitlines() if line.strip()]
    assert done[-1] == '{"held": ["bob-0", "bob-1"], "squares": ' \
        + str([i * i for i in range(20)]) + "}"
    assert ex.alive() and worker.alive()
    # the worker's link never dropped, and the executor logged no error of its own
    assert not re.search(r"worker wa (lost|gone)", ex.text()), ex.tail()
    assert "executor link closed" not in worker.text(), worker.tail()
    assert "Traceback" not in ex.text(), ex.tail(80)
    ex.wait_idle()


QUEUER = """\
    import json
    import os
    import sys
    import time

    import numpy  # noqa: F401
    import trio

    import grain
    from grain import Cores
    from grain.errors import LimitExceeded

    ADDRESS, TOKEN_FILE, RELEASE, N = sys.argv[1:5]


    def hold(i):
        deadline = time.monotonic() + 90
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.02)
        return i


    async def one(i, out):
        try:
            out[i] = ["ok", await grain.exec1(Cores(1), hold, i)]
        except LimitExceeded as e:
            out[i] = ["LimitExceeded", str(e)]
        except Exception as e:
            out[i] = [type(e).__name__, str(e)]


    async def main():
        out = {}
        async with trio.open_nursery() as n:
            for i in range(int(N)):
                n.start_soon(one, i, out)
                await trio.sleep(0.05)   # in order: the first ones are queued first
        print(json.dumps([out[i] for i in range(int(N))]))


    grain.run_combine(main, address=ADDRESS, token=open(TOKEN_FILE).read().strip())
"""


def test_per_user_queue_limit_is_a_clear_error(grain_procs: Harness, tmp_path: Path) -> None:
    """``max-queued=5`` in the client tokens file: with the only core busy, alice's first
    job runs, the next five queue, and the rest fail at once with LimitExceeded naming the
    limit; bob, who has no such limit, is not affected by alice's."""
    ex, _ = _cluster(grain_procs, tmp_path,
                     f"alice {ALICE} max-queued=5\nbob {BOB}\n", cores="0")
    release = tmp_path / "release"
    prog = write_program(tmp_path / "queuer", QUEUER)
    alice = start_program(prog, ex.address, str(tmp_path / "alice.token"), str(release), "9",
                          log=tmp_path / "alice.log", harness=grain_procs)
    ex.wait_status(lambda st: st["running_jobs"] == 1 and st["queue_length"] == 5, 30,
                   "alice's first job running and five queued")
    bob = start_program(prog, ex.address, str(tmp_path / "bob.token"), str(release), "8",
                        log=tmp_path / "bob.log", harness=grain_procs)
    ex.wait_status(lambda st: st["queue_length"] == 13, 30, "bob's eight jobs queued too")
    release.write_text("go")
    assert alice.wait(60) == 0 and bob.wait(60) == 0
    alice_out = last_line_json(tmp_path / "alice.log")
    assert alice_out[:6] == [["ok", i] for i in range(6)], alice_out
    for kind, message in alice_out[6:]:
        assert kind == "LimitExceeded", alice_out
        assert "user alice already has 5 jobs queued" in message and "max-queued" in message
    assert last_line_json(tmp_path / "bob.log") == [["ok", i] for i in range(8)]
    assert ex.alive()
    ex.wait_idle()


def last_line_json(log: Path):  # type: ignore[no-untyped-def]
    import json
    return json.loads([x for x in log.read_text().splitlines() if x.strip()][-1])
