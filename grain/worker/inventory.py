"""What a worker offers: its cores (really usable ones), memory, GPUs and lifetime.

Pure functions plus small readers of the machine (affinity, memory, /dev, and the limits of
the process's cgroup: memory comes from the cgroup when its limit is below the machine's, a
CPU quota below the cores offered is warned about). The capacity a worker registers is a
``Resource``; ``core_map`` maps the core ids it declares to the real CPU ids it pins jobs to
(they differ only when a program declares more cores than the machine has, as original grain
programs often do: ``Node(24, 64)`` on a laptop). Cores come from the affinity first
(``os.sched_getaffinity``), which already reflects the cgroup's cpuset.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..errors import ConfigurationError
from ..resource import GPU, Cores, Memory, Resource, WTime, to_wire

log = logging.getLogger("grain.worker")


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (the kernel's cpuset list format)."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ConfigurationError(f"bad CPU list {text!r}: expected e.g. 0-3,6") from None
    return sorted(set(out))


def parse_memory(text: str) -> float:
    """``"8GB"``, ``"512MB"``, ``"8"`` (GB) -> GB as a float."""
    t = text.strip().upper().replace("IB", "B")
    units = {"TB": 1024.0, "GB": 1.0, "G": 1.0, "MB": 1 / 1024, "M": 1 / 1024}
    for suffix, factor in units.items():
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], factor
            break
    else:
        mult = 1.0
    try:
        value = float(t) * mult
    except ValueError:
        raise ConfigurationError(f"bad memory size {text!r}: expected e.g. 8GB or 512MB") from None
    if value < 0:
        raise ConfigurationError(f"bad memory size {text!r}: must be >= 0")
    return value


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its cgroup cpuset / affinity)."""
    return sorted(os.sched_getaffinity(0))


def online_cpus() -> list[int]:
    """All CPUs the node has online (to tell whether our cpuset is exclusive)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpu_list(f.read())
    except OSError:
        return list(range(os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------
# Limits of this process's cgroup (v1 and v2)
#
# A worker in a container, a pod or a Slurm job step may use far less memory than the machine
# has, and may get less CPU time than its cpuset suggests (a CFS quota). The cgroup a process
# is in is named by /proc/self/cgroup; where each hierarchy is mounted by
# /proc/self/mountinfo (inside a container the mount's root is usually the container's own
# cgroup, so the path in /proc/self/cgroup is made relative to it). Limits are hierarchical:
# the effective one is the smallest on the way up to the mount point (and, in v1,
# memory.stat's hierarchical_memory_limit also covers ancestors hidden from a container).
# Every reader takes a file-system root so that tests can run it on fake trees.

#: Limits at or above this are "unlimited" (v1 writes PAGE_COUNTER_MAX pages, about 2^63).
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup hierarchy from mountinfo: where it is mounted and what its root is."""

    mount_point: str
    root: str
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1 only: e.g. {"cpu", "cpuacct"}


