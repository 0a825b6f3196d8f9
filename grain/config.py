"""Every default and every environment variable Grain reads, in one place.

The command line, the services, the client and the operator take their defaults from
here, so a default changes in one line. Environment variables are read only through the
functions below (``env_*``), which say what a malformed value means.
"""

from __future__ import annotations

import os

from .errors import ConfigurationError

# -- links -------------------------------------------------------------------------------
HEARTBEAT = 2.0
"""Ping a silent peer after this many seconds."""
PEER_TIMEOUT = 10.0
"""Declare a peer dead after this many seconds without a byte from it."""
MIN_HEARTBEAT = 0.1
HANDSHAKE_TIMEOUT = 10.0
HANDSHAKE_LIMIT = 64 * 1024
"""The largest frame a peer may send before it has authenticated."""
MAX_FRAME_HEADER = 16 * 1024 * 1024
MAX_FRAME_PAYLOAD = 1024 * 1024 * 1024

# -- reconnecting ------------------------------------------------------------------------
BACKOFF_FIRST = 0.1
"""First pause before redialling; doubled after each failure ..."""
BACKOFF_MAX = 2.0
"""... up to this. Short, so that peers find a restarted executor within seconds."""
CLIENT_GRACE = 300.0
"""How long a client keeps trying to reach a lost executor, and how long an executor
keeps a lost client's jobs, before giving up on them."""
WORKER_GRACE = 30.0
"""How long an executor waits for a lost worker to come back (with its running jobs)
before re-running those jobs elsewhere."""
CLOSED_WORKER_GRACE = 3.0
"""... but a worker whose connection *closed* (its process died, or it hung up and will
redial at once) gets only this long: a live worker is back within its first backoff."""
RECOVERY_SETTLE = 3.0
"""After a restart, how long resubmitted jobs wait before placement, so that the workers
running them can report them first."""

# -- the executor ------------------------------------------------------------------------
RETRIES = 1
"""Times a job is re-run after losing its worker (a second loss fails it: a job that
kills its worker must not take worker after worker with it)."""
WAIT_FOR_WORKERS = 600.0
"""How long a job no current worker can run waits for capacity before it fails."""
EMBEDDED_WAIT_FOR_WORKERS = 0.0
"""The embedded cluster knows all its workers at start: fail unfittable jobs at once."""
MAX_QUEUED_PER_USER = 2_000_000
MAX_CONNECTIONS = 4096
"""Connections the executor serves at once; more are refused with a log line."""
MAX_PENDING_HANDSHAKES = 256
"""Unauthenticated connections at once (each may hold up to HANDSHAKE_LIMIT bytes)."""
MAX_FUNCTION_BYTES_PER_SESSION = 2 * 1024 ** 3
MAX_BUNDLE_BYTES = 32 * 1024 ** 2
CHAIN_SHORT_SECONDS = 0.01
CHAIN_MIN_SAMPLES = 5
CHAIN_DEPTH = 16
SCHEDULE_BATCH = 32
"""Placements per call of placement; the executor makes such calls within a budget per
stretch of its event loop (``Executor._pump``), then other peers' messages are served."""
STEP_SECONDS = 0.001
"""How long the executor works on one peer's messages before it lets the others (and
``/healthz``) have a turn: a frame of thousands of submissions is served in steps. Also
the least time placement may take per stretch of the event loop. (With
2 ms, the probe of ``bench.stall`` saw a p99 stall of ~4 ms in every busy phase, with 1 ms
~2 ms; no-op throughput over TCP was the same within noise.)"""
ENDINGS_PER_STEP = 256
"""Jobs ended per step when many end at once (a session of a million queued jobs ends,
a shape no worker can run is failed): the rest after other peers were served."""

# -- the worker --------------------------------------------------------------------------
DRAIN_TIMEOUT = 60.0
"""On SIGTERM a worker lets running jobs finish for this long, then hands them back."""
MEMORY_POLL = 0.2
MEMORY_MARGIN_FRACTION = 0.10
MEMORY_MARGIN_BYTES = 100 * 1024 ** 2
MAX_RESULT_BYTES = 512 * 1024 ** 2
"""A job's pickled result may be this big; a bigger one fails the job (not the worker)."""
WARM_RUNNERS = 2
KEEP_IDLE_RUNNERS = 64

# -- job output --------------------------------------------------------------------------
OUTPUT_LINE_MAX = 16 * 1024
"""Longer lines are cut (and marked)."""
OUTPUT_BYTES_PER_JOB = 1024 * 1024
"""Output a job may send in all; past it, lines are counted as dropped."""
OUTPUT_BYTES_PER_SECOND = 256 * 1024
"""A job's output rate past which lines are dropped (counted, and said so)."""
OUTPUT_KEEP_PER_JOB = 64 * 1024
"""How much of each job's output the client keeps for ``wg.output(i)``."""
OUTPUT_KEEP_PER_GROUP = 32 * 1024 ** 2
"""... and of all the jobs of one wait group (the jobs that printed first let theirs go)."""

# -- the client --------------------------------------------------------------------------
TEMPORARY_ATTEMPTS = 3
MAP_WINDOW = 10_000
"""``wg.map`` keeps at most this many of its jobs submitted and unfinished at once."""
PROGRESS_MIN_JOBS = 8
"""A wait group with at least this many jobs shows a progress bar (in a terminal)."""
PROJECT_BUNDLE_LIMIT = MAX_BUNDLE_BYTES


def env_str(name: str, default: str | None = None) -> str | None:
    """An environment variable, stripped; ``default`` when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_flag(name: str, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); ``default`` when unset."""
    value = env_str(name)
    if value is None:
        return default
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def env_float(name: str, default: float) -> float:
    """A number of seconds (or any float) from the environment."""
    value = env_str(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r}: expected a number") from None


# Names of the environment variables Grain reads (documented in docs/interfaces.md).
ENV_TOKEN = "GRAIN_TOKEN"
ENV_WORKER_TOKEN = "GRAIN_WORKER_TOKEN"
ENV_USER = "GRAIN_USER"
ENV_ADDRESS = "GRAIN_ADDRESS"
ENV_OUTPUT = "GRAIN_OUTPUT"
ENV_PROGRESS = "GRAIN_PROGRESS"
ENV_DASHBOARD = "GRAIN_DASHBOARD"
ENV_SHIP_PROJECT = "GRAIN_SHIP_PROJECT"
ENV_CLIENT_GRACE = "GRAIN_CLIENT_GRACE"
