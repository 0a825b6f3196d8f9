"""The container tier's harness: a Docker engine, the project image, hardened containers.

- ``open_engine``: an engine the tests may use. As root, a private dockerd started by
  scripts/container-engine.sh (its own socket and data root, kept between runs as the image
  cache; stopped again by ``close_engine`` when this run started it). Without root, an engine
  already answering at $DOCKER_HOST. Otherwise a reason to skip.
- ``project_image``: the image built from the current sources, on the stand-in base that
  scripts/base-image.sh makes from Debian's packages (no registry is needed), installed
  offline (``OFFLINE=1``, ``--network none``) from a wheelhouse that scripts/wheelhouse.sh
  fills: the air-gapped build path is the one tested. The sources are snapshotted first and
  the image is tagged by a hash of that snapshot and the base, so a rerun with unchanged
  sources builds nothing.
- ``Containers``: containers started by a test, hardened as the operator renders pods
  (read-only root, a tmpfs at /tmp, all capabilities dropped, no new privileges, the image's
  own non-root user), on the host network; every one is removed when the block ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.waiting import free_port as free_port  # the tiers' shared helpers
from support.waiting import wait_until as wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CACHE = Path(os.environ.get("GRAIN_TEST_CACHE", "/var/cache/grain-test"))
BASE_TAG = "grain-base/python:3.11-bookworm"
IMAGE_REPO = "grain-test/grain"
#: Every container of this tier carries this label (leftovers of a killed run are found by it).
LABEL = "dev.grain.test-tier"
#: What goes into the image: the allowlist of .dockerignore, plus the Dockerfile itself.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "constraints.txt",
           "grain", "operator")


class EngineUnavailable(Exception):
    """No engine can be had here; the message says why (the tier skips with it)."""


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# -- the engine ----------------------------------------------------------------------------------


@dataclass
class Engine:
    """A Docker engine: the CLI that matches it, its address, and whether this run started it."""

    docker: str
    host: str
    started: bool
    storage: str = ""

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER": self.docker}

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; raises with its output when it fails and ``check``."""
        proc = subprocess.run([self.docker, *args], capture_output=True, text=True,
                              timeout=timeout, env=env or self.env(), stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def image_id(self, tag: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def docker_cli() -> str | None:
    """The docker CLI shipped with Debian's engine first (it speaks the daemon's API version;
    another CLI earlier on PATH may not), else whatever is on PATH."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


# Several test sessions may share the private engine at once (engineers running the tier and
# the whole suite side by side). Each registers itself (a file named after its pid) under a
# lock; the last session to leave stops the engine if a test session started it. Containers
# carry their session's pid, so a session removes only its own, and those of dead sessions.
RUN_DIR = Path(os.environ.get("GRAIN_ENGINE_RUN", "/run/grain-test"))
SESSIONS = RUN_DIR / "sessions"
STARTED_MARK = RUN_DIR / "started-by-tests"
SESSION_LABEL = f"{LABEL}.session"


@contextlib.contextmanager
def _sessions_lock() -> Iterator[None]:
    SESSIONS.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "sessions.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_sessions() -> set[int]:
    """Pids of the sessions registered and still running (stale entries are dropped)."""
    live = set()
    for entry in SESSIONS.glob("*"):
        if entry.name.isdigit() and _alive(int(entry.name)):
            live.add(int(entry.name))
        else:
            entry.unlink(missing_ok=True)
    return live


def open_engine() -> Engine:
    """An engine for the tier, or EngineUnavailable saying why not."""
    if not os.path.exists("/proc/self/cgroup"):
        raise EngineUnavailable("not Linux: the container tier needs a Linux container engine")
    docker = docker_cli()
    if docker is None:
        raise EngineUnavailable("no docker CLI: install Debian's docker.io (scripts/system-deps.sh "
                                "does, as root)")
    if os.geteuid() != 0:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        probe = subprocess.run([docker, "-H", host, "version"], capture_output=True, text=True,
                               timeout=30, check=False)
        if probe.returncode != 0:
            raise EngineUnavailable(f"not root (cannot start dockerd) and no engine answers at {host}")
        return Engine(docker, host, started=False)
    if shutil.which("dockerd") is None and not os.access("/usr/sbin/dockerd", os.X_OK):
        raise EngineUnavailable("no dockerd: scripts/system-deps.sh installs docker.io")
    with _sessions_lock():
        proc = subprocess.run([str(SCRIPTS / "container-engine.sh"), "start"], capture_output=True,
                              text=True, timeout=120, check=False,
                              env={**os.environ, "DOCKER": docker, "GRAIN_ENGINE_RUN": str(RUN_DIR)})
        if proc.returncode != 0:
            raise EngineUnavailable(f"dockerd did not start here: {proc.stderr.strip()[-1500:]}")
        out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        started = proc.stdout.startswith("started")
        if started:
            STARTED_MARK.touch()
        (SESSIONS / str(os.getpid())).touch()
    return Engine(docker, out["DOCKER_HOST"], started=started, storage=out.get("STORAGE", ""))


def close_engine(engine: Engine) -> None:
    """Leave the engine; the last session out stops it if a test session started it (its image
    store stays, as the cache). An engine this tier did not start is never stopped."""
    if os.geteuid() != 0:
        return
    with _sessions_lock():
        (SESSIONS / str(os.getpid())).unlink(missing_ok=True)
        if _live_sessions() or not STARTED_MARK.exists():
            return
        subprocess.run([str(SCRIPTS / "container-engine.sh"), "stop"], capture_output=True,
                       text=True, timeout=120, check=False,
                       env={**engine.env(), "GRAIN_ENGINE_RUN": str(RUN_DIR)})
        STARTED_MARK.unlink(missing_ok=True)


def alone(engine: Engine) -> bool:
    """Whether no other test session uses the engine now."""
    if os.geteuid() != 0:
        return True
    with _sessions_lock():
        return _live_sessions() <= {os.getpid()}


def remove_labelled(engine: Engine) -> None:
    """Remove this session's containers, and those of sessions that are gone."""
    out = engine.run("ps", "-a", "--filter", f"label={SESSION_LABEL}", "--format",
                     f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}').stdout
    ids = [cid for cid, pid in (line.split() for line in out.splitlines() if len(line.split()) == 2)
           if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid))]
    if ids:
        engine.run("rm", "-f", *ids, timeout=120, check=False)


