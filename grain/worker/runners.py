"""Warm runner processes: started once, reused for job after job, replaced when they die.

Each runner is ``python -P -m grain.runner FD WORKER_PID MAX_RESULT`` in its own session,
talking to its worker over a socket pair; one job at a time. ``-P``: the runner never
imports from the worker's working directory (a ``grain/`` folder there would shadow Grain
itself); the import path comes from the environment only (the embedded cluster passes the
user's own ``sys.path`` on purpose). A runner is the subreaper of everything its jobs
start: it kills their processes after each job, and ``RunnerProcess.kill`` kills its whole
tree (setsid daemons included) when a job is stopped from outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

import trio

from .. import config
from ..net.transport import recv_frames, send_nowait
from ..protocol.frames import FrameDecoder, Message, encode_parts
from ..protocol.messages import RunnerToWorker
from ..runner import reaper

log = logging.getLogger("grain.worker")


class RunnerDied(Exception):
    """The runner's process exited while a job was running on it."""


class RunnerProcess:
    """One warm runner process and its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 max_result: int = config.MAX_RESULT_BYTES) -> None:
        self.proc = proc
        self._pidfd = os.pidfd_open(proc.pid)
        self.sock = sock  # non-blocking once trio wraps it
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        # a job's result may be up to max_result (the runner refuses bigger ones itself);
        # anything bigger, or anything that is not a runner's message, is the job's fault:
        # the runner is killed, not the worker
        self.decoder = FrameDecoder(RunnerToWorker, max_payload=max_result + (1 << 20))
        self.fns: set[int] = set()
        self.session: int | None = None   # the one client session it serves
        self.kill_reason: Any = None
        self._ready: deque[Message] = deque()
        self.cpus: Any = None          # the CPUs of the job it last ran
        self._backlog: list[Any] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_soon(self, messages: list[Message], nursery: trio.Nursery) -> None:
        """Queue messages for the runner, in order; never blocks.

        The hot path writes straight to the non-blocking socket (a small frame always fits
        its buffer, and skipping the stream layer saves scheduler round trips per job);
        what does not fit is finished by a task, and later frames wait behind it."""
        parts = encode_parts(messages)
        if self._backlog is not None:
            self._backlog.extend(parts)
            return
        try:
            rest = send_nowait(self.sock, parts)
        except OSError:
            return  # the runner is gone; its reader reports how
        if rest:
            self._backlog = rest
            nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._backlog:
                await self.stream.send_all(self._backlog.pop(0))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self._backlog = None

    def job_rss(self) -> int:
        """Resident memory of the runner and everything its current job started, in bytes
        (what earlier jobs started is gone: the runner kills it after each job)."""
        return reaper.tree_rss(self.proc.pid)

    async def receive(self) -> Message:
        """The runner's next message. Raises ``RunnerDied`` when it exits and
        ``ProtocolError`` when it sends something that is not a runner's message."""
        while not self._ready:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                n, batches = recv_frames(self.sock, self.decoder)
            except BlockingIOError:
                continue
            except OSError:
                n, batches = 0, []
            if not n:
                with trio.move_on_after(2):  # the exit status says how it died
                    await self.wait()
                raise RunnerDied(self._exit_text())
            for batch in batches:
                self._ready.extend(batch)
        return self._ready.popleft()

    async def wait(self) -> int:
        """Wait for the process to exit (its pidfd turns readable), then reap it."""
        if self.proc.poll() is None and self._pidfd >= 0:
            await trio.lowlevel.wait_readable(self._pidfd)
        return self.proc.wait()

    def _exit_text(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "the runner closed its socket"
        if code < 0:
            try:
                return f"the runner was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"the runner was killed by signal {-code}"
        return f"the runner exited with code {code}"

    def kill(self, reason: Any = None) -> None:
        """SIGKILL the runner and everything its job started: its descendants (daemons
        that left its session included: the runner is their subreaper) and its session."""
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.proc.returncode is None:
            reaper.kill_tree(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def aclose(self) -> None:
        self.kill()
        with trio.CancelScope(shield=True):
            await self.wait()
            await self.stream.aclose()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class PooledRunner(Protocol):
    """What the pool needs of a runner (``RunnerProcess``, or the simulation's)."""

    session: int | None
    cpus: Any
    kill_reason: Any

    def kill(self, reason: Any = None) -> None: ...
    async def aclose(self) -> None: ...


R = TypeVar("R", bound=PooledRunner)


class RunnerPolicy(Generic[R]):
    """Which runner serves a job, which stay idle and which go: the pool's decisions,
    shared by ``RunnerPool`` and the simulation's stand-in (which differ in ``spawn``,
    ``usable`` and ``discard`` only)."""

    def __init__(self, *, keep_idle: int = config.KEEP_IDLE_RUNNERS,
                 spares: int = config.WARM_RUNNERS) -> None:
        self.keep_idle = keep_idle
        self.spares = spares
        self._refilling = False
        self.idle: list[R] = []
        self.busy: set[R] = set()
        self.ended: set[int | None] = set()
        self.spawned = 0

    async def spawn(self) -> R:
        """A new runner, ready to take jobs."""
        raise NotImplementedError

    def usable(self, r: R) -> bool:
        """The runner's process is alive."""
        raise NotImplementedError

    async def discard(self, r: R) -> None:
        """A runner leaves the pool for good."""
        await r.aclose()

    async def warm(self, n: int) -> None:
        """Start ``n`` idle runners ahead of the first jobs."""
        for _ in range(n - len(self.idle)):
            self.idle.append(await self.spawn())

    def wants_spares(self) -> bool:
        """Fewer never-used runners are ready than ``spares``: a new session's first job
        would wait for a runner to start (~0.3 s of interpreter start and imports)."""
        return not self._refilling and \
            sum(1 for r in self.idle if r.session is None) < self.spares

    async def refill(self) -> None:
        """Start never-used runners until ``spares`` are ready (call in the background
        after taking one: runners serve one session each, so a new session, e.g. another
        user's, finds a runner that has started already)."""
        if self._refilling:
            return
        self._refilling = True
        try:
            while sum(1 for r in self.idle if r.session is None) < self.spares \
                    and len(self.idle) < self.keep_idle:
                self.idle.append(await self.spawn())
                await trio.sleep(0)
        finally:
            self._refilling = False

    async def acquire(self, cpus: Any = None, session: int | None = None) -> R:
        """An idle runner of ``session`` (a runner never serves two sessions: one user's
        job cannot tamper with the runner of another's), preferring one last used on the
        same CPUs (no re-pinning, warm caches), else a fresh one never used."""
        while True:
            mine = [k for k in range(len(self.idle))
                    if self.idle[k].session in (session, None)]
            if not mine:
                break
            i = next((k for k in reversed(mine) if self.idle[k].cpus == cpus
                      and self.idle[k].session == session),
                     next((k for k in reversed(mine) if self.idle[k].session == session),
                          mine[-1]))
            r = self.idle.pop(i)
            if self.usable(r):
                self.busy.add(r)
                r.cpus, r.session = cpus, session
                return r
            await self.discard(r)
        r = await self.spawn()
        self.busy.add(r)
        r.cpus, r.session = cpus, session
        return r

    async def end_session(self, session: int) -> None:
        """The session is over: its idle runners go (busy ones go when released)."""
        self.ended.add(session)
        gone = [r for r in self.idle if r.session == session]
        self.idle = [r for r in self.idle if r.session != session]
        for r in gone:
            await self.discard(r)

    async def release(self, r: R, healthy: bool) -> None:
        """A lane is done with ``r``: idle again if it is healthy and wanted, else gone."""
        self.busy.discard(r)
        if healthy and r.kill_reason is None and self.usable(r) \
                and len(self.idle) < self.keep_idle and r.session not in self.ended:
            self.idle.append(r)
        else:
            await self.discard(r)


class RunnerPool(RunnerPolicy[RunnerProcess]):
    """Idle runners ready to take a job; spawns more on demand (the executor never sends a
    worker more concurrent jobs than its capacity allows)."""

    def __init__(self, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                 keep_idle: int = config.KEEP_IDLE_RUNNERS,
                 max_result: int = config.MAX_RESULT_BYTES,
                 spares: int = config.WARM_RUNNERS, adopts_orphans: bool = False) -> None:
        super().__init__(keep_idle=keep_idle, spares=spares)
        self.env = runner_env(os.environ if env is None else env)
        self.cwd = cwd
        self.max_result = max_result
        # With ``adopts_orphans`` this process is a child subreaper (``grain worker``):
        # a runner that dies abruptly leaves the processes its job started (a setsid
        # daemon, say) to it, not to init, and ``kill_orphans`` ends them. Every runner
        # process not reaped yet, by pid: those are not orphans.
        self.adopts_orphans = adopts_orphans and reaper.become_subreaper()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self.orphans_killed = 0

    async def spawn(self) -> RunnerProcess:
        parent, child = socket.socketpair()
        try:
            # Spawned from this (the trio) thread, not a helper thread: the runner's
            # PR_SET_PDEATHSIG fires when the thread that forked it exits, and trio's
            # helper threads come and go.
            # -P: nothing is imported from the working directory (see the module's doc)
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "grain.runner", str(child.fileno()),
                 str(os.getpid()), str(self.max_result)],
                pass_fds=(child.fileno(),), start_new_session=True, env=self.env,
                cwd=self.cwd, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self.spawned += 1
        self._procs[proc.pid] = proc
        return RunnerProcess(proc, parent, self.max_result)

    def usable(self, r: RunnerProcess) -> bool:
        return r.proc.poll() is None

    async def discard(self, r: RunnerProcess) -> None:
        await r.aclose()
        self.kill_orphans()

    def kill_orphans(self) -> int:
        """Kill (and reap) every child of this process that is not a runner: what jobs
        of runners that died left behind. Returns how many there were."""
        if not self.adopts_orphans:
            return 0
        for pid in [p for p, proc in self._procs.items() if proc.poll() is not None]:
            del self._procs[pid]
        found = 0
        for pid in reaper.children(os.getpid()):
            if pid in self._procs:
                continue
            if not reaper.exited(pid):
                found += 1
                reaper.kill_tree(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)   # else a zombie, reaped at the next call
        if found:
            self.orphans_killed += found
            log.info("killed %d processes left behind by jobs of runners that died", found)
        return found

    async def aclose(self) -> None:
        everyone = [*self.idle, *self.busy]
        self.idle, self.busy = [], set()
        for r in everyone:
            r.kill()
        with trio.CancelScope(shield=True):
            for r in everyone:
                await r.aclose()
        self.kill_orphans()


SECRET_VARS = ("GRAIN_TOKEN", "GRAIN_WORKER_TOKEN")


def runner_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment runners start with: the worker's, minus Grain's secrets and
    settings (a job has no business with them)."""
    return {k: v for k, v in env.items()
            if k not in SECRET_VARS and not k.startswith("GRAIN_")}
