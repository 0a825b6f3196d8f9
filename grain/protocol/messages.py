"""Message types and job end codes, shared by client, executor, worker and runner.

A message header is a list ``[TYPE, ...fields]``; the fields per type are listed here.
Job payloads (function, arguments, results) are opaque bytes to the executor.
"""

from __future__ import annotations

from enum import IntEnum

PROTOCOL_VERSION = 1


class Msg(IntEnum):
    """Message types. Fields after the type are given in each comment."""

    # client -> executor
    DEFINE_FN = 1   # [fn_id]                                 payload: pickled function
    SUBMIT = 2      # [job_id, request_wire, fn_id, retries]  payload: pickled (args, kwargs)
    CANCEL = 3      # [job_id]
    # executor -> client
    RESULT = 4      # [job_id, end_code, alloc_wire|None, worker, message]  payload: value/error
    # executor -> worker
    FUNCTION = 5    # [gfn_id]                                payload: pickled function
    RUN = 6         # [gjob_id, alloc_wire, gfn_id, limits]   payload: pickled (args, kwargs)
    KILL = 7        # [gjob_id]
    FORGET_FN = 8   # [gfn_id]
    # worker -> executor
    DONE = 9        # [gjob_id, end_code, message]            payload: value/error
    # any direction
    PING = 10       # [] or [timeout_s]: the sender's timeout, first frame on a link
    PONG = 11       # []
    STATUS_REQ = 12  # []
    STATUS = 13     # [status_dict]
    BYE = 14        # [reason]


class End(IntEnum):
    """How a job ended."""

    OK = 0            # payload: the pickled value
    RAISED = 1        # payload: pickled (exception, traceback text) or a RemoteError
    CRASHED = 2       # runner died
    TIMEOUT = 3       # WTime exceeded
    MEMORY = 4        # Memory exceeded
    CANCELLED = 5     # killed on request
    WORKER_LOST = 6   # worker gone, retries used up
    UNSCHEDULABLE = 7  # no worker could ever satisfy it
    SERIALIZATION = 8  # function/arguments/result would not (un)pickle
    EXECUTOR_LOST = 9  # client-side: the executor connection dropped
