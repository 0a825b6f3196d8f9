"""Peers that leave the executor leave no garbage cycles behind.

The executor's scheduled full collections freeze what survives them (``heap``): a frozen
object is still freed by reference counting, but a *cycle* of frozen objects is found only
by a deep collection, which thaws and walks everything (45-76 ms at 1,000 workers, the
event loop stopped). If a peer's departure left cycles, every departure would need one.
This test has the real executor (``gc_probe_executor.py`` runs ``run_executor``) freeze
everything while peers of every kind are connected, lets each leave in its own way, and
then asks what a deep walk would find that reference counting has not freed: nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from grain_harness import (
    HEARTBEAT,
    NET_DIR,
    TIMEOUT,
    ExecutorProc,
    Harness,
    wait_markers,
    wait_until,
)
from hostile_peers import RawPeer

from grain.protocol import messages as m
from grain.protocol.frames import PREFIX

pytestmark = pytest.mark.timeout(120)

GRACE = 1.0   # a lost client's jobs and a lost worker's are given up this soon


def _probe_executor(h: Harness) -> ExecutorProc:
    p = ExecutorProc("executor", ["grain://127.0.0.1:0", "127.0.0.1:0", str(h.token_file),
                                  str(HEARTBEAT), str(TIMEOUT), str(GRACE)],
                     h.tmp / "executor.log", h.tmp,
                     program=[sys.executable, str(NET_DIR / "gc_probe_executor.py")])
    p.host = "127.0.0.1"
    h.procs.append(p)
    return p.ready()


def _signal(ex: ExecutorProc, sig: int, answer: str) -> str:
    """Send ``sig``; the rest of the line the executor answers with (``answer`` first)."""
    ex.popen.send_signal(sig)
    return ex.wait_for(rf"(?m)^{answer}(.*)$", 30).group(1)


def test_departed_peers_leave_no_cycles_for_the_deep_collection(grain_procs: Harness,
                                                                  tmp_path: Path) -> None:
    h = grain_procs
    ex = _probe_executor(h)
    h.worker("stays", ex, cores="0")
    killed_worker = h.worker("killed", ex, cores="1")
    stopped_worker = h.worker("stopped", ex, cores="0")
    polite = h.python(NET_DIR / "lingering_client.py", ex.address, str(h.token_file), "5",
                      log="lingering", stdin=subprocess.PIPE)
    wait_until(lambda: any("ready" in p.read_text() for p in h.tmp.glob("*-lingering.log")),
               60, "the lingering client to have run its jobs")
    marks = str(tmp_path / "marks")
    # three jobs run (one on each worker), two wait: the client is then killed
    killed_client = h.python(NET_DIR / "client_prog.py", ex.address, str(h.token_file),
                             marks, "long", "5", "60", log="killed-client")

    async def main() -> None:
        await wait_markers(marks, 3, limit=60)
        rude = await RawPeer.connect(ex.port)            # will send garbage
        await rude.send([(m.Ping(), b"")])
        half = await trio.open_tcp_stream("127.0.0.1", ex.port)   # never authenticates
        st = await trio.to_thread.run_sync(ex.status)
        assert st["sessions"] == 3 and len(st["workers"]) == 3, st
        assert st["running_jobs"] == 3, st
        # everything the peers hold in the executor is frozen now, as the scheduled
        # collections freeze what survives them
        await trio.to_thread.run_sync(_signal, ex, signal.SIGUSR1, "frozen ")

        polite.stdin.write(b"go\n")           # a program that ends: its session says bye
        polite.stdin.flush()
        killed_client.kill()                  # a reset, with jobs running and queued
        killed_worker.kill(signal.SIGKILL)    # a reset, with a job running
        stopped_worker.stop()                 # Ctrl-C: a worker that says goodbye
        await rude.send_raw(PREFIX.pack(3, 0) + b"\xc1\xc1\xc1")   # dropped as malformed
        await half.aclose()
        await trio.to_thread.run_sync(polite.wait, 30)
        assert polite.returncode == 0
        await rude.aclose()

    trio.run(main)
    ex.wait_status(lambda st: st["sessions"] == 0 and [w["name"] for w in st["workers"]]
                   == ["stays"] and st["running_jobs"] == 0 and st["queue_length"] == 0,
                   30, "every peer but one worker to be gone, and their jobs with them")
    found = json.loads(_signal(ex, signal.SIGUSR2, "check 1: "))
    assert found == {}, f"cycles left behind by departed peers: {found}"
