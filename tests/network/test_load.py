"""Load: many clients through one executor over TCP, every result checked.

20 clients x 5,000 no-op jobs (about 40 s on 2 cores, so it stays in the default run,
marked ``slow``); it prints the executor's peak RSS, throughput and CPU per job.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from grain_harness import NET_DIR, Harness


def _peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def run_load(grain_procs: Harness, clients: int, jobs: int, limit: float) -> dict:
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    proc = psutil.Process(ex.pid)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(proc.memory_info().rss / 2 ** 20)
            except psutil.Error:
                return
            stop.wait(0.1)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.monotonic()
    ps = [grain_procs.python(NET_DIR / "load_client.py", ex.address, str(grain_procs.token_file),
                             str(c), str(jobs), log=f"client{c}") for c in range(clients)]
    codes = []
    for p in ps:
        codes.append(p.wait(max(1.0, limit - (time.monotonic() - t0))))
    took = time.monotonic() - t0
    stop.set()
    t.join()
    logs = {p.name: p.read_text() for p in grain_procs.tmp.glob("*client*.log")}
    bad = {k: v[-400:] for k, v in logs.items() if not v.startswith("ok ")}
    assert codes == [0] * clients and not bad, bad
    st = ex.wait_idle(10)
    total = clients * jobs
    assert st["jobs"]["submitted"] == total and st["jobs"]["finished"] == total, st["jobs"]
    assert st["clients"] == 0
    peak = _peak_rss_mb(ex.pid)
    cpu = proc.cpu_times()
    print(f"\nload: {clients} clients x {jobs} jobs = {total} in {took:.1f}s "
          f"({total / took:.0f} jobs/s); executor peak RSS {peak:.1f} MiB "
          f"(sampled max {max(samples, default=0):.1f} MiB), executor CPU "
          f"{(cpu.user + cpu.system) / total * 1e6:.0f} us/job")
    return {"took": took, "peak_rss_mb": peak}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_load_20_clients_x_5000(grain_procs: Harness) -> None:
    """20 client processes x 5,000 no-op Cores(1) jobs through one executor over TCP with
    2 workers (one core each); every result is checked by its client. About 40 s on 2
    cores; ``GRAIN_LOAD_SMALL=1`` runs 20 x 250 instead."""
    jobs = 250 if os.environ.get("GRAIN_LOAD_SMALL") else 5000
    run_load(grain_procs, clients=20, jobs=jobs, limit=200)
