"""Real Grain processes for the network tests: executors and workers started through the
CLI (``python -m grain.cli ...``), waited for, observed and cleaned up.

Nothing of Grain's own is mocked: every process is the real command line, every byte goes
over a real socket. Each process's stdout and stderr go to a log file in the test's
temporary directory, so a failing test can show what the processes said.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil
import trio

import grain

NET_DIR = Path(__file__).resolve().parent
REPO = NET_DIR.parents[1]
if str(NET_DIR.parent) not in sys.path:   # tests/: also for programs that import this module
    sys.path.insert(0, str(NET_DIR.parent))

from support.waiting import free_port as free_port  # noqa: E402 - the tiers' shared helpers
from support.waiting import wait_until as wait_until  # noqa: E402
from support.waiting import wait_until_async  # noqa: E402

TOKEN = "s3cret-network-test-token"
WORKER_TOKEN = "s3cret-network-test-workers-secret"


def user_token(user: str) -> str:
    """The client token of ``user`` when tokens are by role."""
    return f"s3cret-token-of-{user}-0123456789"

# Small heartbeat settings so that dead and half-open peers are found in seconds.
HEARTBEAT = 0.5
TIMEOUT = 2.0


def process_env() -> dict[str, str]:
    """Environment for Grain processes: job modules importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(NET_DIR), str(REPO),
                                         *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("GRAIN_TOKEN", None)
    env.pop("GRAIN_ADDRESS", None)
    return env


class GrainProc:
    """One CLI process and its log."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path,
                 netns: str | None = None, program: Sequence[str] | None = None) -> None:
        """``program``: what runs ``argv`` (``grain``'s command line unless given)."""
        self.name = name
        self.log_path = log_path
        self.netns = netns
        full = [*(program or (sys.executable, "-m", "grain.cli")), *argv]
        if netns:
            full = ["ip", "netns", "exec", netns, *full]
        self.argv = full
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(full, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=process_env(), cwd=cwd)
        self.seen_descendants: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex); fail if the process exits."""
        rx = re.compile(pattern)

        def check() -> re.Match[str] | None:
            m = rx.search(self.text())
            if m is None and self.popen.poll() is not None:
                m = rx.search(self.text())
                if m is None:
                    raise ProcessExited(f"{self.name} exited with {self.popen.returncode} "
                                        f"before printing {pattern!r}:\n{self.tail()}")
            return m
        deadline = time.monotonic() + timeout
        while True:
            m = check()
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not print {pattern!r} within "
                                     f"{timeout:g}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def note_descendants(self) -> list[psutil.Process]:
        """Remember the process's descendants (runners and jobs) so that teardown can
        check none of them outlives it."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        for k in kids:
            self.seen_descendants.setdefault(k.pid, k)
        return kids

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.note_descendants()
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """Interrupt (Ctrl-C), then kill after ``grace`` seconds. Returns the exit code."""
        self.note_descendants()
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def survivors(self, wait: float = 5.0) -> list[str]:
        """Descendants seen earlier that still run (zombies do not count)."""
        deadline = time.monotonic() + wait
        while True:
            left = []
            for p in self.seen_descendants.values():
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        left.append(f"{p.pid} {' '.join(p.cmdline())}")
                except psutil.Error:
                    pass
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


class ProcessExited(AssertionError):
    """A process exited while a test was waiting for it to say something."""