@dataclass(frozen=True)
class CgroupLimits:
    """The limits of a process's cgroup that size a worker (None: no limit found)."""

    memory_bytes: int | None = None
    cpu_quota: float | None = None  # CPUs' worth of time per scheduling period
    memory_dir: str | None = None  # the cgroup directory the memory limit came from
    cpu_dir: str | None = None


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> controller name -> cgroup path. The v2 (unified) entry
    ``0::/path`` is keyed ``""``; a v1 line naming several controllers (``cpu,cpuacct``) gives
    each of them; named hierarchies (``name=systemd``) are kept under their full name."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts in ``/proc/self/mountinfo`` (man 5 proc)."""
    mounts: list[CgroupMount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 1:
            continue
        fstype = tail[0]
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.append(CgroupMount(mount_point, root, 2, frozenset()))
        elif fstype == "cgroup" and len(tail) >= 3:
            opts = frozenset(tail[2].split(","))
            mounts.append(CgroupMount(mount_point, root, 1, opts))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_dir(mount: CgroupMount, path: str) -> str:
    """The directory of cgroup ``path`` under ``mount``: the path made relative to the mount's
    root. A path outside the root (a container seeing its host's names) means the mount's
    root is the process's own cgroup, as Docker and Kubernetes arrange it."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    elif root:
        path = ""
    rel = path.strip("/")
    return f"{mount.mount_point.rstrip('/')}/{rel}" if rel else mount.mount_point


def _read(fs_root: str, path: str) -> str | None:
    try:
        with open(fs_root.rstrip("/") + path) as f:
            return f.read()
    except OSError:  # absent (another version, not mounted) or not readable: no limit known
        return None


def _ancestors(mount_point: str, leaf: str) -> list[str]:
    """``leaf`` and each directory above it up to and including ``mount_point``."""
    out = [leaf]
    while leaf != mount_point and leaf.startswith(mount_point + "/"):
        leaf = leaf.rsplit("/", 1)[0]
        out.append(leaf)
    return out


def _int_limit(text: str | None) -> int | None:
    """A limit file's value: None when absent, "max" (v2), negative (v1 -1) or huge."""
    if text is None:
        return None
    word = text.strip().split()[0] if text.strip() else ""
    if not word.lstrip("-").isdigit():
        return None
    value = int(word)
    return value if 0 <= value < _UNLIMITED else None


def _smallest(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _memory_stat_limit(text: str | None) -> int | None:
    """v1 memory.stat's ``hierarchical_memory_limit`` (covers hidden ancestors)."""
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "hierarchical_memory_limit":
            return _int_limit(value)
    return None


def parse_cpu_max(text: str | None) -> float | None:
    """v2 ``cpu.max`` (``"200000 100000"`` or ``"max 100000"``) -> CPUs, None if unlimited."""
    if not text:
        return None
    words = text.split()
    if len(words) != 2 or not words[0].isdigit() or not words[1].isdigit() or int(words[1]) == 0:
        return None
    return int(words[0]) / int(words[1])


def _v1_cpu_quota(fs_root: str, d: str) -> float | None:
    quota = _read(fs_root, d + "/cpu.cfs_quota_us")
    period = _read(fs_root, d + "/cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    q, p = quota.strip(), period.strip()
    if not q.isdigit() or not p.isdigit() or int(p) == 0:  # -1: no quota
        return None
    return int(q) / int(p)


def read_cgroup_limits(fs_root: str = "/", proc_cgroup: str | None = None,
                       mountinfo: str | None = None) -> CgroupLimits:
    """The memory limit and CPU quota that apply to this process (see the section comment).

    ``fs_root`` prefixes every path read (tests pass a fake tree); ``proc_cgroup`` and
    ``mountinfo`` default to this process's ``/proc/self/cgroup`` and ``mountinfo`` under it.
    Both cgroup versions may be mounted at once (v1 controllers with an empty v2 hierarchy,
    as on this kind of host): each controller is read where it is attached.
    """
    if proc_cgroup is None:
        proc_cgroup = _read(fs_root, "/proc/self/cgroup") or ""
    if mountinfo is None:
        mountinfo = _read(fs_root, "/proc/self/mountinfo") or ""
    paths = parse_proc_cgroup(proc_cgroup)
    mounts = parse_mountinfo(mountinfo)
    memory: list[int | None] = []
    cpu: list[float] = []
    memory_dir = cpu_dir = None
    for m in mounts:
        if m.version == 1 and ("memory" in m.controllers or "cpu" in m.controllers):
            ctl = "memory" if "memory" in m.controllers else "cpu"
            if ctl not in paths:
                continue
            leaf = cgroup_dir(m, paths[ctl])
            levels = _ancestors(m.mount_point.rstrip("/") or "/", leaf)
            if "memory" in m.controllers:
                found = _smallest([_int_limit(_read(fs_root, d + "/memory.limit_in_bytes"))
                                   for d in levels]
                                  + [_memory_stat_limit(_read(fs_root, leaf + "/memory.stat"))])
                if found is not None:
                    memory.append(found)
                    memory_dir = leaf
            if "cpu" in m.controllers:
                quotas = [q for d in levels if (q := _v1_cpu_quota(fs_root, d)) is not None]
                if quotas:
                    cpu.append(min(quotas))
                    cpu_dir = leaf
        elif m.version == 2 and "" in paths:
            leaf = cgroup_dir(m, paths[""])
            levels = _ancestors(m.mount_point.rstrip("/") or "/", leaf)
            found = _smallest([_int_limit(_read(fs_root, d + "/memory.max")) for d in levels])
            if found is not None:
                memory.append(found)
                memory_dir = leaf
            quotas = [q for d in levels if (q := parse_cpu_max(_read(fs_root, d + "/cpu.max")))
                      is not None]
            if quotas:
                cpu.append(min(quotas))
                cpu_dir = leaf
    return CgroupLimits(_smallest(memory), min(cpu) if cpu else None, memory_dir, cpu_dir)


def cgroup_limits() -> CgroupLimits:
    """This process's cgroup limits; none when they cannot be read (not Linux, no /proc)."""
    try:
        return read_cgroup_limits()
    except (OSError, ValueError) as e:  # defensive: a worker must start whatever /proc says
        log.debug("cannot read cgroup limits: %s", e)
        return CgroupLimits()


def machine_memory_bytes() -> int:
    """The machine's physical memory."""
    return int(psutil.virtual_memory().total)


def usable_memory_gb(machine_bytes: int, limit_bytes: int | None) -> float:
    """GB (2^30) offered: the machine's memory, or the cgroup's limit when smaller; floored
    to 0.1 so that a worker never offers more than it has."""
    usable = machine_bytes if limit_bytes is None else min(machine_bytes, limit_bytes)
    return math.floor(usable / 1024 ** 3 * 10) / 10


def total_memory_gb() -> float:
    """Memory this process may use, in GB: the machine's, or its memory cgroup's limit when
    that is smaller (a container, a pod, Slurm's ConstrainRAMSpace)."""
    return usable_memory_gb(machine_memory_bytes(), cgroup_limits().memory_bytes)


def check_cpu_quota(quota: float | None, cores: int, where: str | None = None) -> str | None:
    """A warning when a CFS quota gives less CPU time than the cores offered: every job would
    be throttled (a pod with a fractional or too small cpu limit). None when it is fine."""
    if quota is None or quota >= cores - 1e-9:
        return None
    return (f"the CPU quota of this worker's cgroup{f' ({where})' if where else ''} is "
            f"{quota:g} CPUs, below the {cores} cores it offers: jobs will be throttled. Give "
            f"it a CPU limit of at least {cores} (in Kubernetes: integer cpu requests = limits) "
            f"or offer fewer cores (--cores / --reserve-cores)")


def detect_gpus() -> list[int]:
    """NVIDIA devices visible to this process (``CUDA_VISIBLE_DEVICES`` wins)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    return sorted(int(p[len("/dev/nvidia"):]) for p in glob.glob("/dev/nvidia[0-9]*")
                  if p[len("/dev/nvidia"):].isdigit())


@dataclass
class Inventory:
    """A worker's capacity and how its declared core ids map to real CPUs."""

    capacity: Resource
    core_map: dict[int, int] = field(default_factory=dict)
    cpuset: list[int] = field(default_factory=list)
    exclusive_cpuset: bool = False
    gpus: list[int] = field(default_factory=list)

    def real_cpus(self, declared: Any) -> list[int]:
        """Real CPU ids for an allocation's declared core ids."""
        cm = self.core_map
        return sorted({cm[c] for c in declared})

    def info(self, name: str) -> dict[str, Any]:
        """Registration info sent to the executor."""
        return {"name": name, "capacity": to_wire(self.capacity), "cpuset": self.cpuset,
                "exclusive_cpuset": self.exclusive_cpuset, "gpus": self.gpus,
                "pid": os.getpid(), "host": os.uname().nodename}


def build_inventory(declared: Resource | None = None, *, cpus: list[int] | None = None,
                    reserve_cores: int = 0, memory_gb: float | None = None,
                    gpus: list[int] | None = None, lifetime: float | None = None
                    ) -> Inventory:
    """The capacity a worker offers.

    ``declared`` (the original's ``rpw``) may name cores, memory and custom kinds; what it
    does not name comes from the machine. Declared cores beyond the real ones are mapped
    round-robin onto them, with a warning.
    """
    real = cpus if cpus is not None else usable_cpus()
    if reserve_cores:
        if reserve_cores >= len(real):
            raise ConfigurationError(f"cannot reserve {reserve_cores} of {len(real)} cores")
        real = real[reserve_cores:]
    kinds = declared.kinds() if declared is not None else {}
    parts: list[Resource] = []
    dc = kinds.get("Cores")
    if dc is not None:
        declared_ids = sorted(dc.c)
        if len(declared_ids) > len(real):
            log.warning("%d cores declared but only %d usable here (%s): declared core i runs "
                        "on the (i mod %d)-th usable core", len(declared_ids), len(real),
                        ",".join(map(str, real)), len(real))
        core_map = {d: real[i % len(real)] for i, d in enumerate(declared_ids)}
        parts.append(Cores(declared_ids))
    else:
        core_map = {c: c for c in real}
        parts.append(Cores(real))
    limits = cgroup_limits()
    warning = check_cpu_quota(limits.cpu_quota, len(set(core_map.values())), limits.cpu_dir)
    if warning:
        log.warning("%s", warning)
    dm = kinds.get("Memory")
    offered: float
    if dm is not None:
        offered = float(dm.M)
    elif memory_gb is not None:
        offered = memory_gb
    else:
        offered = usable_memory_gb(machine_memory_bytes(), limits.memory_bytes)
        if limits.memory_bytes is not None and limits.memory_bytes < machine_memory_bytes():
            log.info("memory: %.1f GB, the limit of cgroup %s (the machine has %.1f GB)",
                     offered, limits.memory_dir, machine_memory_bytes() / 1024 ** 3)
    parts.append(Memory(offered))
    gpu_ids = gpus if gpus is not None else []
    if "GPU" in kinds:
        gpu_ids = sorted(kinds["GPU"].g)
    if gpu_ids:
        parts.append(GPU(gpu_ids))
    wt = kinds.get("WTime")
    parts.append(wt if wt is not None else WTime(lifetime or math.inf, countdown=True))
    for name, part in kinds.items():
        if name not in ("Cores", "Memory", "GPU", "WTime"):
            parts.append(part)
    cap = parts[0]
    for p in parts[1:]:
        cap = cap & p
    cpuset = sorted(set(core_map.values()))
    exclusive = set(usable_cpus()) < set(online_cpus())
    return Inventory(cap, core_map, cpuset, exclusive, gpu_ids)
