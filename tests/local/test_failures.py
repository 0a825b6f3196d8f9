"""Errors and cancellation: each job ends once, with its value or a clear error."""

import os
import pathlib
import threading
import time

import psutil
import pytest
import trio
from support.waiting import wait_until_async

import grain
from grain import errors
from grain.resource import Cores, Memory, Node, WTime


class Boom(Exception):
    pass


def boom(x):
    raise Boom(f"bad input {x}")


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def pid_then_sleep(path, seconds):
    pathlib.Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def busy_forever():
    while True:
        pass


def hog_memory(mb):
    blob = bytearray(mb * 1024 * 1024)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    time.sleep(5)
    return len(blob)


def die_hard():
    os._exit(3)


def returns_unpicklable():
    return (x for x in range(3))


def flaky(path):
    p = pathlib.Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < 2:
        raise ConnectionError(f"transient failure {n}")
    return n


def test_job_exception_reaches_the_client_with_remote_traceback():
    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1), sleep_and_return, 30)
            wg.submit(Cores(1), boom, 7)
    t0 = time.monotonic()
    with pytest.raises(Boom, match="bad input 7") as info:
        grain.run_combine(main)
    assert time.monotonic() - t0 < 25, "the sibling was cancelled, not waited for"
    cause = info.value.__cause__
    assert isinstance(cause, errors.RemoteTraceback)
    assert "in boom" in cause.tb and "Boom: bad input 7" in cause.tb


def test_exec1_raises_the_job_error():
    async def main():
        with pytest.raises(Boom):
            await grain.exec1(Cores(1), boom, 1)
        return await grain.exec1(Cores(1), sleep_and_return, 0, "still fine")
    assert grain.run_combine(main) == "still fine"


def test_unpicklable_argument_fails_at_submit_and_disturbs_nothing():
    lockish = (x for x in range(2))

    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1), sleep_and_return, 0, 1)
            with pytest.raises(errors.SerializationError, match="an argument of job"):
                wg.submit(Cores(1), sleep_and_return, 0, lockish)
            wg.submit(Cores(1), sleep_and_return, 0, 2)
        return wg.results
    assert grain.run_combine(main) == [1, 2]


def test_unpicklable_function_is_named():
    lock = threading.Lock()
    gen = (x for x in range(2))

    def uses_gen():
        return next(gen), lock

    async def main():
        with pytest.raises(errors.SerializationError, match="uses_gen"):
            await grain.exec1(Cores(1), uses_gen)
    grain.run_combine(main)


def test_unpicklable_result_is_a_clear_error():
    async def main():
        with pytest.raises(errors.SerializationError, match="result"):
            await grain.exec1(Cores(1), returns_unpicklable)
        return await grain.exec1(Cores(1), sleep_and_return, 0, "ok")
    assert grain.run_combine(main) == "ok"


def test_walltime_kills_a_job_stuck_in_a_loop_and_frees_its_cores():
    async def main():
        with pytest.raises(errors.JobTimeout, match="time limit of 0.5s"):
            await grain.exec1(Cores(1) & WTime(0.5), busy_forever)
        return await grain.exec1(Cores(1), sleep_and_return, 0, "next")
    assert grain.run_combine(main, rpw=Node(1, 1)) == "next"


def test_memory_limit_stops_the_job_and_the_worker_lives():
    async def main():
        with pytest.raises(errors.MemoryLimitExceeded, match="past its Memory request"):
            await grain.exec1(Cores(1) & Memory(0.1), hog_memory, 600)
        return await grain.exec1(Cores(1) & Memory(0.1), sleep_and_return, 0, "alive")
    assert grain.run_combine(main) == "alive"


def test_runner_crash_fails_that_job_and_is_replaced():
    async def main():
        with pytest.raises(errors.RunnerCrashed, match="exited with code 3"):
            await grain.exec1(Cores(1), die_hard)
        async with grain.open_waitgroup() as wg:
            for i in range(4):
                wg.submit(Cores(1), sleep_and_return, 0, i)
        return wg.results
    assert grain.run_combine(main, rpw=Node(1, 1)) == [0, 1, 2, 3]


def test_unschedulable_request_fails_at_once():
    async def main():
        with pytest.raises(errors.Unschedulable, match="no registered worker could ever"):
            with trio.fail_after(10):
                await grain.exec1(Cores(10_000), sleep_and_return, 0)
    grain.run_combine(main)


def test_cancelling_a_wait_group_kills_running_and_drops_queued(tmp_path):
    pidfile = tmp_path / "pid"

    async def main():
        with trio.CancelScope() as scope:
            async with grain.open_waitgroup() as wg:
                wg.submit(Cores(1), pid_then_sleep, str(pidfile), 60)
                for _ in range(5):
                    wg.submit(Cores(1), sleep_and_return, 60)  # queued behind it
                await wait_until_async(pidfile.read_text, 60, "the job's pid file")
                scope.cancel()
        assert scope.cancelled_caught
        victim = int(pidfile.read_text())
        t0 = time.monotonic()
        value = await grain.exec1(Cores(1), sleep_and_return, 0, "got the core")
        return victim, value, time.monotonic() - t0
    victim, value, waited = grain.run_combine(main, rpw=Node(1, 1))
    assert value == "got the core" and waited < 10
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"


def test_cancelling_exec1_kills_the_job(tmp_path):
    pidfile = tmp_path / "pid"

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(grain.exec1, Cores(1), pid_then_sleep, str(pidfile), 60)
            await wait_until_async(pidfile.read_text, 60, "the job's pid file")
            n.cancel_scope.cancel()
        return int(pidfile.read_text()), await grain.exec1(Cores(1), sleep_and_return, 0, 5)
    victim, value = grain.run_combine(main, rpw=Node(1, 1))
    assert value == 5
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"


def test_temporary_errors_are_retried(tmp_path):
    counter = tmp_path / "n"

    async def main():
        return await grain.exec1(Cores(1), flaky, str(counter))
    assert grain.run_combine(main, temporary_err=(ConnectionError,)) == 2
    counter.unlink()
    with pytest.raises(ConnectionError):
        grain.run_combine(main, temporary_err=(ConnectionError,), temporary_attempts=2)


def test_main_raising_still_stops_everything():
    async def main():
        async with grain.open_waitgroup() as wg:
            wg.submit(Cores(1), sleep_and_return, 60)
            raise KeyError("from main")
    with pytest.raises(KeyError, match="from main"):
        grain.run_combine(main)