class ExecutorProc(GrainProc):
    """``grain executor`` with its address and HTTP endpoints."""

    address: str
    http: str
    host: str
    port: int
    http_port: int

    def ready(self, timeout: float = 15.0) -> ExecutorProc:
        m = self.wait_for(r"grain executor listening on grain://(\S+):(\d+)", timeout)
        self.port = int(m.group(2))
        self.address = f"grain://{self.host}:{self.port}"
        m = self.wait_for(r"grain executor HTTP on http://(\S+):(\d+)", timeout)
        self.http_port = int(m.group(2))
        self.http = f"http://{self.host}:{self.http_port}"
        wait_until(lambda: self.get("/healthz") == "ok\n", timeout, f"{self.http}/healthz")
        return self

    def get(self, path: str, timeout: float = 3.0) -> str:
        with urllib.request.urlopen(self.http + path, timeout=timeout) as r:  # noqa: S310
            return r.read().decode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/status"))

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name (labels are not used by Grain's metrics)."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def workers(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in self.status()["workers"]}

    def wait_status(self, pred: Callable[[dict[str, Any]], Any], timeout: float,
                    what: str) -> dict[str, Any]:
        box: list[dict[str, Any]] = []

        def check() -> bool:
            st = self.status()
            box[:] = [st]
            return bool(pred(st))
        try:
            wait_until(check, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; last status: {box[-1] if box else None}\n"
                                 f"executor log:\n{self.tail()}") from None
        return box[0]

    def wait_workers(self, names: Iterable[str], timeout: float = 20.0) -> dict[str, Any]:
        want = set(names)
        return self.wait_status(lambda st: want <= {w["name"] for w in st["workers"]},
                                timeout, f"workers {sorted(want)} to register")

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        """Until nothing runs or waits, and every submitted job is accounted for once."""
        def idle(st: dict[str, Any]) -> bool:
            j = st["jobs"]
            return (st["running_jobs"] == 0 and st["queue_length"] == 0
                    and j["finished"] + j["failed"] + j["cancelled"] == j["submitted"])
        return self.wait_status(idle, timeout, "the executor to be idle with every job ended")


class Harness:
    """Starts Grain processes for one test and cleans them all up afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = TOKEN
        self.token_file = tmp / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.procs: list[GrainProc] = []
        self._clients: list[subprocess.Popen] = []
        self._n = 0

    def _log(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:02d}-{name}.log"

    def executor(self, *, host: str = "127.0.0.1", port: int = 0, http_port: int = 0,
                 heartbeat: float = HEARTBEAT, timeout: float = TIMEOUT,
                 retries: int | None = None, tls: tuple[str, str] | None = None,
                 token_file: Path | None = None, extra: Sequence[str] = (),
                 netns: str | None = None, wait: bool = True,
                 name: str = "executor",
                 users: dict[str, str] | None = None) -> ExecutorProc:
        """``users`` (name -> a line's options after the token, e.g. ``"weight=2"``): tokens
        by role (``--client-tokens`` with a token per user, and the workers' secret in
        ``self.worker_token_file``) instead of the one shared token."""
        auth = ["--token-file", str(token_file or self.token_file)]
        if "--client-tokens" in extra:
            auth = []        # the caller gives tokens by role itself
        if users is not None:
            auth = ["--client-tokens", str(self.client_tokens(users)),
                    "--worker-token-file", str(self.worker_token_file)]
        argv = ["executor", "--listen", f"grain://{host}:{port}", "--http", f"{host}:{http_port}",
                *auth, "--heartbeat", str(heartbeat), "--timeout", str(timeout), *extra]
        if retries is not None:
            argv += ["--retries", str(retries)]
        if tls:
            argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        p = ExecutorProc(name, argv, self._log(name), self.tmp, netns)
        p.host = host
        self.procs.append(p)
        if wait:
            p.ready()
        return p

    @property
    def worker_token_file(self) -> Path:
        """The workers' secret when tokens are by role (see ``executor(users=...)``)."""
        path = self.tmp / "worker-token"
        if not path.exists():
            path.write_text(WORKER_TOKEN + "\n")
        return path

    def client_tokens(self, users: dict[str, str]) -> Path:
        """Write the client tokens file: user ``u``'s token is ``user_token(u)``."""
        path = self.tmp / "client-tokens"
        path.write_text("# user token options\n" + "".join(
            f"{u} {user_token(u)} {opts}\n" for u, opts in users.items()))
        return path

    def worker(self, name: str, executor: ExecutorProc | str, *, cores: str = "0",
               heartbeat: float = HEARTBEAT, timeout: float = TIMEOUT,
               tls_ca: str | None = None, token_file: Path | None = None,
               extra: Sequence[str] = (), netns: str | None = None,
               wait: bool = True, memory: str = "2GB") -> GrainProc:
        addr = executor if isinstance(executor, str) else executor.address
        argv = ["worker", "--executor", addr, "--token-file", str(token_file or self.token_file),
                "--name", name, "--cores", cores, "--memory", memory, "--gpus", "none",
                "--heartbeat", str(heartbeat), "--timeout", str(timeout), *extra]
        if tls_ca:
            argv += ["--tls-ca", tls_ca]
        p = GrainProc(f"worker-{name}", argv, self._log(f"worker-{name}"), self.tmp, netns)
        self.procs.append(p)
        if wait and isinstance(executor, ExecutorProc):
            executor.wait_workers([name])
        return p

    def passive_worker(self, name: str, listen: str, *, cores: str = "0",
                       memory: str = "1GB", extra: Sequence[str] = (),
                       netns: str | None = None) -> GrainProc:
        """``grain worker --listen``: the original's form, dialled by the executor."""
        argv = ["worker", "--listen", listen, "--token-file", str(self.token_file),
                "--name", name, "--cores", cores, "--memory", memory, "--gpus", "none",
                *extra]
        p = GrainProc(f"worker-{name}", argv, self._log(f"worker-{name}"), self.tmp, netns)
        self.procs.append(p)
        return p

    def cli(self, *argv: str, timeout: float = 30.0, netns: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a short-lived ``grain`` command and return its completed process."""
        full = [sys.executable, "-m", "grain.cli", *argv]
        if netns:
            full = ["ip", "netns", "exec", netns, *full]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              env={**process_env(), "COLUMNS": "200", **(env or {})},
                              cwd=self.tmp)

    def python(self, script: Path | str, *args: str, log: str = "client",
               stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
        """Start a Python program (a Grain client) as its own process (``stdin``:
        ``subprocess.PIPE`` to talk to it)."""
        f = open(self._log(log), "ab")  # noqa: SIM115 - the process owns it
        p = subprocess.Popen([sys.executable, str(script), *args], stdout=f,
                             stderr=subprocess.STDOUT, stdin=stdin,
                             env=process_env(), cwd=self.tmp)
        f.close()
        self._clients.append(p)
        return p

    def cleanup(self) -> list[str]:
        """Stop everything (Ctrl-C, then SIGKILL); return survivors' descriptions."""
        for c in self._clients:
            if c.poll() is None:
                c.kill()
                c.wait(5)
        problems = []
        for p in reversed(self.procs):
            p.stop()
        for p in self.procs:
            for s in p.survivors():
                problems.append(f"{p.name} left {s}")
                try:
                    os.kill(int(s.split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        return problems


# -- clients in the test process --------------------------------------------------------

def run_client(ex: ExecutorProc, main: Callable[[], Any], *, limit: float = 30.0,
               token: str = TOKEN, **kw: Any) -> Any:
    """``grain.run_combine(main)`` against ``ex``, bounded by ``limit`` seconds."""
    async def bounded() -> Any:
        with trio.fail_after(limit):
            return await main()
    kw.setdefault("heartbeat", HEARTBEAT)
    kw.setdefault("timeout", TIMEOUT)
    return grain.run_combine(bounded, address=kw.pop("address", ex.address), token=token, **kw)


async def each_once(jobs: dict[Any, tuple[Any, Callable[..., Any], tuple[Any, ...]]]
                    ) -> dict[Any, tuple[str, Any]]:
    """Run every job with ``exec1`` concurrently; return each one's single ending,
    ``("ok", value)`` or ``("err", exception)``. Fails if a job ends twice."""
    out: dict[Any, tuple[str, Any]] = {}

    async def one(key: Any, res: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            value = await grain.exec1(res, fn, *args)
        except Exception as e:  # noqa: BLE001 - each job's ending is recorded
            outcome: tuple[str, Any] = ("err", e)
        else:
            outcome = ("ok", value)
        assert key not in out, f"job {key} ended twice: {out[key]} and {outcome}"
        out[key] = outcome

    async with trio.open_nursery() as n:
        for key, (res, fn, args) in jobs.items():
            n.start_soon(one, key, res, fn, args)
    assert set(out) == set(jobs)
    return out


# -- shapes of fault tests (tests/network/test_faults.py, tests/netns) -----------------------
async def wait_markers(marks: str, count: int, tag: str | None = None,
                       limit: float = 20.0) -> list[tuple[str, str, int]]:
    """Until ``count`` job attempts (of ``tag``) have started (``netjobs.mark_and_sleep``);
    returns them, oldest first."""
    import netjobs

    def started() -> list[tuple[str, str, int]] | None:
        found = netjobs.markers(marks, tag)
        return found if len(found) >= count else None
    return await wait_until_async(started, limit, f"{count} attempts of {tag or 'jobs'} to start")


def fault_one_worker(ex: ExecutorProc, marks: str, fault: Callable[[str], None],
                     heal: Callable[[str], None], *, heal_after: float | None = None,
                     seconds: float = 2.5, limit: float = 40.0
                     ) -> tuple[dict[Any, tuple[str, Any]], dict[str, Any]]:
    """A worker goes silent mid-job (SIGSTOP, a cut cable): two jobs, "a" and "b"
    (``netjobs.mark_and_sleep`` for ``seconds``), one per worker; once both run,
    ``fault(victim)`` hits the worker running "a", and the executor must declare it lost
    within the heartbeat timeout. ``heal(victim)`` undoes the fault ``heal_after`` seconds
    after that (inside the program), or else once the program has ended, and always on the
    way out. Returns each job's ending (``each_once``) and ``info``: ``victim``,
    ``detected_after`` (seconds from the fault to the executor dropping the worker)."""
    import netjobs

    from grain.resource import Cores

    info: dict[str, Any] = {}

    async def main() -> dict[Any, tuple[str, Any]]:
        box: dict[str, dict[Any, tuple[str, Any]]] = {}

        async def jobs() -> None:
            box["out"] = await each_once({t: (Cores(1), netjobs.mark_and_sleep,
                                              (marks, t, seconds)) for t in ("a", "b")})
        async with trio.open_nursery() as n:
            n.start_soon(jobs)
            started = await wait_markers(marks, 2)
            victim = next(w for t, w, _ in started if t == "a")
            info["victim"] = victim
            fault(victim)
            t0 = time.monotonic()
            await wait_until_async(lambda: victim not in ex.workers(), TIMEOUT + 2.0,
                                   f"the executor to find worker {victim} silent")
            info["detected_after"] = time.monotonic() - t0
            if heal_after is not None:
                await trio.sleep(heal_after)   # how long the fault lasts
                heal(victim)
                info["healed"] = True
        return box["out"]

    try:
        out: dict[Any, tuple[str, Any]] = run_client(ex, main, limit=limit)
    finally:
        if "victim" in info and "healed" not in info:
            heal(info["victim"])
    return out, info
