"""What cannot be copied into a job meaningfully is refused when the job is submitted,
with a ``SerializationError`` naming the object and where the job holds it: a lock (a copy
protects nothing; one copied while held deadlocks every job), an open file, a socket, a
generator; the program goes on. And runners are reused, so a module global of the script
persists between jobs of one runner, and of one program only.
"""

from __future__ import annotations

import pytest
from runner_cluster import RunScript, TcpCluster, last_json, tcp_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(180)

SCRIPT = """
    import json
    import socket
    import sys
    import threading

    import grain
    from grain import Cores
    from grain.errors import SerializationError

    LOCK = threading.Lock()
    LOG = open(__file__)
    CALLS = []


    def locked():
        with LOCK:
            return 1


    def reads():
        return LOG.readline()


    def takes(x):
        return type(x).__name__


    def counts():
        CALLS.append(1)
        return len(CALLS)


    async def main():
        out = {}
        LOCK.acquire()     # held while the job is submitted: a copy would deadlock there
        for name, fn, args in [("lock", locked, ()), ("file", reads, ()),
                               ("socket", takes, (socket.socket(),)),
                               ("generator", takes, ((i for i in range(3)),)),
                               ("event", takes, ({"ready": threading.Event()},))]:
            try:
                await grain.exec1(Cores(1), fn, *args)
                out[name] = "submitted"
            except SerializationError as e:
                out[name] = str(e)
        LOCK.release()
        out["after"] = await grain.exec1(Cores(1), takes, [1])
        # one runner at a time (the whole machine): module globals persist in it
        out["globals"] = [await grain.exec1(Cores(2), counts) for _ in range(3)]
        print(json.dumps(out))


    kw = dict(address=sys.argv[1], token=sys.argv[2]) if len(sys.argv) > 2 else {}
    grain.run_combine(main, output="off", progress=False, **kw)
"""


def test_objects_that_cannot_be_copied_are_refused_at_submit(run_script: RunScript) -> None:
    out = last_json(run_script(SCRIPT))
    assert "a threading lock <locked _thread.lock" in out["lock"], out
    assert "global LOCK of locked" in out["lock"] and "function 'locked'" in out["lock"], out
    assert "an open file" in out["file"] and "global LOG of reads" in out["file"], out
    assert "a socket" in out["socket"] and "an argument of job takes" in out["socket"], out
    assert "a generator" in out["generator"], out
    assert "a threading lock" in out["event"] and "['ready']._cond._lock" in out["event"], out
    assert out["after"] == "list"
    assert out["globals"] == [1, 2, 3], "a runner keeps its module globals between jobs"


def test_module_globals_are_not_shared_between_programs(
        run_script: RunScript, tcp_cluster: TcpCluster) -> None:  # noqa: F811
    """Two programs (sessions) on one worker never share a runner, so never a global."""
    first = last_json(run_script(SCRIPT, args=tcp_cluster.args))
    second = last_json(run_script(SCRIPT, args=tcp_cluster.args))
    assert first["globals"] == second["globals"] == [1, 2, 3]
