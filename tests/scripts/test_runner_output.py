"""A job's stdout and stderr, captured by its runner: whole lines, batched, bounded, and
always ahead of the job's result.

Two levels: the runner itself, driven over its socket pair exactly as a worker drives it
(every message it sends is read and checked: attribution to the right job when jobs are
chained, order, whole lines, cut lines, the budget, the runner's memory), and user
programs run as scripts whose jobs print from Python, C, ``os.system`` and subprocesses,
on the embedded cluster and over TCP, with the lines read through ``Session``'s
``on_output``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
from runner_cluster import RunScript, TcpCluster, last_json, tcp_cluster  # noqa: F401

from grain import config
from grain.local import embedded_runner_env
from grain.protocol import messages as m
from grain.protocol import payload as pl
from grain.protocol.messages import End
from grain.resource import Cores, to_wire
from grain.worker.runners import RunnerPool, RunnerProcess

pytestmark = pytest.mark.timeout(180)


# -- jobs (sent by value, as a script's functions are) ---------------------------------------
F = Callable[..., Any]


def script_function(fn: F) -> F:
    """Make ``fn`` travel as a function of a user's script does: by value (the runner does
    not import this test module)."""
    fn.__module__ = "__main__"
    return fn


@script_function
def speaks(tag: str) -> str:
    print(f"{tag} one")
    print(f"{tag} two", flush=False)
    sys.stderr.write(f"{tag} err\n")
    os.write(1, f"{tag} fd\n".encode())
    ctypes.CDLL(None).printf(f"{tag} from C\n".encode())
    os.system(f"echo {tag} system")           # noqa: S605
    subprocess.run(["echo", f"{tag} subprocess"], check=True)
    print(f"{tag} unfinished", end="")
    return tag


@script_function
def long_line(n: int) -> None:
    sys.stdout.write("é" * n + "\nafter\n")


@script_function
def floods(mib: int) -> int:
    """Writes ``mib`` MiB of 1 KiB lines; returns how much the runner's peak RSS grew."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunk = ("x" * 1023 + "\n") * 1024
    for _ in range(mib):
        sys.stdout.write(chunk)
    os.system(f"head -c {mib << 20} /dev/zero")   # noqa: S605 - and as many bytes from C
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


@script_function
def many_prints(n: int) -> None:
    for i in range(n):
        print(i)


@script_function
def returns(nbytes: int) -> bytes:
    return b"x" * nbytes


# -- driving a runner like a worker --------------------------------------------------------
def _job(jid: int, fid: int) -> m.RunnerJob:
    return m.RunnerJob(jid, fid, to_wire(Cores(1)), None, {}, "test")


async def _drive(runner: RunnerProcess, nursery: trio.Nursery, fn: Any,
                 calls: list[tuple[Any, ...]]) -> list[tuple[Any, bytes]]:
    """Send ``fn`` and one job per argument tuple in one write (chained, as the worker
    does), then read every message until the last job's ``RunnerDone``."""
    msgs: list[Any] = [(m.RunnerFunction(1), bytes(pl.dumps(fn)))]
    msgs += [(_job(j + 1, 1), bytes(pl.dumps((args, {})))) for j, args in enumerate(calls)]
    runner.send_soon(msgs, nursery)
    got: list[tuple[Any, bytes]] = []
    with trio.fail_after(120):
        while sum(type(h) is m.RunnerDone for h, _ in got) < len(calls):
            got.append(await runner.receive())
    return got


def _run(fn: Any, calls: list[tuple[Any, ...]], **pool: Any) -> list[tuple[Any, bytes]]:
    async def main() -> list[tuple[Any, bytes]]:
        p = RunnerPool(env=embedded_runner_env(), **pool)
        try:
            async with trio.open_nursery() as n:
                r = await p.acquire()
                got = await _drive(r, n, fn, calls)
                await p.release(r, True)
                return got
        finally:
            await p.aclose()
    return trio.run(main)


def _lines(got: list[tuple[Any, bytes]], jid: int, stream: int) -> list[str]:
    out = b"".join(p for h, p in got if type(h) is m.RunnerOutput and h.jid == jid
                   and h.stream == stream)
    return out.decode().splitlines(keepends=True)


def test_output_is_whole_lines_of_the_job_that_wrote_them_before_its_result() -> None:
    """Two chained jobs, each writing through Python, the fd, C, os.system and a
    subprocess: each line arrives once, whole, tagged with its own job, before that job's
    RunnerDone; stdout and stderr stay apart; a last unfinished line is closed."""
    got = _run(speaks, [("a",), ("b",)])
    kinds = [(type(h).__name__, h.jid) for h, _ in got]
    done_a = kinds.index(("RunnerDone", 1))
    assert all(jid == 1 for _, jid in kinds[:done_a + 1]), kinds
    assert all(jid == 2 for _, jid in kinds[done_a + 1:]), kinds
    for jid, tag in ((1, "a"), (2, "b")):
        out = _lines(got, jid, 1)
        assert sorted(out) == sorted(f"{tag} {w}\n" for w in (
            "one", "two", "fd", "from C", "system", "subprocess", "unfinished")), out
        assert out.index(f"{tag} one\n") < out.index(f"{tag} two\n") \
            < out.index(f"{tag} system\n") < out.index(f"{tag} subprocess\n")
        assert _lines(got, jid, 2) == [f"{tag} err\n"]
    for h, payload in got:
        if type(h) is m.RunnerOutput:
            assert payload.endswith(b"\n") and h.dropped == 0


