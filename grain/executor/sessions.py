"""The executor's peers: client sessions (which outlive their connections) and workers.

A client session is named by the client (a random 63-bit number it keeps for its whole
run) and belongs to the user its token named; it survives a lost connection for the
client's grace, so a client that reconnects (or an executor that restarted and is told
again) finds its jobs where they were. Pure data and small bookkeeping; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..resource import Resource
from .jobtable import JobTable
from .ledger import JobRecord

if TYPE_CHECKING:   # a session names its connection; this module does no I/O itself
    from ..net.link import Link


@dataclass(slots=True)
class FunctionEntry:
    """A client's function: its pickled bytes and how many live jobs name it."""

    data: bytes
    refs: int = 0
    forgotten: bool = False    # the client will not name it again


@dataclass(slots=True)
class HeldResult:
    """A result that arrived while its client was away (or before it came back)."""

    wid: int | None
    end: int
    worker: str
    message: str
    payload: bytes
    dispatched: bool = False
    """This executor gave the job to that worker itself (not a job a worker reported after
    a restart): its result answers the job wherever the client last saw it start."""


@dataclass(eq=False)
class ClientSession:
    """One client program's session."""

    sess: int
    user: str
    name: str
    link: Link | None
    jobs: JobTable[JobRecord] = field(default_factory=JobTable)     # cid -> live job
    fns: dict[int, FunctionEntry] = field(default_factory=dict)     # fid -> function
    fn_bytes: int = 0
    unacked: JobTable[int] = field(default_factory=JobTable)        # cid -> worker id
    held: JobTable[HeldResult] = field(default_factory=JobTable)    # cid -> result
    bundle: tuple[str, bytes] | None = None                         # (digest, zip)
    unclaimed: set[int] = field(default_factory=set)   # live at a resume, not resubmitted
    resumed: bool = True       # False from a restart until the client says it resubmitted
    expired: str | None = None  # resumed after this executor ended it (why): until
    # ResumeDone, its resubmitted jobs are answered that their session ended
    disconnected_at: float | None = None
    connected_at: float = 0.0
    created_at: float = 0.0
    said_bye: bool = False     # left on purpose: no grace
    closing: bool = False      # ended for good; kept only until its running jobs report

    @property
    def connected(self) -> bool:
        return self.link is not None


@dataclass(eq=False)
class WorkerSession:
    """One worker connection (a worker that reconnects gets a new one, same name)."""

    wid: int
    name: str
    link: Link
    info: dict[str, Any]
    capacity: Resource
    fns: set[tuple[int, int]] = field(default_factory=set)    # (sess, fid) it holds
    sessions: set[int] = field(default_factory=set)           # sessions that ran here
    attached: bool = False     # its Attach arrived: it may be given jobs
    rejoined: bool = False     # its process was attached before (``Attach.rejoined``)
    draining: bool = False
    said_bye: bool = False     # it left on purpose (after draining)
    held: set[tuple[int, int]] = field(default_factory=set)   # results it will resend
    connected_at: float = 0.0
