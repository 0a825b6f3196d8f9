"""A user's sweep, run as ``python sweep.py`` against a GrainCluster, with a marker per job start.

Shared by the rollout test (tests/operator/test_rollout_sweep.py) and the discovery tests
(tests/ship/test_discovery.py). The program is an ordinary user script: its job function
lives in ``__main__`` (shipped by value), connects with ``run_combine(**connect)`` (e.g.
``cluster="demo"``), and every start of every job leaves a marker file named
``INDEX.RUNNER_PID.MONOTONIC_NS`` holding where it ran (worker name, the worker's pid, and
``$SWEEP_ROLL`` from the worker's environment: which generation of pod ran it). A job
returns ``i * i``; the program prints its results as one JSON line and exits 0 only when
nothing failed, as in tests/network/test_durability.py.

With a gate, the program submits ``first`` jobs, waits (in its own code, as a program
waiting for an input file would) until the gate file exists, then submits ``then`` jobs to
the same wait group: so its session demonstrably lives across whatever the test does
meanwhile, and jobs are submitted after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process_tools import Processes

SWEEP = '''
import json, os, sys, time
import trio
import grain
from grain.resource import Cores

CONFIG = json.loads(sys.argv[1])
MARKS = CONFIG["marks"]


def job(i, seconds):
    # one marker per start of this job, written whole (rename) before the job's work
    name = os.path.join(MARKS, f"{i}.{os.getpid()}.{time.monotonic_ns()}")
    with open(name + ".tmp", "w") as f:
        json.dump({"worker": grain.GVAR.instance, "worker_pid": os.getppid(),
                   "roll": os.environ.get("SWEEP_ROLL", "")}, f)
    os.rename(name + ".tmp", name)
    time.sleep(seconds)
    return i * i


async def main():
    first, then, gate = CONFIG["first"], CONFIG["then"], CONFIG["gate"]
    async with grain.open_waitgroup() as wg:
        for i, seconds in enumerate(first):
            wg.submit(Cores(1), job, i, seconds)
        if gate:
            while not os.path.exists(gate):
                await trio.sleep(0.05)
        for j, seconds in enumerate(then):
            wg.submit(Cores(1), job, len(first) + j, seconds)
    return wg.results


results = grain.run_combine(main, **CONFIG["connect"])
print("RESULTS " + json.dumps(results), flush=True)
'''


@dataclass
class Start:
    """One start of one job."""

    ns: int            # time.monotonic_ns() at the start (CLOCK_MONOTONIC: comparable across processes)
    runner_pid: int
    worker: str
    worker_pid: int
    roll: str


@dataclass
class Sweep:
    """A running sweep program."""

    proc: subprocess.Popen[bytes]
    marks: Path
    log: Path
    gate: Path | None
    total: int

    def starts(self) -> dict[int, list[Start]]:
        """job index -> each of its starts, oldest first."""
        out: dict[int, list[Start]] = {}
        for p in self.marks.iterdir():
            if p.name.endswith(".tmp"):
                continue
            i, pid, ns = p.name.split(".")
            info = json.loads(p.read_text())
            out.setdefault(int(i), []).append(
                Start(int(ns), int(pid), info["worker"], int(info["worker_pid"]), info["roll"]))
        return {i: sorted(v, key=lambda s: s.ns) for i, v in out.items()}

    def started(self) -> int:
        """How many starts so far (of all jobs)."""
        return sum(1 for p in self.marks.iterdir() if not p.name.endswith(".tmp"))

    def open_gate(self) -> None:
        assert self.gate is not None
        self.gate.write_text("go\n")

    def finish(self, timeout: float) -> list[Any]:
        """Wait for the program; its results (it must have exited cleanly)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the sweep did not finish in {timeout}s:\n{self.tail()}") from None
        assert code == 0, f"the sweep failed ({code}):\n{self.tail()}"
        lines = [ln for ln in self.log.read_text().splitlines() if ln.startswith("RESULTS ")]
        assert lines, f"the sweep printed no results:\n{self.tail()}"
        return list(json.loads(lines[-1][len("RESULTS "):]))

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def sweep_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The program's environment: this one without any Grain setting of the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_") and k != "KUBERNETES_SERVICE_HOST"}
    env.update(PYTHONUNBUFFERED="1", GRAIN_PROGRESS="0", GRAIN_OUTPUT="off", **(extra or {}))
    return env


def start_sweep(procs: Processes, tmp: Path, connect: dict[str, Any], first: Sequence[float],
                then: Sequence[float] = (), *, gate: bool = False, tag: str = "sweep",
                env: dict[str, str] | None = None) -> Sweep:
    """Start the sweep program (``python sweep.py CONFIG``) in ``tmp``."""
    script = tmp / f"{tag}.py"
    script.write_text(SWEEP)
    marks = tmp / f"{tag}-marks"
    marks.mkdir()
    gate_file = tmp / f"{tag}.gate" if gate else None
    config = {"connect": connect, "marks": str(marks), "first": list(first), "then": list(then),
              "gate": str(gate_file) if gate_file else None}
    log = tmp / f"{tag}.log"
    proc = procs.start([sys.executable, str(script), json.dumps(config)], sweep_env(env), log, cwd=tmp)
    return Sweep(proc, marks, log, gate_file, len(first) + len(then))
