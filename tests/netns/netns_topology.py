"""Network namespaces for the multi-node tests: build, cut, tear down (see conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

NODES = ("ex", "w1", "w2")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root (they create namespaces, veths, a bridge)"
    if shutil.which("ip") is None:
        return "network namespace tests need the `ip` command (iproute2)"
    return None


@dataclass
class Topology:
    """The namespaces made for one test, and how to reach them."""

    run_id: str
    subnet: int                                   # X in 10.231.X.0/24
    bridge: str
    netns: dict[str, str] = field(default_factory=dict)      # node -> namespace name
    veth: dict[str, str] = field(default_factory=dict)       # node -> root-side veth
    addr: dict[str, str] = field(default_factory=dict)       # node -> IPv4 address

    def ns_inode(self, node: str) -> str:
        """The namespace's identity as a process inside it sees /proc/self/ns/net."""
        return os.readlink(f"/proc/{self._pid_in(node)}/ns/net")

    def _pid_in(self, node: str) -> int:
        pids = _ip("netns", "pids", self.netns[node]).stdout.split()
        if not pids:
            raise RuntimeError(f"no process in {self.netns[node]}")
        return int(pids[0])

    def link(self, node: str, up: bool) -> None:
        """Cut (or restore) a node's cable: its root-side veth down (up)."""
        _ip("link", "set", self.veth[node], "up" if up else "down")


def _teardown(topo: Topology) -> list[str]:
    """Remove everything the fixture made; return what could not be removed.

    The veths go first, from the root side, while their namespaces still exist: deleting
    one end of a pair deletes both at once. Deleting a namespace first would also take its
    veth pair with it, but asynchronously in the kernel, so the root-side end could vanish
    between our check and our delete (seen in CI as "Cannot find device").
    """
    problems = []
    for ns in topo.netns.values():
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
    for dev in [*topo.veth.values(), topo.bridge]:
        if _ip("link", "show", dev, check=False).returncode == 0:
            r = _ip("link", "del", dev, check=False)
            if r.returncode != 0:
                problems.append(f"link del {dev}: {r.stderr.strip()}")
    for ns in topo.netns.values():
        r = _ip("netns", "del", ns, check=False)
        if r.returncode != 0 and "No such file" not in r.stderr:
            problems.append(f"netns del {ns}: {r.stderr.strip()}")
    names = _ip("netns", "list", check=False).stdout
    links = _ip("-o", "link", "show", check=False).stdout
    left = [n for n in [*topo.netns.values()] if n in names]
    left += [d for d in [*topo.veth.values(), topo.bridge] if f" {d}:" in links or
             f" {d}@" in links]
    if left:
        problems.append(f"left behind: {left}")
    return problems