# -- images --------------------------------------------------------------------------------------


def base_image(engine: Engine) -> str:
    """The stand-in base (scripts/base-image.sh: debootstrap, cached as a tarball)."""
    proc = subprocess.run([str(SCRIPTS / "base-image.sh"), BASE_TAG], capture_output=True,
                          text=True, timeout=900, env=engine.env(), check=False)
    if proc.returncode != 0:
        raise EngineUnavailable(f"the stand-in base image could not be made (Debian's archive "
                                f"unreachable?): {proc.stderr.strip()[-1500:]}")
    return BASE_TAG


def wheelhouse() -> Path:
    """Every wheel the image installs, cached per constraints.txt (scripts/wheelhouse.sh)."""
    key = hashlib.sha256((ROOT / "constraints.txt").read_bytes()).hexdigest()[:16]
    dest = CACHE / f"wheelhouse-{key}"
    if not (dest / ".complete").exists():
        proc = subprocess.run([str(SCRIPTS / "wheelhouse.sh"), str(dest)], capture_output=True,
                              text=True, timeout=900, check=False,
                              env={**os.environ, "PIP": f"{sys.executable} -m pip"})
        if proc.returncode != 0:
            raise EngineUnavailable(f"the wheelhouse could not be downloaded (package index "
                                    f"unreachable?): {proc.stderr.strip()[-1500:]}")
        (dest / ".complete").touch()
        for old in CACHE.glob("wheelhouse-*"):  # those of earlier constraints
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
    return dest