def test_an_over_long_line_is_cut_with_a_marker_and_the_next_line_survives() -> None:
    n = config.OUTPUT_LINE_MAX    # characters of two bytes: twice the limit in bytes
    lines = _lines(_run(long_line, [(n,)]), 1, 1)
    assert len(lines) == 2 and lines[1] == "after\n", [x[-60:] for x in lines]
    cut = lines[0].encode()
    assert cut.endswith(f" [... line cut: {2 * n} bytes]\n".encode())
    assert len(cut) <= config.OUTPUT_LINE_MAX + 40
    assert lines[0].startswith("é" * 100), "cut at a character boundary, still UTF-8"


def test_a_flood_is_bounded_counted_and_costs_the_runner_no_memory() -> None:
    """100 MiB from Python and 100 MiB from a C program in one job: the runner sends its
    budget of whole lines and counts the rest; its peak RSS barely moves."""
    got = _run(floods, [(100,)])
    done = got[-1][0]
    assert type(done) is m.RunnerDone and done.end == End.OK
    growth = pl.loads(got[-1][1])
    assert growth < 32 << 20, f"the runner's peak RSS grew by {growth >> 20} MiB"
    sent = sum(len(p) for h, p in got if type(h) is m.RunnerOutput)
    dropped = sum(h.dropped for h, _ in got if type(h) is m.RunnerOutput)
    kept = sum(p.count(b"\n") for h, p in got if type(h) is m.RunnerOutput)
    assert 0 < sent <= config.OUTPUT_BYTES_PER_JOB
    assert kept + dropped == 100 * 1024 + 1, "every line is either sent or counted"


def test_prints_are_batched() -> None:
    got = _run(many_prints, [(2000,)])
    outs = [p for h, p in got if type(h) is m.RunnerOutput]
    assert b"".join(outs) == b"".join(b"%d\n" % i for i in range(2000))
    assert len(outs) < 200, f"{len(outs)} messages for 2000 prints"


def test_a_result_over_the_limit_is_refused_by_the_runner_which_goes_on() -> None:
    got = _run(returns, [(2 << 20,), (10,)], max_result=1 << 20)
    dones = [(h, p) for h, p in got if type(h) is m.RunnerDone]
    (big, big_payload), (small, small_payload) = dones
    assert big.end == End.REFUSED and big_payload == b""
    assert "over the size limit of 1 MiB" in big.message and "MAX_RESULT_BYTES" in \
        big.message, big.message
    assert small.end == End.OK and pl.loads(small_payload) == b"x" * 10


# -- user programs ------------------------------------------------------------------------
SCRIPT = """
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    import trio

    from grain import Cores
    from grain.client.api import open_session


    def report(n):
        for i in range(n):
            print(f"line {i}")
        os.system("echo from-system")
        subprocess.run([sys.executable, "-c", "print('from-child')"])
        print("to stderr", file=sys.stderr)
        return float(np.arange(n).sum())


    async def main():
        events = []
        kw = dict(address=sys.argv[1], token=sys.argv[2]) if len(sys.argv) > 2 else {}
        async with open_session(**kw) as s:
            ended = trio.Event()

            def on_output(stream, data, dropped):
                events.append(["output", stream, data.decode(), dropped])

            def on_end(ok, value):
                events.append(["end", ok, value])
                ended.set()
            s.submit(Cores(1), report, (5,), {}, on_end, on_output=on_output)
            await ended.wait()
        print(json.dumps(events))


    trio.run(main)
"""


def _check_program(events: list[list[Any]]) -> None:
    assert events[-1] == ["end", True, 10.0], events
    out = "".join(e[2] for e in events[:-1] if e[1] == 1)
    err = "".join(e[2] for e in events[:-1] if e[1] == 2)
    assert out == "".join(f"line {i}\n" for i in range(5)) + "from-system\nfrom-child\n"
    assert err == "to stderr\n"
    assert all(e[0] == "output" and e[3] == 0 for e in events[:-1])


def test_a_programs_job_output_arrives_before_its_result(run_script: RunScript) -> None:
    _check_program(last_json(run_script(SCRIPT)))


def test_a_programs_job_output_arrives_before_its_result_over_tcp(
        run_script: RunScript, tcp_cluster: TcpCluster) -> None:  # noqa: F811
    _check_program(last_json(run_script(SCRIPT, args=tcp_cluster.args)))
