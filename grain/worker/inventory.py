"""What a worker offers: its cores (really usable ones), memory, GPUs and lifetime.

Pure functions plus small readers of the machine (affinity, memory, /dev). The capacity a
worker registers is a ``Resource``; ``core_map`` maps the core ids it declares to the real
CPU ids it pins jobs to (they differ only when a program declares more cores than the
machine has, as original grain programs often do: ``Node(24, 64)`` on a laptop).
"""

from __future__ import annotations

import glob
import logging
import math
import os
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


def total_memory_gb() -> float:
    return math.floor(psutil.virtual_memory().total / 1024 ** 3 * 10) / 10


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
    dm = kinds.get("Memory")
    parts.append(Memory(dm.M if dm is not None else
                        (memory_gb if memory_gb is not None else total_memory_gb())))
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
