"""Several "nodes" on one machine: network namespaces joined by veth pairs to a bridge in
the root namespace, each with an address in a private test range (10.231.X.0/24, used
ONLY on the interfaces made here: nothing is routed anywhere else).

Needs root and iproute2; skipped with the reason otherwise. Every namespace, veth and
bridge made here carries this run's unique id and is removed by the fixture's finalizer,
also when the test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))

from grain_harness import Harness  # noqa: E402

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
    problems = []
    for ns in topo.netns.values():
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        r = _ip("netns", "del", ns, check=False)
        if r.returncode != 0 and "No such file" not in r.stderr:
            problems.append(f"netns del {ns}: {r.stderr.strip()}")
    for dev in [*topo.veth.values(), topo.bridge]:
        if _ip("link", "show", dev, check=False).returncode == 0:
            r = _ip("link", "del", dev, check=False)
            if r.returncode != 0:
                problems.append(f"link del {dev}: {r.stderr.strip()}")
    names = _ip("netns", "list", check=False).stdout
    links = _ip("-o", "link", "show", check=False).stdout
    left = [n for n in [*topo.netns.values()] if n in names]
    left += [d for d in [*topo.veth.values(), topo.bridge] if f" {d}:" in links or
             f" {d}@" in links]
    if left:
        problems.append(f"left behind: {left}")
    return problems


@pytest.fixture
def topology() -> Iterator[Topology]:
    why = _why_not()
    if why:
        pytest.skip(why)
    run_id = secrets.token_hex(2)
    topo = Topology(run_id=run_id, subnet=16 + int(run_id, 16) % 224, bridge=f"grb{run_id}")
    try:
        try:
            _ip("link", "add", topo.bridge, "type", "bridge")
        except RuntimeError as e:
            pytest.skip(f"cannot create a bridge here: {e}")
        _ip("addr", "add", f"10.231.{topo.subnet}.1/24", "dev", topo.bridge)
        _ip("link", "set", topo.bridge, "up")
        for i, node in enumerate(NODES, start=2):
            ns = f"grn-{run_id}-{node}"
            outer, inner = f"grv{run_id}{node}", f"gri{run_id}{node}"
            try:
                _ip("netns", "add", ns)
            except RuntimeError as e:
                pytest.skip(f"cannot create network namespaces here: {e}")
            topo.netns[node] = ns
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            topo.veth[node] = outer
            _ip("link", "set", inner, "netns", ns)
            addr = f"10.231.{topo.subnet}.{i}"
            topo.addr[node] = addr
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "set", outer, "master", topo.bridge)
            _ip("link", "set", outer, "up")
        yield topo
    finally:
        problems = _teardown(topo)
        assert not problems, problems


@pytest.fixture
def grain_procs(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        problems = h.cleanup()
        assert not problems, "processes outlived their worker/executor:\n" + "\n".join(problems)
