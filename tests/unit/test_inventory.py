"""What a worker offers: cgroup limits read from fake cgroup trees (v1, v2, hybrid, inside a
container and on a host), and how they size the inventory.

The trees are built under tmp_path exactly as the kernel lays them out; ``fs_root`` makes the
reader look there instead of at /. The real kernel is exercised by
tests/containers/test_worker_cgroup.py (a worker in a real memory cgroup) and by the container
tier (workers in containers with --memory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from grain.resource import Cores, Node
from grain.worker import inventory as inv
from grain.worker.inventory import (
    CgroupLimits,
    CgroupMount,
    build_inventory,
    cgroup_dir,
    check_cpu_quota,
    parse_cpu_max,
    parse_mountinfo,
    parse_proc_cgroup,
    read_cgroup_limits,
    usable_memory_gb,
)

GiB = 1024 ** 3
V1_UNLIMITED = "9223372036854771712"  # what v1 shows for "no limit" (PAGE_COUNTER_MAX pages)

# mountinfo lines as the kernel writes them (fields: id parent dev root mountpoint opts - ...)
V1_HOST_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# Inside a Docker container on a v1 host (no cgroup namespace): /proc/self/cgroup names the
# host's path, the mounts' root is the container's own cgroup.
V1_CONTAINER_MOUNTS = """\
700 690 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
701 690 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
"""
V1_CONTAINER_CGROUP = "11:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def tree(root: Path, files: dict[str, str]) -> str:
    """Write ``files`` (absolute paths) under ``root``; return root as the fs_root."""
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


# -- parsing --------------------------------------------------------------------------------------


def test_parse_proc_cgroup_v1_v2_and_named() -> None:
    text = "12:memory:/a/b\n4:cpu,cpuacct:/a\n1:name=systemd:/x\n0::/u\n"
    paths = parse_proc_cgroup(text)
    assert paths == {"memory": "/a/b", "cpu": "/a", "cpuacct": "/a", "name=systemd": "/x", "": "/u"}
    assert parse_proc_cgroup("garbage\n\n") == {}


def test_parse_mountinfo_finds_cgroup_mounts_and_unescapes() -> None:
    mounts = parse_mountinfo(V1_HOST_MOUNTS + "50 23 0:40 / /mnt/my\\040dir rw - cgroup2 none rw\n")
    assert [m.mount_point for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified", "/mnt/my dir"]
    assert mounts[0].controllers >= {"cpu", "cpuacct"} and mounts[0].version == 1
    assert mounts[3].version == 2
    # optional fields before the separator ("shared:5") do not confuse it
    (m,) = parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw\n")
    assert m.mount_point == "/sys/fs/cgroup" and m.version == 2


def test_cgroup_dir_relative_to_the_mount_root() -> None:
    host = CgroupMount("/sys/fs/cgroup/memory", "/", 1, frozenset({"memory"}))
    assert cgroup_dir(host, "/slurm/uid_1/job_2") == "/sys/fs/cgroup/memory/slurm/uid_1/job_2"
    assert cgroup_dir(host, "/") == "/sys/fs/cgroup/memory"
    container = CgroupMount("/sys/fs/cgroup/memory", "/docker/abc", 1, frozenset({"memory"}))
    assert cgroup_dir(container, "/docker/abc") == "/sys/fs/cgroup/memory"
    assert cgroup_dir(container, "/docker/abc/sub") == "/sys/fs/cgroup/memory/sub"
    # a path outside the mount's root: the mount's root is our own cgroup
    assert cgroup_dir(container, "/docker/abcdef") == "/sys/fs/cgroup/memory"


def test_parse_cpu_max() -> None:
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("50000 100000") == 0.5
    assert parse_cpu_max("max 100000") is None
    assert parse_cpu_max("") is None and parse_cpu_max(None) is None
    assert parse_cpu_max("1 0") is None


# -- reading trees ----------------------------------------------------------------------------------


def test_v1_container_memory_and_quota(tmp_path: Path) -> None:
    """docker run --memory=1g --cpus=1.5 on a v1 host."""
    root = tree(tmp_path, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(GiB),
        "/sys/fs/cgroup/memory/memory.stat": f"cache 0\nhierarchical_memory_limit {GiB}\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    limits = read_cgroup_limits(root, V1_CONTAINER_CGROUP, V1_CONTAINER_MOUNTS)
    assert limits.memory_bytes == GiB
    assert limits.cpu_quota == 1.5
    assert limits.memory_dir == "/sys/fs/cgroup/memory"


def test_v1_host_nested_limit_from_an_ancestor(tmp_path: Path) -> None:
    """A Slurm step: the job's cgroup holds the limit, the step's own cgroup has none."""
    base = "/sys/fs/cgroup/memory/slurm/uid_1000/job_7"
    root = tree(tmp_path, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        f"{base}/memory.limit_in_bytes": str(4 * GiB),
        f"{base}/step_0/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    cgroup = "10:memory:/slurm/uid_1000/job_7/step_0\n3:cpu,cpuacct:/\n0::/\n"
    limits = read_cgroup_limits(root, cgroup, V1_HOST_MOUNTS)
    assert limits.memory_bytes == 4 * GiB
    assert limits.memory_dir == f"{base}/step_0"
    assert limits.cpu_quota is None  # -1: no quota


def test_v1_hidden_ancestor_through_memory_stat(tmp_path: Path) -> None:
    """A container's mount hides its parents; memory.stat's hierarchical limit does not."""
    root = tree(tmp_path, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/memory/memory.stat": f"hierarchical_memory_limit {3 * GiB}\n",
    })
    limits = read_cgroup_limits(root, V1_CONTAINER_CGROUP, V1_CONTAINER_MOUNTS)
    assert limits.memory_bytes == 3 * GiB


def test_v1_unlimited_is_none(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/memory/memory.stat": f"hierarchical_memory_limit {V1_UNLIMITED}\n",
    })
    assert read_cgroup_limits(root, "4:memory:/\n0::/\n", V1_HOST_MOUNTS) == CgroupLimits()


def test_v2_pod_limit_on_the_pod_level(tmp_path: Path) -> None:
    """A Kubernetes pod on a v2 node without a cgroup namespace: the limit sits on the pod's
    cgroup, the container's has its own (larger) one or none."""
    pod = "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice"
    root = tree(tmp_path, {
        f"{pod}/memory.max": f"{2 * GiB}\n",
        f"{pod}/cpu.max": "max 100000\n",
        f"{pod}/cri-c1.scope/memory.max": "max\n",
        f"{pod}/cri-c1.scope/cpu.max": "50000 100000\n",
    })
    cgroup = "0::/kubepods.slice/kubepods-pod1.slice/cri-c1.scope\n"
    limits = read_cgroup_limits(root, cgroup, V2_MOUNTS)
    assert limits.memory_bytes == 2 * GiB
    assert limits.cpu_quota == 0.5
    assert limits.cpu_dir == f"{pod}/cri-c1.scope"


