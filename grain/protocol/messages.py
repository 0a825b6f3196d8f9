"""Every message of Grain's wire protocol, declared once as a typed struct.

Both ends of every hop build and read these classes; nothing else knows a message's
layout. On a stream a message travels as a msgpack array ``[TAG, field, field, ...]``
(msgspec ``array_like`` structs tagged by an integer), several per frame (see ``frames``);
on an in-process link the struct objects themselves are passed. Decoding a frame checks
every field's type and range, so a peer's malformed message is refused before any code
sees it; trailing fields a receiver does not know are ignored (older peers keep working
when a newer one appends optional fields).

Each hop has its own union (``CLIENT_TO_EXECUTOR`` and so on): a message that is valid on
one hop is a protocol error on another. Job payloads (function, arguments, result, output)
are opaque bytes beside the header; the executor never unpickles them.

``docs/protocol.md``'s message tables are generated from this module
(``python -m grain.protocol.doc``) and a test fails when they differ.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Union

import msgspec
from msgspec import Meta, Struct

PROTOCOL_VERSION = 2

# -- field types: what a peer may send --------------------------------------------------
Id = Annotated[int, Meta(ge=0, le=2 ** 63 - 1)]
"""A job, function or session id: a non-negative 64-bit integer."""
Seconds = Annotated[float, Meta(ge=0.0, le=10.0 ** 9)]
"""A duration; NaN and infinities are refused."""
Name = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=64 * 1024)]
ResourceWire = Annotated[list[tuple[Annotated[str, Meta(max_length=256)], dict[str, Any]]],
                         Meta(max_length=64)]
"""A resource in wire form: ``[[kind, state], ...]`` (see ``grain.resource.to_wire``).
Its values are checked by ``grain.resource.request_from_wire`` before placement."""
CpuList = Annotated[list[Annotated[int, Meta(ge=0, le=65535)]], Meta(max_length=65536)]
Stream = Annotated[int, Meta(ge=1, le=2)]
"""1: stdout, 2: stderr."""


class End(IntEnum):
    """How a job ended."""

    OK = 0             # payload: the pickled value
    RAISED = 1         # payload: pickled (exception, traceback text) or a RemoteError
    CRASHED = 2        # the runner died
    TIMEOUT = 3        # WTime exceeded
    MEMORY = 4         # Memory exceeded
    CANCELLED = 5      # killed on request
    WORKER_LOST = 6    # worker gone, retries used up
    UNSCHEDULABLE = 7  # no worker could ever satisfy it
    SERIALIZATION = 8  # function/arguments/result would not (un)pickle
    EXECUTOR_LOST = 9  # client-side: the executor connection is gone for good
    INVALID = 10       # the request was refused: a field out of range, a bad kind
    REFUSED = 11       # a limit was reached (queued jobs per user, result size)
    HANDED_BACK = 12   # worker -> executor: not run (the worker is draining); run elsewhere


EndCode = Annotated[int, Meta(ge=0, le=int(max(End)))]


class Message(Struct, array_like=True, tag_field="t", omit_defaults=False, gc=False):
    """Base of every message (``tag`` is its type number on the wire).

    Messages are not tracked by Python's cyclic garbage collector (``gc=False``): they
    hold plain data decoded from the wire, never a cycle, and a burst of a peer's
    hundreds of thousands of decoded messages must not make every collection slower."""


# -- any hop ------------------------------------------------------------------------------
class Ping(Message, tag=10):
    """Keep-alive. The first frame on a stream carries the sender's ``timeout``: the peer
    then pings at least every ``timeout / 4`` seconds."""

    timeout: Seconds | None = None


class Bye(Message, tag=14):
    """The sender closes the link on purpose."""

    reason: Text = ""


class StatusRequest(Message, tag=12):
    """Ask the executor for its status document."""


class Status(Message, tag=13):
    """The executor's status document (the JSON served at ``/status``)."""

    doc: dict[str, Any]


# -- client -> executor -------------------------------------------------------------------
class DefineFunction(Message, tag=1):
    """A function the client's jobs will name by ``fid``. Payload: the pickled function."""

    fid: Id


class ForgetFunction(Message, tag=8):
    """The client will not name ``fid`` again; the executor frees it once no job uses it."""

    fid: Id


class Submit(Message, tag=2):
    """A job. Payload: the pickled ``(args, kwargs)``.

    ``cid`` is the job's id for its whole life in the client (retries included).
    ``started_on`` is set only when a reconnecting client resubmits a job it had seen
    start on that worker: the executor then waits for the worker to report it instead of
    running it again."""

    cid: Id
    request: ResourceWire
    fid: Id
    retries: Annotated[int, Meta(ge=0, le=100)] | None = None
    name: Name = ""
    started_on: Name | None = None


