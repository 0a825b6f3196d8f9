"""A program using ``cluster=`` survives what happens to a GrainCluster's executor mid-sweep.

Real processes: a TLS ``grain executor`` and a ``grain worker`` behind KMock (the API server:
the GrainCluster's status, the user's Secret, the port-forward to the executor pod); the
user's sweep runs as ``python sweep.py`` (tests/operator/sweep_tools.py) with
``run_combine(cluster="demo", user="alice")``, every job start leaving a marker. Each test
disturbs the executor mid-sweep in one way Kubernetes does:

- the executor pod is replaced (a rollout, an OOM kill): same Service, new pod, a new
  executor process on the same port. Redialling the port-forward's address is enough;
- the CA is renewed with that rollout: the new executor's certificate is signed by a new CA,
  written into the user's Secret. Redialling fails verification until the client looks the
  cluster up again and trusts the new CA;
- the external endpoint moves (a load balancer's address): the old address answers no more.
  Only looking the cluster up again finds the new one.

In every case the program sees no error, every result arrives once, no job starts twice, and
jobs submitted after the disturbance (behind the program's own gate) run too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from process_tools import Processes
from support.waiting import wait_until
from sweep_tools import Sweep, start_sweep

from .real_cluster import NS, RealCluster

pytestmark = pytest.mark.timeout(180)

FIRST = [0.3] * 12      # on one core: ~3.6 s of work, so the disturbance lands mid-sweep
THEN = [0.05] * 3       # submitted after the disturbance


@pytest.fixture
def cluster(api: Any, tmp_path: Path) -> Any:
    pytest.importorskip("grain_operator.tls")
    with Processes() as procs:
        real = RealCluster(api, procs, tmp_path, users={"alice": "alice-token-" + "a" * 16})
        real.start_executor()
        real.start_worker("node-a", sorted(os.sched_getaffinity(0))[0])
        real.wait_workers({"node-a"})
        real.publish()
        real.publish_executor_pod("demo-executor-abc")
        yield real


def _sweep(cluster: RealCluster) -> Sweep:
    kubeconfig = cluster.api.kubeconfig(cluster.tmp / "kubeconfig", namespace=NS)
    connect = {"cluster": "demo", "namespace": NS, "kubeconfig": kubeconfig, "user": "alice",
               "reconnect_grace": 60}
    sweep = start_sweep(cluster.procs, cluster.tmp, connect, FIRST, THEN, gate=True)
    wait_until(lambda: sweep.started() >= 2 or sweep.proc.poll() is not None, 60, "the sweep's jobs to start")
    assert sweep.proc.poll() is None, sweep.tail()
    return sweep


def _completes_once(sweep: Sweep) -> None:
    """The program reconnected by itself, ran the jobs it submitted afterwards, and got every
    result once; no job started twice."""
    wait_until(lambda: "reconnected to the executor" in sweep.log.read_text() or sweep.proc.poll() is not None,
             90, "the program to reconnect")
    sweep.open_gate()
    assert sweep.finish(90) == [i * i for i in range(sweep.total)]
    starts = sweep.starts()
    twice = {i: s for i, s in starts.items() if len(s) != 1}
    assert sorted(starts) == list(range(sweep.total)) and not twice, f"jobs started more than once: {twice}"


def _replace_executor_pod(cluster: RealCluster, pod: str, pki: Any = None) -> None:
    """What a rollout does: the old executor stops (SIGTERM), its pod object goes, the new
    pod runs the executor again on the same port."""
    cluster.stop_executor(signal.SIGTERM)
    cluster.publish_executor_pod(pod)
    cluster.start_executor(pki)
    cluster.wait_workers({"node-a"})


def test_executor_pod_replaced_mid_sweep(cluster: RealCluster) -> None:
    sweep = _sweep(cluster)
    _replace_executor_pod(cluster, "demo-executor-def")
    _completes_once(sweep)
    pods = {f.split("/")[1] for f in cluster.api.km.forwards}
    assert pods == {"demo-executor-abc:4242", "demo-executor-def:4242"}, cluster.api.km.forwards


def test_ca_renewed_with_the_rollout(cluster: RealCluster) -> None:
    renewed = cluster.renewed
    sweep = _sweep(cluster)
    cluster.publish(renewed)   # the operator writes the new ca.crt into every user Secret
    _replace_executor_pod(cluster, "demo-executor-def", renewed)
    _completes_once(sweep)
    log = sweep.log.read_text()
    assert "looking the cluster up again" in log and "the cluster's CA changed" in log, log[-4000:]


class Relay:
    """A TCP relay on loopback standing in for a load balancer in front of the executor."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: set[socket.socket] = set()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns |= {conn, upstream}
            threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            try:
                while True:
                    for key, _ in sel.select():
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
            except OSError:
                return
            finally:
                for s in (a, b):   # one side ended: so does the other
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop answering at this address and cut every connection through it."""
        self.closed.set()
        with contextlib.suppress(OSError):   # wakes the blocked accept(); close alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def test_external_endpoint_moved(cluster: RealCluster) -> None:
    old = Relay(cluster.port)
    cluster.publish(external=f"grain://127.0.0.1:{old.port}")
    sweep = _sweep(cluster)
    new = Relay(cluster.port)
    try:
        cluster.publish(external=f"grain://127.0.0.1:{new.port}")
        old.close()
        _completes_once(sweep)
    finally:
        new.close()
    assert not cluster.api.km.forwards  # the external endpoint was used, not a port-forward
    assert "looking the cluster up again" in sweep.log.read_text()
