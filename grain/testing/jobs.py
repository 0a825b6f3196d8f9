"""Jobs as data: a ``JobSpec`` says what a simulated job does; the fake runners read it.

A job submitted in the simulation is ``sim_job(spec)``. The fake runner never calls the
function: it unpickles the arguments, as a real runner would, and plays the spec out in
(mock) time. ``sim_job`` also runs for real (on real runners) with the same meaning, except
``temp_failures`` (which needs the simulation's count of starts), so a program of specs
can be replayed on a real cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


class TempError(Exception):
    """The error a simulated job raises on its first ``temp_failures`` starts; programs
    pass it as ``temporary_err`` so that the client retries the job."""


class JobFailed(Exception):
    """The error a simulated job raises when its spec says ``raises``."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a simulated job does. ``token`` names the job across its whole life (retries,
    re-runs, restarts): the simulation's ground truth is keyed by it."""

    token: int
    duration: float = 0.0        # seconds (mock seconds in the simulation) per start
    value: int = 0               # what it returns
    raises: bool = False         # raise JobFailed (every start)
    temp_failures: int = 0       # the first k starts raise TempError (after ``duration``)
    crash: bool = False          # every start kills its runner process
    hang: bool = False           # the starts after those never return (until killed)
    prints: int = 0              # lines written to stdout while it runs
    rss: int = 0                 # bytes its processes hold (checked against Memory)


def sim_job(spec: JobSpec) -> int:
    """The job function of the simulation (run for real only outside it: the fake runners
    interpret ``spec`` without calling this)."""
    for i in range(spec.prints):
        print(f"job {spec.token} line {i}", flush=True)
    if spec.crash:
        import os
        os._exit(70)
    while spec.hang:
        time.sleep(3600)
    time.sleep(spec.duration)
    if spec.raises:
        raise JobFailed(f"job {spec.token} failed")
    return spec.value
