"""Every public Grain exception.

::

    GrainError
    ├── JobError                  a job ended without a value (base of what a job can raise here)
    │   ├── RemoteError           the job's exception could not be sent back as itself
    │   ├── JobTimeout            ran past its WTime limit and was killed
    │   ├── MemoryLimitExceeded   its process tree grew past its Memory request (+ margin)
    │   ├── RunnerCrashed         the process running it died (segfault, os._exit, kill)
    │   ├── WorkerLost            its worker vanished, and the retries are used up
    │   ├── ExecutorLost          the connection to the executor was lost
    │   ├── Unschedulable         no registered worker could ever satisfy its request
    │   ├── InvalidRequest        its request was refused (a field out of range, no cores)
    │   ├── LimitExceeded         a limit was reached (queued jobs per user, result size)
    │   ├── JobCancelled          cancelled by the executor (e.g. the cluster shut down)
    │   └── SerializationError    its function, arguments or result cannot be pickled
    ├── ProtocolError             a peer sent something that is not Grain's protocol
    │   └── AuthenticationError   a wrong or missing token, or a wrong protocol version
    ├── ConfigurationError        bad arguments or settings (bad address, no token, ...)
    └── ClusterDiscoveryError     finding a GrainCluster through Kubernetes failed

A job's own exception reaches the client as itself (its type and arguments), with the
remote traceback attached as its ``__cause__`` (a ``RemoteTraceback``).
"""

from __future__ import annotations


class GrainError(Exception):
    """Base of every Grain error."""


class JobError(GrainError):
    """A job ended without a value for a reason other than its own exception."""


class RemoteError(JobError):
    """A job raised an exception that could not be pickled back; carries its repr."""


class JobTimeout(JobError):
    """A job ran past its ``WTime`` limit and was killed."""


class MemoryLimitExceeded(JobError):
    """A job's process tree grew past its ``Memory`` request plus the margin."""


class RunnerCrashed(JobError):
    """The runner process executing a job died (segfault, ``os._exit``, a signal)."""


class WorkerLost(JobError):
    """The worker running a job vanished and the job's retries are used up."""


class ExecutorLost(JobError):
    """The connection to the executor was lost while the job was pending."""


class Unschedulable(JobError):
    """No registered worker could ever satisfy the job's resource request."""


class InvalidRequest(JobError, ValueError):
    """The executor refused the job's request: a field out of range (the message names
    it), or no cores asked (use ``ZERO`` to run in the client)."""


class LimitExceeded(JobError):
    """A limit was reached: the user's queued jobs, the session's functions, a result's
    size. The message names the limit and how to change it."""


class JobCancelled(JobError):
    """The executor cancelled the job (for example, the cluster is shutting down)."""


class SerializationError(JobError):
    """A job's function, arguments or result cannot be pickled."""


class ProtocolError(GrainError):
    """A peer sent bytes that are not Grain's protocol (bad frame, oversized frame, ...)."""


class AuthenticationError(ProtocolError):
    """The handshake failed: wrong or missing token, or a protocol version mismatch."""


class ConfigurationError(GrainError):
    """Bad arguments or settings."""


class ClusterDiscoveryError(GrainError):
    """Finding or reaching a GrainCluster through the Kubernetes API failed."""


class RemoteTraceback(Exception):
    """Holds a remote traceback's text; set as ``__cause__`` of a job's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"