class Cancel(Message, tag=3):
    """Drop the job from the queue, or kill it where it runs."""

    cid: Id


class Ack(Message, tag=15):
    """The client holds these jobs' results: workers may forget their copies."""

    cids: list[Id]


class ResumeDone(Message, tag=26):
    """A reconnecting client has resubmitted every unfinished job: what workers still
    report for this session beyond those is stale."""


class ProjectBundle(Message, tag=22):
    """The user's project code (a zip of its modules), for workers to import from.
    Payload: the zip. ``digest`` is its SHA-256 (hex)."""

    digest: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


# -- executor -> client -------------------------------------------------------------------
class Started(Message, tag=16):
    """The job started (or, after a restart, was found running) on ``worker``."""

    cid: Id
    worker: Name
    alloc: ResourceWire


class Result(Message, tag=4):
    """The job ended. Payload: the pickled value (OK) or error (RAISED)."""

    cid: Id
    end: EndCode
    worker: Name = ""
    message: Text = ""


class Output(Message, tag=17):
    """Lines the job wrote (payload: whole lines, UTF-8 where they were), and how many
    lines were dropped before them by the output limits."""

    cid: Id
    stream: Stream
    dropped: Annotated[int, Meta(ge=0)] = 0


# -- executor -> worker -------------------------------------------------------------------
class Function(Message, tag=5):
    """A function some of the session's jobs run. Payload: the pickled function."""

    sess: Id
    fid: Id


class Run(Message, tag=6):
    """Run a job on ``alloc``. Payload: the pickled ``(args, kwargs)``. ``after`` names the
    job of the same session it is chained behind (same allocation, same runner)."""

    sess: Id
    cid: Id
    fid: Id
    alloc: ResourceWire
    user: Name
    time_limit: Seconds | None = None
    memory_limit: Annotated[int, Meta(ge=0)] | None = None
    after: Id | None = None
    name: Name = ""


class Kill(Message, tag=7):
    """Kill the job (or drop it if it has not started yet)."""

    sess: Id
    cid: Id


class DropFunction(Message, tag=18):
    """No job will use this function any more."""

    sess: Id
    fid: Id


class Release(Message, tag=19):
    """The client holds these results: forget the worker's copies."""

    sess: Id
    cids: list[Id]


class EndSession(Message, tag=20):
    """The session is over for good: kill its runners, forget its code."""

    sess: Id


class SessionBundle(Message, tag=21):
    """The session's project code (payload: the zip), before its first job here."""

    sess: Id
    digest: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


# -- worker -> executor -------------------------------------------------------------------
class AttachedJob(Struct, array_like=True, gc=False):
    """A job a (re)connecting worker is running: the executor re-attaches it."""

    sess: Id
    cid: Id
    fid: Id
    user: Name
    alloc: ResourceWire
    elapsed: Seconds
    name: Name = ""
    after: Id | None = None
    """The job of the same session it waits behind on the same allocation (chained), or
    None for the job running on it."""


class HeldJob(Struct, array_like=True, gc=False):
    """A finished job whose result a (re)connecting worker still holds; the ``Done``
    carrying it follows the ``Attach``."""

    sess: Id
    cid: Id
    user: Name


KEPT_SESSIONS_MAX = 1 << 16
"""At most this many sessions in one ``Attach`` (a worker names its newest)."""


class KeptSession(Struct, array_like=True, gc=False):
    """A client session a (re)connecting worker keeps something of (idle runners, code),
    whether or not it runs a job of it: a restarted executor that never knew the session
    must still end it there when its client does not come back."""

    sess: Id
    user: Name


class Attach(Message, tag=23):
    """First message of a worker after the handshake: the jobs it is running, the
    results it holds (those follow as ``Done`` messages) and every session it keeps
    something of. ``rejoined``: this worker process was attached before (to this executor
    or an earlier one), so a job given to it that it does not report, it never received
    (the ``Run`` was lost with the connection); else it restarted, and lost its jobs."""

    running: Annotated[list[AttachedJob], Meta(max_length=1 << 20)] = []
    held: Annotated[list[HeldJob], Meta(max_length=1 << 20)] = []
    sessions: Annotated[list[KeptSession], Meta(max_length=KEPT_SESSIONS_MAX)] = []
    rejoined: bool = False


class Done(Message, tag=9):
    """A job ended. Payload: the pickled value (OK) or error (RAISED)."""

    sess: Id
    cid: Id
    end: EndCode
    message: Text = ""