def snapshot_context(dest: Path, wheels: Path) -> str:
    """Copy the build context to ``dest`` (others may edit the tree meanwhile: what is built is
    what is hashed) and return the hash of the sources."""
    digest = hashlib.sha256()
    for name in CONTEXT:
        src = ROOT / name
        files = [src] if src.is_file() else sorted(
            p for p in src.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
            and not any(part.endswith(".egg-info") for part in p.parts))
        for path in files:
            rel = path.relative_to(ROOT)
            data = path.read_bytes()
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            digest.update(str(rel).encode() + b"\0" + hashlib.sha256(data).digest())
    house = dest / "build" / "wheelhouse"
    house.mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        try:
            os.link(wheel, house / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, house / wheel.name)
        digest.update(wheel.name.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ProjectImage:
    """The image, and the snapshot of the sources it was built from."""

    tag: str
    sources: Path

    def client_env(self) -> dict[str, str]:
        """Environment for a client process on the host that runs the snapshot's Grain, so
        that client and containers are one version even while the tree is being edited."""
        path = os.pathsep.join([str(self.sources), *filter(None, [os.environ.get("PYTHONPATH")])])
        return {**os.environ, "PYTHONPATH": path}


def project_image(engine: Engine, workdir: Path) -> ProjectImage:
    """The project image for the current sources: built once per change of the sources."""
    base = base_image(engine)
    wheels = wheelhouse()
    context = workdir / "context"
    key = snapshot_context(context, wheels)
    key = hashlib.sha256((key + engine.image_id(base)).encode()).hexdigest()[:16]
    tag = f"{IMAGE_REPO}:{key}"
    if not engine.has_image(tag):
        # The classic builder: BuildKit is optional in Debian's engine, and the Dockerfile must
        # build with both. --network none: the offline build needs nothing from outside.
        engine.run("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base}",
                   "--build-arg", "OFFLINE=1", "-t", tag, str(context), timeout=1200,
                   env={**engine.env(), "DOCKER_BUILDKIT": "0"})
    # Older builds of the tier are dropped (their layers shared with this one stay as cache),
    # unless another session may be running containers from them.
    if alone(engine):
        for old in engine.run("images", IMAGE_REPO, "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
            if old != tag:
                engine.run("rmi", old, check=False)
        engine.run("image", "prune", "-f", check=False)
    shutil.rmtree(context / "build", ignore_errors=True)  # the wheelhouse; the sources stay
    return ProjectImage(tag, context)


# -- containers ----------------------------------------------------------------------------------


@dataclass
class Container:
    """One running container."""

    engine: Engine
    name: str
    cid: str

    def logs(self) -> str:
        proc = self.engine.run("logs", self.cid, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict[str, Any]:
        out = self.engine.run("inspect", "--format", "{{json .State}}", self.cid).stdout
        return dict(json.loads(out))

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def wait_log(self, text: str, timeout: float = 30) -> str:
        """Wait until the container's output contains ``text``; return the output."""
        def seen() -> str | None:
            out = self.logs()
            if text in out:
                return out
            if not self.running():
                raise AssertionError(f"container {self.name} exited before printing {text!r}:\n"
                                     f"{out[-3000:]}")
            return None
        return str(wait_until(seen, timeout, f"{self.name} to print {text!r}"))

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.engine.run("exec", self.cid, *argv, check=False)


@dataclass
class Containers:
    """Containers started by one test, all removed on exit (``docker rm -f``)."""

    engine: Engine
    image: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    started: list[Container] = field(default_factory=list)

    def __enter__(self) -> Containers:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # pytest shows this output with the failure
            for c in self.started:
                print(f"--- container {c.name}:\n{c.logs()[-6000:]}")
        ids = [c.cid for c in self.started]
        if ids:
            self.engine.run("rm", "-f", *ids, timeout=120, check=False)
        # also any a failed `run` left half-made
        half = self.engine.run("ps", "-aq", "--filter", f"label={LABEL}={self.run_id}").stdout.split()
        if half:
            self.engine.run("rm", "-f", *half, timeout=120, check=False)

    def run(self, name: str, args: Sequence[str], *, image: str | None = None,
            entrypoint: Sequence[str] | None = None, env: dict[str, str] | None = None,
            cpuset: str | None = None, memory: str | None = None, user: str | None = None,
            hardened: bool = True, tmpfs: Sequence[str] = ("/tmp",),
            mounts: Sequence[tuple[str, str]] = (), extra: Sequence[str] = ()) -> Container:
        """Start a detached container on the host's network. ``hardened``: as the operator
        renders pods (read-only root, no capabilities, no new privileges); False leaves that
        to ``extra``. ``mounts``: (host path, container path) pairs, read-only.
        ``entrypoint`` replaces the image's, as a pod's ``command`` does."""
        full = f"grain-test-{name}-{self.run_id}"
        argv = ["run", "-d", "--name", full, "--label", f"{LABEL}={self.run_id}",
                "--label", f"{SESSION_LABEL}={os.getpid()}", "--network", "host"]
        if hardened:
            argv += ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        for path in tmpfs:
            argv += ["--tmpfs", f"{path}:rw,nosuid,nodev,mode=1777"]
        if user is not None:
            argv += ["--user", user]
        if cpuset is not None:
            argv += ["--cpuset-cpus", cpuset]
        if memory is not None:
            argv += ["--memory", memory, "--memory-swap", memory]  # no swap beyond the limit
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        for host_path, path in mounts:
            argv += ["--volume", f"{host_path}:{path}:ro"]
        if entrypoint:
            argv += ["--entrypoint", entrypoint[0]]
        argv += [*extra, image or self.image]
        argv += [*(entrypoint[1:] if entrypoint else ()), *args]
        cid = self.engine.run(*argv).stdout.strip()
        container = Container(self.engine, full, cid)
        self.started.append(container)
        return container

    def remove(self, container: Container) -> None:
        self.engine.run("rm", "-f", container.cid, check=False)
        self.started = [c for c in self.started if c.cid != container.cid]


def token_file(directory: Path, token: str, name: str = "token") -> Path:
    """A token file the image's user (10001) can read and nobody else, as a Secret volume
    with defaultMode 0400 and the pod's runAsUser."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(token)
    path.chmod(0o400)
    if os.geteuid() == 0:
        os.chown(path, 10001, 10001)
    return path


def listening_address(logs: str) -> str | None:
    """The grain:// address an executor prints when it listens."""
    for line in logs.splitlines():
        if "listening on grain://" in line:
            return line.rsplit(" ", 1)[-1].strip()
    return None
