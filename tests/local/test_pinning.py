"""Every job runs pinned to exactly its allocated cores, with thread counts to match."""

import os
import subprocess
import sys

import pytest

import grain
from grain.resource import Cores, Memory, Node

CPUS = sorted(os.sched_getaffinity(0))


def report():
    return (sorted(grain.GVAR.res.c) if "Cores" in grain.GVAR.res.kinds() else None,
            sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"),
            os.environ.get("OPENBLAS_NUM_THREADS"), os.getpid())


def child_affinity():
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, check=True)
    return sorted(grain.GVAR.res.c), out.stdout.strip()


def test_each_job_sees_exactly_its_cores():
    async def main():
        async with grain.open_waitgroup() as wg:
            for _ in range(12):
                wg.submit(Cores(1), report)
            wg.submit(Cores(len(CPUS)), report)
        return wg.results
    results = grain.run_combine(main)
    for alloc, affinity, omp, blas, _ in results:
        assert alloc == affinity, "pinned to exactly the allocated CPU ids"
        assert omp == blas == str(len(alloc))
    assert results[-1][1] == CPUS
    assert len({pid for *_, pid in results}) <= len(CPUS) + 1, "runners are reused"


def test_subprocesses_inherit_the_pinning():
    async def main():
        return await grain.exec1(Cores(1), child_affinity)
    alloc, child = grain.run_combine(main)
    assert child == str(alloc)


def test_requests_without_cores_are_refused_at_submit():
    """Nothing runs in a runner outside the accounting: a job that asks for no core
    (memory only, Cores(0)) is refused at once, saying what to ask instead."""
    from grain.errors import InvalidRequest

    async def main():
        for request in (Memory(0.2), Cores(0), Cores(0) & Memory(1)):
            with pytest.raises(InvalidRequest, match=r"at least Cores\(1\)"):
                await grain.exec1(request, report)
        return "ok"
    assert grain.run_combine(main) == "ok"


def test_declared_cores_beyond_the_machine_are_mapped(caplog):
    declared = 3 * len(CPUS)

    async def main():
        async with grain.open_waitgroup() as wg:
            for _ in range(declared):
                wg.submit(Cores(1), report)
        return wg.results
    results = grain.run_combine(main, rpw=Node(declared, 4))
    assert "declared but only" in caplog.text
    seen_declared = {a[0] for a, *_ in results}
    assert seen_declared <= set(range(declared))
    for alloc, affinity, *_ in results:
        assert affinity == [CPUS[alloc[0] % len(CPUS)]]


def test_rpw_caps_the_local_worker():
    async def main():
        async with grain.open_waitgroup() as wg:
            for _ in range(4):
                wg.submit(Cores(1), report)
        return wg.results
    results = grain.run_combine(main, rpw=Node(1, 1))
    assert {tuple(r[1]) for r in results} == {(CPUS[0],)}


def gpu_env():
    return sorted(grain.GVAR.res.g), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpus_are_allocated_and_made_visible():
    from grain.resource import GPU

    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1) & GPU(2), gpu_env)
            wg.submit(Cores(1) & GPU(1), gpu_env)
        return wg.results
    (ids2, env2), (ids1, env1) = grain.run_combine(main, rpw=Node(2, 2) & GPU([0, 1, 2]))
    assert env2 == ",".join(map(str, ids2)) and len(ids2) == 2
    assert env1 == ",".join(map(str, ids1)) and len(ids1) == 1
    assert not set(ids1) & set(ids2), "devices are not shared between running jobs"


def test_worker_lifetime_limits_placement():
    import pytest

    from grain.errors import Unschedulable
    from grain.resource import WTime

    async def main():
        ok = await grain.exec1(Cores(1) & WTime(5), gpu_free_report)
        with pytest.raises(Unschedulable):
            await grain.exec1(Cores(1) & WTime(3600), gpu_free_report)
        return ok
    assert grain.run_combine(main, rpw=Node(1, 1) & WTime(600, countdown=True)) == "ran"


def gpu_free_report():
    return "ran"
