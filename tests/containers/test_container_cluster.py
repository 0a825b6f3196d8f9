"""An executor and two workers as containers from the project image, hardened as the operator
renders their pods (read-only root with a tmpfs at /tmp, all capabilities dropped, no new
privileges, the image's non-root user), each worker confined to one CPU and a memory limit;
a user's program on the host runs jobs through them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from container_harness import (
    Containers,
    Engine,
    free_port,
    http_json,
    http_ok,
    token_file,
    wait_until,
)

# The first test to run builds the image (about a minute on overlay2, several on vfs).
pytestmark = pytest.mark.timeout(900)

HERE = Path(__file__).resolve().parent
TOKEN_MOUNT = "/etc/grain/token/token"
GiB = 1024 ** 3


def start_executor(box: Containers, token: Path, grain_port: int, http_port: int,
                   tmpfs: tuple[str, ...] = ("/tmp",)) -> Any:
    return box.run("executor", ["executor", "--listen", f"grain://127.0.0.1:{grain_port}",
                                "--http", f"127.0.0.1:{http_port}", "--token-file", TOKEN_MOUNT],
                   mounts=[(str(token), TOKEN_MOUNT)], memory="512m", tmpfs=tmpfs)


def test_hardened_executor_and_workers_run_pinned_jobs(engine: Engine, image: str,
                                                       client_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    nodes = {"node-a": (cpus[0], "1g", 1.0), "node-b": (cpus[-1], "768m", 0.7)}  # 0.75 GiB, floored
    token = token_file(tmp_path / "secret", "container-tier-" + uuid.uuid4().hex)
    grain_port, http_port = free_port(), free_port()
    status_url = f"http://127.0.0.1:{http_port}/status"
    with Containers(engine, image) as box:
        executor = start_executor(box, token, grain_port, http_port)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/healthz") or
                 (not executor.running() and executor.logs()), 60, "the executor's /healthz")
        assert executor.running(), executor.logs()
        workers = {}
        for name, (cpu, memory, _) in nodes.items():
            workers[name] = box.run(name, [
                "worker", "--executor", f"grain://127.0.0.1:{grain_port}", "--name", name,
                "--cores", "auto", "--memory", "auto", "--gpus", "none",
                "--token-file", TOKEN_MOUNT],
                mounts=[(str(token), TOKEN_MOUNT)], cpuset=str(cpu), memory=memory)

        def registered() -> dict[str, Any] | None:
            got = {w["name"]: w for w in http_json(status_url)["workers"]}
            return got if set(got) == set(nodes) else None

        status = wait_until(registered, 60, "both workers to register")
        for name, (cpu, _, memory_gb) in nodes.items():
            # Each worker offers its container's memory (not the machine's) and its one CPU.
            assert status[name]["memory_total_gb"] == memory_gb, status[name]
            assert status[name]["cpuset"] == [cpu], status[name]
            assert status[name]["cores_total"] == 1, status[name]
            startup = workers[name].logs()
            assert f"Memory({memory_gb}GB)" in startup, startup

        out = subprocess.run([sys.executable, str(HERE / "probe_client.py"), "8", "--address",
                              f"grain://127.0.0.1:{grain_port}", "--token-file", str(token)],
                             capture_output=True, text=True, timeout=180, cwd=tmp_path,
                             env=client_env)
        assert out.returncode == 0, out.stderr[-3000:]
        results = json.loads(out.stdout.splitlines()[-1])

    assert [r["index"] for r in results] == list(range(8))  # submission order
    used = {tuple(r["cpus"]) for r in results}
    for r in results:
        assert len(r["cpus"]) == 1 and r["cpus"][0] in {c for c, _, _ in nodes.values()}, r
        assert (r["uid"], r["gid"]) == (10001, 10001), r  # the image's user, never root
        assert r["writable"] == {"/tmp": True, "/opt/grain": False, "/": False}, r
        assert int(r["cap_eff"], 16) == 0, r  # every capability dropped
        assert r["no_new_privs"] == "1", r
    if len(cpus) > 1:
        assert used == {(cpus[0],), (cpus[-1],)}, "both workers ran jobs"
    limits = {int(r["memory_limit"]) for r in results if r["memory_limit"]}
    assert limits and limits <= {GiB, 768 * 1024 ** 2}, limits  # jobs live in their worker's cgroup


class NotStarted(AssertionError):
    """A container exited (or never answered) at start."""


def test_executor_starts_without_a_writable_tmp(engine: Engine, image: str, tmp_path: Path) -> None:
    """A read-only root and no /tmp at all: the executor starts (it never imports dill,
    whose import asks for a writable temporary directory)."""
    token = token_file(tmp_path / "secret", "no-tmp-" + uuid.uuid4().hex)
    grain_port, http_port = free_port(), free_port()
    with Containers(engine, image) as box:
        executor = start_executor(box, token, grain_port, http_port, tmpfs=())
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/healthz") or not executor.running(),
                 60, "the executor to answer or exit")
        if not (executor.running() and http_ok(f"http://127.0.0.1:{http_port}/healthz")):
            raise NotStarted(executor.logs()[-3000:])


def test_executor_and_worker_exit_on_sigterm(engine: Engine, image: str, tmp_path: Path) -> None:
    token = token_file(tmp_path / "secret", "sigterm-" + uuid.uuid4().hex)
    grain_port, http_port = free_port(), free_port()
    with Containers(engine, image) as box:
        executor = start_executor(box, token, grain_port, http_port)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/healthz") or not executor.running(),
                 60, "the executor's /healthz")
        worker = box.run("worker", [
            "worker", "--executor", f"grain://127.0.0.1:{grain_port}", "--name", "w",
            "--memory", "auto", "--gpus", "none", "--token-file", TOKEN_MOUNT],
            mounts=[(str(token), TOKEN_MOUNT)], memory="512m")
        wait_until(lambda: [w["name"] for w in http_json(f"http://127.0.0.1:{http_port}/status")["workers"]]
                 == ["w"], 60, "the worker to register")
        # SIGTERM to PID 1, as a pod deletion sends it: as PID 1 a process without a handler
        # would ignore it and be killed (137) after the grace period. An idle worker drains
        # at once; then its executor stops.
        for container in (worker, executor):
            began = time.monotonic()
            engine.run("stop", "--time", "20", container.cid, timeout=60)
            took, code = time.monotonic() - began, container.state()["ExitCode"]
            assert took < 5 and code != 137, (
                f"{container.name} took {took:.1f}s to stop on SIGTERM (exit {code}):\n"
                f"{container.logs()[-2000:]}")
        assert "SIGTERM" in worker.logs(), worker.logs()[-2000:]
