"""A worker started inside a real memory cgroup offers the cgroup's memory, not the machine's,
and warns when a CPU quota would throttle its jobs (issue 10 item 8).

The test makes the cgroups itself (cgroup v1, as on this kind of host and under Slurm's
ConstrainRAMSpace): a child of its own memory cgroup limited to 1 GiB and a child of the cpu
hierarchy with a quota of half a CPU, starts ``grain worker --memory auto`` inside both, and
reads what the worker registered from the executor's /status and its startup line. The
cgroups are removed afterwards. No container engine is involved.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_harness import free_port, http_json, http_ok, listening_address, wait_until

from grain.worker.inventory import cgroup_dir, parse_mountinfo, parse_proc_cgroup

pytestmark = pytest.mark.timeout(120)

GiB = 1024 ** 3
TOKEN = "cgroup-test-token-" + uuid.uuid4().hex


def v1_dir(controller: str) -> Path | None:
    """This process's cgroup directory of a v1 controller, if that hierarchy is mounted."""
    paths = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    for mount in parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        if mount.version == 1 and controller in mount.controllers and controller in paths:
            return Path(cgroup_dir(mount, paths[controller]))
    return None


@pytest.fixture
def cgroups() -> Iterator[tuple[Path, Path]]:
    """A memory cgroup of 1 GiB and a cpu cgroup of 0.5 CPU, children of ours; removed after."""
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    mem_parent, cpu_parent = v1_dir("memory"), v1_dir("cpu")
    if mem_parent is None or cpu_parent is None:
        pytest.skip("no cgroup v1 memory and cpu hierarchies here (a cgroup v2 host): the fake "
                    "trees of tests/unit/test_inventory.py cover v2")
    name = f"grain-test-{uuid.uuid4().hex[:8]}"
    mem, cpu = mem_parent / name, cpu_parent / name
    made: list[Path] = []
    try:
        for d in (mem, cpu):
            d.mkdir()
            made.append(d)
        (mem / "memory.limit_in_bytes").write_text(str(GiB))
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text("50000")
    except OSError as e:
        for d in made:
            d.rmdir()
        pytest.skip(f"cannot make cgroups here: {e}")
    try:
        yield mem, cpu
    finally:
        for d in made:
            # The worker and its runners are gone once stopped; wait for the kernel to agree.
            wait_until(functools.partial(empty, d), 20, f"{d} to be empty")
            d.rmdir()


def empty(cgroup: Path) -> bool:
    """Whether no process is left in ``cgroup``."""
    return not (cgroup / "cgroup.procs").read_text().split()


def test_worker_offers_its_cgroup_memory(cgroups: tuple[Path, Path], tmp_path: Path) -> None:
    mem, cpu = cgroups
    env = {**os.environ, "GRAIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    http = free_port()
    ex_log, wk_log = tmp_path / "executor.log", tmp_path / "worker.log"

    def enter_cgroups() -> None:  # in the child, before exec: the worker starts inside them
        pid = str(os.getpid())
        (mem / "cgroup.procs").write_text(pid)
        (cpu / "cgroup.procs").write_text(pid)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        with ex_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "grain.cli", "executor", "--listen", "grain://127.0.0.1:0",
                 "--http", f"127.0.0.1:{http}"], env=env, stdout=out, stderr=subprocess.STDOUT))
        address = wait_until(lambda: listening_address(ex_log.read_text()), 30, "the executor")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http}/healthz"), 30, "the executor's HTTP")
        with wk_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "grain.cli", "worker", "--executor", address, "--name",
                 "confined", "--memory", "auto", "--gpus", "none"],
                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=enter_cgroups))
        worker = procs[-1]
        assert str(worker.pid) in wait_until(lambda: (mem / "cgroup.procs").read_text().split(), 10,
                                           "the worker in the memory cgroup")

        def registered() -> dict[str, object] | None:
            workers = http_json(f"http://127.0.0.1:{http}/status")["workers"]
            return next((w for w in workers if w["name"] == "confined"), None)

        info = wait_until(registered, 30, "the worker to register")
        machine_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
        assert machine_gb > 2, "the test needs a machine with more memory than the cgroup"
        assert info["memory_total_gb"] == 1.0, info  # the cgroup's 1 GiB, not the machine's
        log = wk_log.read_text()
        startup = next(line for line in log.splitlines() if line.startswith("grain worker confined:"))
        assert "Memory(1.0GB)" in startup, startup
        assert "throttled" in log and "0.5 CPUs" in log, log  # the quota is below its cores
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
