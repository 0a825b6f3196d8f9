"""``python -m bench.capacity``: one ``grain executor`` process over real TCP against many
simulated workers (``bench.simworker``) and a protocol-level client: how many jobs one
executor dispatches, and what each costs it.

For each cluster size (``--workers 10,100,1000`` stand-ins of ``--cores 64``, spread over
``--procs`` processes), the driver starts a fresh executor and the stand-ins, waits until
every one is registered, then acts as one client speaking the protocol itself (no
pickling, so that the client is not what is measured): it keeps ``--window`` jobs in
flight (``Submit``; each payload carries its send time), acknowledges results as a real
client does (``Ack``, which the executor turns into ``Release`` for the workers), warms
up, and measures for ``--seconds``:

- **jobs/s**: results received per second (every one was dispatched as a ``Run``);
- **executor CPU per job**: the executor process's user + system time over the jobs;
- **executor RSS** at the end;
- **time a message waits in the executor**, under that load and under a light one
  (``--light`` jobs in flight, measured first): a stand-in stamps its ``Done`` with the time
  it sends it; the executor relays the payload untouched in the client's ``Result``;
  ``now - stamp`` at the client is the time spent in two loopback hops and the executor
  (p50, p99). All processes share the host's monotonic clock.

The stand-ins answer at once by default, so the executor is the bottleneck (on a machine
with few cores, the stand-ins and the client share it: the CPU per job is the figure to
scale from; see ``docs/scaling.md``). ``--job-seconds`` makes jobs last.

``--held N`` measures a busy cluster instead (``measure_busy``): N long jobs running, the
executor left to settle, then how long short jobs' results wait: the longest is the
longest stall any peer saw (a full garbage collection shows here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psutil
import trio

from grain.net import transport
from grain.net.endpoints import parse_endpoint
from grain.net.link import handling, open_stream_link
from grain.protocol import handshake
from grain.protocol import messages as m
from grain.resource import Cores, to_wire

from .simworker import HOLD
from .systems import grain_cli

STAMP = struct.Struct("<d")
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"grain executor exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"grain executor did not listen on port {port} in {timeout}s")


def _stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Client:
    """A protocol-level client keeping ``window`` jobs in flight."""

    def __init__(self, link: Any, window: int, first_cid: int = 0) -> None:
        self.link = link
        self.window = window
        self.next_cid = first_cid
        self.in_flight = 0
        self.results = 0
        self.failed = 0
        self.waits: list[float] | None = None     # seconds, while measuring
        self.wire = to_wire(Cores(1))

    def fill(self) -> None:
        link, wire = self.link, self.wire
        while self.in_flight < self.window:
            self.next_cid += 1
            self.in_flight += 1
            link.send(m.Submit(self.next_cid, wire, 1), STAMP.pack(time.monotonic()))

    async def run(self, define: bool = True) -> None:
        link = self.link
        if define:
            link.send(m.DefineFunction(1), b"the function (never unpickled)")
        with handling():
            self.fill()
        while True:
            batch = await link.receive()
            now = time.monotonic()
            with handling():
                acks = []
                for h, payload in batch:
                    if type(h) is not m.Result:
                        continue
                    acks.append(h.cid)
                    self.in_flight -= 1
                    self.results += 1
                    if h.end != int(m.End.OK):
                        self.failed += 1
                    elif self.waits is not None and len(payload) == STAMP.size:
                        self.waits.append(now - STAMP.unpack(payload)[0])
                if acks:
                    link.send(m.Ack(acks))
                self.fill()
            del batch


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1)))] if s else 0.0


async def _connect(address: str, token: str) -> Any:
    """A client's link to the executor (an async context manager giving the link)."""
    ep = parse_endpoint(address)
    stream = await transport.connect(ep)
    _, dec = await handshake.dial(stream, token, "client",
                                  {"name": "capacity", "session": secrets.randbits(62)},
                                  expect_role="executor", user="bench")
    return open_stream_link(stream, str(ep), m.ExecutorToClient, decoder=dec)


async def _drive(address: str, token: str, window: int, light: int, warm: float,
                 seconds: float, executor: psutil.Process) -> dict[str, Any]:
    async with await _connect(address, token) as link, trio.open_nursery() as n:
        c = Client(link, light)
        n.start_soon(c.run)
        # light load first: the time a message waits when nothing else queues up
        await trio.sleep(warm / 2)
        c.waits = []
        await trio.sleep(min(seconds, 3.0))
        light_waits, c.waits = c.waits, None
        c.window = window
        c.fill()
        await trio.sleep(warm / 2)
        c.waits = []
        r0, t0 = c.results, time.perf_counter()
        cpu0 = executor.cpu_times()
        await trio.sleep(seconds)
        cpu1 = executor.cpu_times()
        jobs, dt = c.results - r0, time.perf_counter() - t0
        waits = c.waits
        c.waits = None
        rss = executor.memory_info().rss
        n.cancel_scope.cancel()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"jobs": jobs, "jobs_per_s": jobs / dt, "seconds": dt,
            "executor_cpu_us_per_job": cpu / jobs * 1e6 if jobs else None,
            "executor_cpu_cores": cpu / dt, "executor_rss_mib": rss / 2 ** 20,
            "wait_p50_ms": _pct(waits, 0.5) * 1e3, "wait_p99_ms": _pct(waits, 0.99) * 1e3,
            "wait_max_ms": max(waits, default=0.0) * 1e3, "failed": c.failed,
            "light_window": light, "light_wait_p50_ms": _pct(light_waits, 0.5) * 1e3,
            "light_wait_p99_ms": _pct(light_waits, 0.99) * 1e3}


