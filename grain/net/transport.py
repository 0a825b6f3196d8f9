"""TCP/TLS/Unix connect and listen for trio; the thin socket shell under ``StreamLink``."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..protocol.frames import FrameDecoder, Message
from .endpoints import Endpoint

log = logging.getLogger("grain.net")


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context from a certificate chain and key file."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_ssl_context(ca: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A TLS client context trusting ``ca`` (or the system store)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(ep: Endpoint, ssl_context: ssl.SSLContext | None = None, *,
                  server_hostname: str | None = None) -> trio.abc.Stream:
    """Open a stream to ``ep``, TLS-wrapped when ``ssl_context`` is given.

    The certificate is checked against ``server_hostname`` when given, else against the
    address's host: a GrainCluster reached through a port-forward on 127.0.0.1 (or a node
    port) still proves to be the executor Service's DNS name, so the certificate needs no
    IP address in it.
    """
    stream: trio.abc.Stream
    if ep.path is not None:
        stream = await trio.open_unix_socket(ep.path)
    else:
        stream = await trio.open_tcp_stream(ep.host or "127.0.0.1", ep.port)
    if ssl_context is not None:
        tls = trio.SSLStream(stream, ssl_context,
                             server_hostname=server_hostname or ep.host or None)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as e:
            # trio hides the reason (a certificate that does not verify, a peer that does
            # not speak TLS) in __cause__: raise it, an OSError callers already handle.
            await trio.aclose_forcefully(tls)
            cause = e.__cause__
            if isinstance(cause, ssl.SSLError):
                raise cause from None
            raise ConnectionError(f"TLS handshake with {ep} failed: connection lost") from e
        return tls
    return stream


def describe_error(e: BaseException) -> str:
    """A one-line reason for a failed connection, for logs (TLS causes included)."""
    cause = e.__cause__
    if isinstance(e, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def open_listeners(ep: Endpoint, ssl_context: ssl.SSLContext | None = None
                         ) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], Endpoint]:
    """Listeners for ``ep`` and the endpoint really bound (port 0 -> the chosen port)."""
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if ep.path is not None:
        import os
        if os.path.exists(ep.path):
            os.unlink(ep.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(ep.path)
        os.chmod(ep.path, 0o600)
        sock.listen(512)
        listeners = [trio.SocketListener(sock)]
        bound = ep
    else:
        tcp = await trio.open_tcp_listeners(ep.port, host=ep.host or None, backlog=512)
        listeners = list(tcp)
        port = tcp[0].socket.getsockname()[1]
        bound = Endpoint(host=ep.host or "0.0.0.0", port=port)
    if ssl_context is not None:
        listeners = [trio.SSLListener(lst, ssl_context, https_compatible=False)
                     for lst in listeners]
    return listeners, bound


ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""``accept`` errors that mean "out of file descriptors or memory, for now"."""
ACCEPT_RETRY = 0.1
LOG_EVERY = 10.0


async def serve(listeners: list[trio.abc.Listener[trio.abc.Stream]],
                handler: Callable[[trio.abc.Stream], Awaitable[None]],
                what: str = "connections") -> None:
    """Serve connections forever, each in its own task.

    Out of file descriptors, ``accept`` fails until some are closed: that is one log line
    (at most every 10 s) and a retry every 0.1 s, not a traceback per attempt (as
    ``trio.serve_listeners`` logs); waiting connections are accepted once descriptors
    are free again."""
    async with trio.open_nursery() as n:
        for listener in listeners:
            n.start_soon(_accept_loop, listener, handler, what, n)


async def _accept_loop(listener: trio.abc.Listener[trio.abc.Stream],
                       handler: Callable[[trio.abc.Stream], Awaitable[None]], what: str,
                       n: trio.Nursery) -> None:
    last_log = -LOG_EVERY
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in ACCEPT_EXHAUSTED:
                    raise
                now = trio.current_time()
                if now - last_log >= LOG_EVERY:
                    last_log = now
                    log.warning("cannot accept %s: %s (at the limit of open files); "
                                "they wait until some are closed", what, e.strerror)
                await trio.sleep(ACCEPT_RETRY)
                continue
            n.start_soon(handler, stream)


def send_nowait(sock: socket.socket, parts: list[Any]) -> list[memoryview]:
    """Send buffers on a non-blocking socket with one gathering ``sendmsg`` (no joining
    copy); returns what did not fit, for the caller to finish asynchronously."""
    try:
        sent = sock.sendmsg(parts)
    except BlockingIOError:
        sent = 0
    rest: list[memoryview] = []
    for part in parts:
        n = len(part)
        if sent >= n:
            sent -= n
            continue
        rest.append(memoryview(part)[sent:])
        sent = 0
    return rest


RECV_SIZE = 1 << 18
"""Bytes asked of the kernel per read ..."""
BIG_RECV = 1 << 20
"""... and while more of a big frame is still to come, up to this."""
LOWAT = 1 << 20
"""While at least this much of a big frame is still to come, a reader asks its socket to
wake it only once this much has arrived (``SO_RCVLOWAT``): a 10 MiB payload then costs
about ten wake-ups and reads, not a hundred of ~100 KiB each (the executor's CPU per
forwarded 10 MiB round trip fell by about a tenth)."""
LOWAT_PATIENCE = 0.5
"""A reader waiting for ``LOWAT`` bytes waits this long at most; for a peer slower than
that, the reader wakes for any arrival again until the frame is complete (its silence
deadline counts from each arrival, as usual)."""


def wake_at(missing: int, slow: bool) -> int:
    """The ``SO_RCVLOWAT`` for a reader with ``missing`` bytes of a big frame still to
    come (``FrameDecoder.missing``); 1 (any byte) unless that is ``LOWAT`` or more and
    the peer has not proved slow."""
    return LOWAT if missing >= LOWAT and not slow else 1


def set_rcvlowat(sock: socket.socket, n: int) -> bool:
    """Set ``SO_RCVLOWAT``; False where the platform refuses it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
    except OSError:
        return False
    return True


def recv_frames(sock: socket.socket, decoder: FrameDecoder,
                size: int = RECV_SIZE) -> tuple[int, list[list[Message]]]:
    """One non-blocking read from ``sock`` into ``decoder``: (bytes read, batches now
    complete); (0, []) when the peer closed. Raises ``BlockingIOError`` when nothing is
    there to read. Reads ``size`` bytes at most, or while the rest of a big frame is
    coming, up to ``BIG_RECV``.

    (Reading a big frame's rest straight into a buffer of the frame's size was tried:
    the buffer, allocated when the prefix arrives, is fresh memory each time, and its
    page faults cost more than the one joining copy saved: 10 MiB round trips 2x slower.)"""
    data = sock.recv(max(size, min(decoder.missing, BIG_RECV)))
    return len(data), decoder.feed(data) if data else []


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the remote end, for logs."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        name = sock.getpeername() if sock is not None else None
    except OSError:
        name = None
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name or "local")