def test_v2_with_a_cgroup_namespace(tmp_path: Path) -> None:
    """Docker on v2 (private cgroup namespace): the process is at "/", the mount is its own."""
    root = tree(tmp_path, {"/sys/fs/cgroup/memory.max": f"{GiB}\n", "/sys/fs/cgroup/cpu.max": "max 100000\n"})
    limits = read_cgroup_limits(root, "0::/\n", V2_MOUNTS)
    assert limits.memory_bytes == GiB and limits.cpu_quota is None


def test_nothing_readable_means_no_limits(tmp_path: Path) -> None:
    assert read_cgroup_limits(str(tmp_path)) == CgroupLimits()  # no /proc at all
    assert read_cgroup_limits(str(tmp_path), "0::/\n", V2_MOUNTS) == CgroupLimits()


def test_hybrid_host_reads_each_controller_where_it_is(tmp_path: Path) -> None:
    """v1 controllers plus an empty v2 hierarchy (this kind of host): v1 memory counts."""
    root = tree(tmp_path, {
        "/sys/fs/cgroup/memory/job/memory.limit_in_bytes": str(GiB // 2),
        "/sys/fs/cgroup/unified/memory.max": "max\n",  # not there in reality; harmless
    })
    limits = read_cgroup_limits(root, "4:memory:/job\n0::/\n", V1_HOST_MOUNTS)
    assert limits.memory_bytes == GiB // 2


# -- sizing the inventory -----------------------------------------------------------------------


def test_usable_memory_is_the_smaller_floored() -> None:
    assert usable_memory_gb(64 * GiB, None) == 64.0
    assert usable_memory_gb(64 * GiB, GiB) == 1.0
    assert usable_memory_gb(GiB, 64 * GiB) == 1.0
    assert usable_memory_gb(64 * GiB, int(1.56 * GiB)) == 1.5  # floored, never rounded up


def test_cpu_quota_warning() -> None:
    assert check_cpu_quota(None, 4) is None
    assert check_cpu_quota(4.0, 4) is None and check_cpu_quota(8.0, 4) is None
    text = check_cpu_quota(0.5, 2, "/sys/fs/cgroup/cpu/x")
    assert text is not None and "0.5 CPUs" in text and "2 cores" in text and "throttled" in text


def test_build_inventory_offers_the_cgroup_memory(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inv, "machine_memory_bytes", lambda: 64 * GiB)
    monkeypatch.setattr(inv, "cgroup_limits", lambda: CgroupLimits(memory_bytes=GiB, cpu_quota=0.5,
                                                                   memory_dir="/m", cpu_dir="/c"))
    with caplog.at_level(logging.INFO, logger="grain.worker"):
        got = build_inventory(cpus=[0, 1])
    assert got.capacity.kinds()["Memory"].M == 1.0
    assert any("throttled" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any("limit of cgroup /m" in r.getMessage() for r in caplog.records)
    # explicit sizes win over the cgroup: --memory, and a declared Memory (the original's rpw)
    assert build_inventory(cpus=[0], memory_gb=3.0).capacity.kinds()["Memory"].M == 3.0
    assert build_inventory(Node(1, 5), cpus=[0]).capacity.kinds()["Memory"].M == 5.0


def test_build_inventory_without_limits(monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inv, "machine_memory_bytes", lambda: 16 * GiB)
    monkeypatch.setattr(inv, "cgroup_limits", lambda: CgroupLimits(cpu_quota=2.0))
    with caplog.at_level(logging.INFO, logger="grain.worker"):
        got = build_inventory(cpus=[0, 1])
    assert got.capacity.kinds()["Memory"].M == 16.0
    assert got.capacity.kinds()["Cores"].c == Cores([0, 1]).c  # cores from the affinity, untouched
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_this_process_limits_are_readable() -> None:
    """On the real /proc: whatever the machine, reading never fails and agrees with itself."""
    limits = inv.cgroup_limits()
    assert limits.memory_bytes is None or limits.memory_bytes > 0
    assert 0 < inv.total_memory_gb() <= inv.machine_memory_bytes() / GiB
