"""Several "nodes" on one machine: network namespaces joined by veth pairs to a bridge in
the root namespace, each with an address in a private test range (10.231.X.0/24, used
ONLY on the interfaces made here: nothing is routed anywhere else).

Needs root and iproute2; skipped with the reason otherwise. Every namespace, veth and
bridge made here carries this run's unique id and is removed by the fixture's finalizer,
also when the test fails.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))

from grain_harness import Harness  # noqa: E402
from netns_topology import NODES, Topology, _ip, _teardown, _why_not  # noqa: E402


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