@contextlib.contextmanager
def _cluster(workers: int, cores: int, procs: int, job_seconds: float, timeout: float
             ) -> Iterator[dict[str, Any]]:
    """A fresh ``grain executor`` and ``workers`` stand-ins, all registered; stopped after."""
    tmp = tempfile.mkdtemp(prefix="grain-capacity-")
    ex: subprocess.Popen[bytes] | None = None
    sims: list[subprocess.Popen[bytes]] = []
    try:
        token = secrets.token_urlsafe(24)
        tf = os.path.join(tmp, "token")
        fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        port = _free_port()
        addr = f"grain://{LOOPBACK}:{port}"
        with open(os.path.join(tmp, "executor.log"), "wb") as log:
            ex = subprocess.Popen([*grain_cli(), "executor", "--listen", addr,
                                   "--token-file", tf], stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        _wait_port(port, ex, timeout)
        ex_proc = psutil.Process(ex.pid)
        rss_empty = ex_proc.memory_info().rss
        per = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
        for i, k in enumerate(x for x in per if x):
            sims.append(subprocess.Popen(
                [sys.executable, "-m", "bench.simworker", addr, tf, "--workers", str(k),
                 "--cores", str(cores), "--job-seconds", str(job_seconds),
                 "--prefix", f"p{i}-"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
        t = time.perf_counter()
        for p in sims:
            assert p.stdout is not None
            if not p.stdout.readline().startswith(b"ready"):
                raise RuntimeError(f"a stand-in process exited {p.wait()} before it was ready")
        yield {"address": addr, "token": token, "executor": ex_proc, "procs": len(sims),
               "register_s": time.perf_counter() - t,
               "executor_rss_empty_mib": rss_empty / 2 ** 20,
               "executor_rss_workers_mib": ex_proc.memory_info().rss / 2 ** 20}
    finally:
        for p in sims:
            _stop(p)
        _stop(ex)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(workers: int, *, cores: int = 64, procs: int = 1, window: int = 2000,
            light: int = 16, warm: float = 2.0, seconds: float = 5.0, job_seconds: float = 0.0,
            timeout: float = 120.0) -> dict[str, Any]:
    """One cluster size: a fresh executor, ``workers`` stand-ins, the client."""
    with _cluster(workers, cores, procs, job_seconds, timeout) as c:
        out = trio.run(_drive, c["address"], c["token"], window, light, warm, seconds,
                       c["executor"])
        out.update(workers=workers, cores=workers * cores, window=window, procs=c["procs"],
                   job_seconds=job_seconds, register_s=c["register_s"],
                   executor_rss_empty_mib=c["executor_rss_empty_mib"],
                   executor_rss_workers_mib=c["executor_rss_workers_mib"])
        return out


async def _drive_busy(address: str, token: str, held: int, light: int, settle: float,
                      seconds: float, executor: psutil.Process) -> dict[str, Any]:
    async with await _connect(address, token) as link, trio.open_nursery() as n:
        # ``held`` long jobs first (the stand-ins hold jobs named ``hold`` until the
        # session ends), all at once: placement starts them in steps
        wire = to_wire(Cores(1))
        link.send(m.DefineFunction(1), b"the function (never unpickled)")
        for cid in range(1, held + 1):
            link.send(m.Submit(cid, wire, 1, name=HOLD), b"")
        c = Client(link, light, first_cid=held)
        started = 0
        t0 = time.perf_counter()
        while started < held:
            for h, _ in await link.receive():
                started += type(h) is m.Started
        placed_s = time.perf_counter() - t0
        n.start_soon(c.run, False)
        await trio.sleep(settle)
        c.waits = []
        cpu0 = executor.cpu_times()
        await trio.sleep(seconds)
        cpu1 = executor.cpu_times()
        waits, c.waits = c.waits, None
        rss = executor.memory_info().rss
        n.cancel_scope.cancel()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"held": held, "placed_s": placed_s, "light_window": light,
            "light_jobs": len(waits), "executor_cpu_cores": cpu / seconds,
            "executor_rss_mib": rss / 2 ** 20,
            "light_wait_p50_ms": _pct(waits, 0.5) * 1e3,
            "light_wait_p99_ms": _pct(waits, 0.99) * 1e3,
            "light_wait_max_ms": max(waits, default=0.0) * 1e3}


def measure_busy(workers: int, held: int, *, cores: int = 64, procs: int = 1,
                 light: int = 16, settle: float = 35.0, seconds: float = 10.0,
                 timeout: float = 120.0) -> dict[str, Any]:
    """A busy cluster: ``held`` long jobs running on ``workers`` stand-ins, then, after
    ``settle`` seconds (the executor's housekeeping settles: its first freeze of
    long-lived objects comes at 30 s, ``grain.executor.heap``), the time ``light`` short
    jobs' results wait in the executor, for ``seconds``: its longest is the longest
    stall a peer saw."""
    with _cluster(workers, cores, procs, 0.0, timeout) as c:
        out = trio.run(_drive_busy, c["address"], c["token"], held, light, settle, seconds,
                       c["executor"])
        out.update(workers=workers, cores=workers * cores, procs=c["procs"],
                   settle_s=settle, seconds=seconds)
        return out


def capacity_table(results: list[dict[str, Any]], durations: tuple[float, ...] = (1, 10, 60)
                   ) -> list[dict[str, Any]]:
    """How many cores one executor keeps busy with jobs of each duration: its measured
    dispatch rate R (jobs/s, the lowest over the cluster sizes measured) times the
    duration D (a cluster of C cores running jobs of D seconds needs C / D jobs/s), and
    the same from its CPU per job alone (R' = 1 core / CPU per job: the rate with a core
    of its own)."""
    rate = min(r["jobs_per_s"] for r in results)
    cpu = max(r["executor_cpu_us_per_job"] or 0.0 for r in results)
    rate_cpu = 1e6 / cpu if cpu else 0.0
    return [{"job_s": d, "cores_measured": rate * d, "cores_one_core": rate_cpu * d,
             "nodes64_measured": rate * d / 64, "nodes64_one_core": rate_cpu * d / 64}
            for d in durations]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.capacity",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--workers", default="10,100,1000")
    ap.add_argument("--cores", type=int, default=64)
    ap.add_argument("--procs", type=int, default=0,
                    help="stand-in processes (default: 1 per 500 workers)")
    ap.add_argument("--window", type=int, default=2000, help="jobs in flight")
    ap.add_argument("--light", type=int, default=16,
                    help="jobs in flight while measuring the unloaded message wait")
    ap.add_argument("--warm", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--job-seconds", type=float, default=0.0)
    ap.add_argument("--held", type=int, default=0,
                    help="a busy cluster instead: this many long jobs run (one cluster size, "
                         "--workers), then the wait of --light short jobs' results is "
                         "measured for --seconds after --settle seconds")
    ap.add_argument("--settle", type=float, default=35.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.held:
        w = int(a.workers.split(",")[0])
        r = measure_busy(w, a.held, cores=a.cores, procs=a.procs or max(1, (w + 499) // 500),
                         light=a.light, settle=a.settle, seconds=a.seconds)
        print(json.dumps(r) if a.json else
              f"{w} workers x {a.cores} cores, {a.held:,} jobs running: short jobs' results "
              f"waited p50 {r['light_wait_p50_ms']:.2f} ms, p99 {r['light_wait_p99_ms']:.2f} "
              f"ms, longest {r['light_wait_max_ms']:.1f} ms; executor RSS "
              f"{r['executor_rss_mib']:.0f} MiB")
        return 0
    results = []
    for w in (int(x) for x in a.workers.split(",")):
        procs = a.procs or max(1, (w + 499) // 500)
        r = measure(w, cores=a.cores, procs=procs, window=a.window, light=a.light, warm=a.warm,
                    seconds=a.seconds, job_seconds=a.job_seconds)
        results.append(r)
        if not a.json:
            print(f"{w:>5} workers x {a.cores} cores: {r['jobs_per_s']:>8,.0f} jobs/s, "
                  f"executor {r['executor_cpu_us_per_job']:.0f} us CPU/job "
                  f"({r['executor_cpu_cores']:.2f} cores), RSS {r['executor_rss_mib']:.0f} MiB, "
                  f"message wait p50 {r['wait_p50_ms']:.2f} ms p99 {r['wait_p99_ms']:.2f} ms "
                  f"(at {r['light_window']} in flight: p50 {r['light_wait_p50_ms']:.2f} ms, "
                  f"p99 {r['light_wait_p99_ms']:.2f} ms) "
                  f"(registered in {r['register_s']:.1f} s)", flush=True)
    table = capacity_table(results)
    if a.json:
        print(json.dumps({"results": results, "capacity": table}))
        return 0
    for row in table:
        print(f"jobs of {row['job_s']:>3g} s: {row['cores_measured']:>10,.0f} cores "
              f"({row['nodes64_measured']:,.0f} nodes of 64) at the measured rate; "
              f"{row['cores_one_core']:,.0f} cores with a core of its own")
    print(f"median wait p99 {statistics.median(r['wait_p99_ms'] for r in results):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