class JobOutput(Message, tag=24):
    """Lines a job wrote (payload), relayed to its client as ``Output``."""

    sess: Id
    cid: Id
    stream: Stream
    dropped: Annotated[int, Meta(ge=0)] = 0


class Draining(Message, tag=25):
    """The worker takes no new jobs; its running ones finish (or are handed back)."""

    reason: Text = ""


# -- worker <-> runner (a socket pair; local, but still checked) ---------------------------
class RunnerFunction(Message, tag=30):
    """A function, named ``key`` on this runner. Payload: the pickled function."""

    key: Id


class RunnerJob(Message, tag=31):
    """Run a job: pin to ``cpus`` (None: the runner's whole affinity), set ``env``, call.
    Payload: the pickled ``(args, kwargs)``."""

    jid: Id
    key: Id
    alloc: ResourceWire
    cpus: CpuList | None
    env: dict[str, str]
    instance: Name
    code_path: Annotated[str, Meta(max_length=4096)] | None = None
    """A directory holding the session's project code, put first on ``sys.path``."""


class RunnerForget(Message, tag=32):
    """Forget the function named ``key``."""

    key: Id


class RunnerDone(Message, tag=33):
    """The runner's job ended. Payload: value or error, as in ``Done``."""

    jid: Id
    end: EndCode
    message: Text = ""


class RunnerOutput(Message, tag=34):
    """Whole lines the runner's job wrote to its fds 1 and 2 (Python, C code and the job's
    subprocesses alike), batched (payload), and how many lines were dropped before them."""

    jid: Id
    stream: Stream
    dropped: Annotated[int, Meta(ge=0)] = 0


# -- what peers say about themselves in the handshake (``Auth.info``) -----------------------
class ClientHello(Struct):
    """A client's handshake info. ``session`` is the client's own random id for its whole
    run; ``resume`` says it is reconnecting (and will resubmit its unfinished jobs)."""

    name: Name = ""
    session: Id | None = None
    resume: bool = False


class WorkerHello(Struct):
    """A worker's registration: what it offers and where."""

    name: Name
    capacity: ResourceWire
    cpuset: CpuList = []
    exclusive_cpuset: bool = False
    gpus: CpuList = []
    pid: Annotated[int, Meta(ge=0)] = 0
    host: Name = ""


# -- the unions each hop decodes ---------------------------------------------------------
ClientToExecutor = Union[DefineFunction, ForgetFunction, Submit, Cancel, Ack,  # noqa: UP007
                         ResumeDone, ProjectBundle, StatusRequest, Ping, Bye]
ExecutorToClient = Union[Started, Result, Output, Status, Ping, Bye]  # noqa: UP007
ExecutorToWorker = Union[Function, Run, Kill, DropFunction, Release,  # noqa: UP007
                         EndSession, SessionBundle, Status, Ping, Bye]
WorkerToExecutor = Union[Attach, Done, JobOutput, Draining, StatusRequest,  # noqa: UP007
                         Ping, Bye]
WorkerToRunner = Union[RunnerFunction, RunnerJob, RunnerForget]  # noqa: UP007
RunnerToWorker = Union[RunnerDone, RunnerOutput]  # noqa: UP007
ObserverToExecutor = Union[StatusRequest, Ping, Bye]  # noqa: UP007
ExecutorToObserver = Union[Status, Ping, Bye]  # noqa: UP007

HOPS: dict[str, Any] = {
    "client -> executor": ClientToExecutor,
    "executor -> client": ExecutorToClient,
    "executor -> worker": ExecutorToWorker,
    "worker -> executor": WorkerToExecutor,
    "worker -> runner": WorkerToRunner,
    "runner -> worker": RunnerToWorker,
    "observer -> executor": ObserverToExecutor,
    "executor -> observer": ExecutorToObserver,
}
"""Every hop and the messages it carries (for the generated protocol docs)."""


def tag_of(cls: type[Message]) -> int:
    """A message class's type number on the wire."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, int)
    return tag


def all_messages() -> list[type[Message]]:
    """Every message class, by type number."""
    seen: dict[int, type[Message]] = {}
    for union in HOPS.values():
        for cls in union.__args__:
            seen[tag_of(cls)] = cls
    return [seen[t] for t in sorted(seen)]


def validate(value: Any, cls: type[Any]) -> Any:
    """Convert plain data (a handshake's info dict) to ``cls``, checking every field;
    raises ``msgspec.ValidationError``."""
    return msgspec.convert(value, cls, strict=True)
