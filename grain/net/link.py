"""Message links: the one interface every Grain hop speaks.

``send(header, payload)`` never blocks: messages queue in an outbox and go out in batches
(one frame, one syscall for everything that piled up while the previous batch was being
written). ``receive()`` returns the next batch. Two kinds:

- ``memory_link_pair()``: both ends in one trio run (the embedded cluster). No encoding.
- ``StreamLink``: over a trio stream (TCP, TLS, Unix socket), framed by ``protocol.frames``,
  with heartbeats: a PING goes out after ``heartbeat`` seconds of silence (less up to
  ``PING_JITTER``), and a peer silent for ``timeout`` seconds is declared dead
  (half-open connections included); one task per trio run keeps time for all links
  (``timekeeper``). Each end's first message is ``[PING, timeout]``: the peer then pings at
  least every ``timeout / 4`` seconds, so two ends configured differently never time
  each other out merely for being quiet.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..config import HEARTBEAT as DEFAULT_HEARTBEAT
from ..config import MIN_HEARTBEAT
from ..config import PEER_TIMEOUT as DEFAULT_TIMEOUT
from ..errors import ProtocolError
from ..protocol.frames import FrameDecoder, Message, encode_parts
from ..protocol.messages import Ping
from .mailbox import LinkClosed, Mailbox
from .timekeeper import KEEPER_SLACK, timekeeper
from .transport import LOWAT_PATIENCE, RECV_SIZE, recv_frames, send_nowait, set_rcvlowat, wake_at

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_TIMEOUT", "Link", "LinkClosed", "MemoryLink",
           "StreamLink", "handling", "memory_link_pair", "open_stream_link"]


INBOX_HIGH = 4096
"""Received messages a stream link holds for its receiver before it stops reading the
socket (about one 256 KiB read of small messages) ..."""
INBOX_BYTES = 16 * 1024 * 1024
"""... or bytes read for them (big payloads)."""


class Link:
    """A message link: an inbox and an outbox. Subclasses move the outbox's messages."""

    peer: str = "?"
    silent: bool = False
    """True when the link closed because the peer fell silent (a heartbeat timeout: the
    peer may be alive behind a broken network), not because its end closed."""
    _in: Mailbox
    _out: Mailbox

    def send(self, header: Any, payload: bytes = b"") -> None:
        """Queue a message (a ``messages`` struct and its payload); never blocks. Raises
        ``LinkClosed`` once the link is closed."""
        if self._out.closed is not None:
            raise LinkClosed(self._out.closed)
        self._out.put((header, payload))

    def send_later(self, header: Any, payload: bytes = b"") -> None:
        """Queue a message that need not go at once: on a stream it waits for the next
        message to the same peer, or ``LAZY_DELAY`` at most (a job's ``Started``: a short
        job's goes in the same frame as its ``Result``, one write and one wake-up fewer
        on both ends). Order is kept. Elsewhere the same as ``send``."""
        self.send(header, payload)

    async def receive(self) -> list[Message]:
        """The next batch of messages. Raises ``LinkClosed`` (with why) at the end."""
        return await self._in.take()

    def close(self, reason: str = "closed") -> None:
        self._in.close(reason)
        self._out.close(reason)

    @property
    def closed(self) -> str | None:
        """Why the link closed, or ``None`` while it is open."""
        return self._in.closed


class MemoryLink(Link):
    """One end of an in-process link."""

    def __init__(self, inbox: Mailbox, outbox: Mailbox, peer: str) -> None:
        self._in, self._out, self.peer = inbox, outbox, peer


def memory_link_pair(name_a: str = "a", name_b: str = "b") -> tuple[MemoryLink, MemoryLink]:
    """Two connected ends; ``a.send`` arrives at ``b.receive`` and back."""
    x, y = Mailbox(), Mailbox()
    return MemoryLink(x, y, name_b), MemoryLink(y, x, name_a)


class _Steps(threading.local):
    """Per thread (one trio run each): whether a handling step is open, the links it
    made dirty, and a counter of steps (see ``handling``)."""

    depth = 0
    epoch = 0

    def __init__(self) -> None:
        self.dirty: list[StreamLink] = []


_steps = _Steps()


class handling:  # noqa: N801 - used as ``with handling():``, like a function
    """A handling step: what the messages handled in it send is written when it ends,
    one frame per link, straight from the handling task.

    ``with handling(): ...`` around code that reacts to received messages (it must not
    await): every ``StreamLink.send`` inside only queues, and at the end each link that
    got messages writes them as one frame with a non-blocking ``sendmsg`` of its own,
    no writer task woken (only what the socket did not take is left to the writer).
    Steps nest; the outermost one writes. Sends outside any step are written at once
    when the link's writer is idle (the first of a burst) or by the writer task."""

    __slots__ = ()

    def __enter__(self) -> None:
        _steps.depth += 1

    def __exit__(self, *exc: object) -> None:
        st = _steps
        st.depth -= 1
        if not st.depth:
            st.epoch += 1
            if st.dirty:
                dirty, st.dirty = st.dirty, []
                for link in dirty:
                    link._flush()


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain trio ``SocketStream`` (not TLS), for writes and
    reads without a trip through the scheduler; None when there is none."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


def _socket_under(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a ``SocketStream``, or under the TLS stream over one."""
    stream = getattr(stream, "transport_stream", stream)
    raw = getattr(getattr(stream, "socket", None), "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


def _bytes_waiting(sock: socket.socket | None) -> bool:
    """Whether the kernel holds something from the peer that our reader has not read
    yet: bytes, the end of the stream, or an error (all of them news from the peer)."""
    if sock is None:
        return False
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return True


BURST = 1024
"""Messages queued outside a handling step that are written at once, without waiting for
the sending task to yield."""
LAZY_DELAY = 0.02
"""How long a message sent with ``send_later`` may wait for company."""
PING_JITTER = 0.25
"""A link pings after ``heartbeat`` seconds of its own silence less up to this fraction,
drawn anew after each ping: peers that started together (a node pool, a burst of jobs to
every worker) would otherwise ping in step for ever."""
IOV_MAX = 512
"""Buffers per ``sendmsg`` call (the kernel's limit is 1024)."""
SMALL = 64 * 1024
"""Payloads smaller than this are joined into the frame's other bytes before sending;
bigger ones are sent as they are (no copy)."""


def _coalesce(parts: list[Any]) -> list[Any]:
    """A frame's buffers with runs of small ones joined: few buffers per ``sendmsg``,
    and a big payload never copied."""
    if len(parts) <= 2:
        return parts
    out: list[Any] = []
    small: list[Any] = []
    for p in parts:
        if len(p) >= SMALL:
            if small:
                out.append(small[0] if len(small) == 1 else b"".join(small))
                small = []
            out.append(p)
        else:
            small.append(p)
    if small:
        out.append(small[0] if len(small) == 1 else b"".join(small))
    return out


class StreamLink(Link):
    """A link over a byte stream. Call ``start(nursery)`` once, before use.

    Writing costs no task switch when it can be helped: messages sent while handling a
    batch (``handling``) go out as one frame per link at the end of the step, straight
    from the handling task; a lone message sent outside a step goes out at once when the
    writer is idle. Only what the socket does not take (a full buffer, a big payload),
    heartbeats, and bursts sent outside a step wake the writer task. Frames are written
    as a list of buffers (``sendmsg``): a big payload is never joined into a copy."""

    def __init__(self, stream: trio.abc.Stream, peer: str, schema: Any, *,
                 heartbeat: float = DEFAULT_HEARTBEAT, timeout: float = DEFAULT_TIMEOUT,
                 decoder: FrameDecoder | None = None) -> None:
        self.stream = stream
        self.peer = peer
        self.heartbeat = heartbeat
        self.timeout = timeout
        self._decoder = decoder or FrameDecoder()
        self._decoder.set_schema(schema)   # what this hop may carry; anything else: dropped
        self._in = Mailbox()
        self._out = Mailbox()
        self._scope = trio.CancelScope()
        self._last_send = 0.0
        self._ping_gap = heartbeat     # quiet this long, the timekeeper sends a ping
        self._quiet_since = math.inf   # since when the reader waits for the peer
        self._reason: str | None = None   # why the link closed, set by who saw it first
        self.check_at = math.nan     # when the timekeeper looks at this link next
        self._raw = _raw_socket(stream)
        self._peek = _socket_under(stream)   # to tell silence from a reader not yet run
        self._pending: list[Any] = []      # buffers written in part: the writer finishes
        # our timeout goes first, queued: a loop of submissions may run before the writer
        self._out.items.append((Ping(timeout), b""))   # does, and must be written (``send``)
        self._queued = True      # the outbox waits for a step's end or for the writer
        self._lazy_since: float | None = None  # when the oldest ``send_later`` was queued
        self._writer_idle = True           # True while nobody writes (the writer waits)
        self._midframe = False             # the writer waits to write the rest of a frame
        self._direct_epoch = -1  # the step after which this link last wrote at once
        self.bytes_in = 0
        self.bytes_out = 0

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run)

    def send(self, header: Any, payload: bytes = b"") -> None:
        out = self._out
        if out.closed is not None:
            raise LinkClosed(out.closed)
        out.items.append((header, payload))
        if self._queued:
            if len(out.items) % BURST == 0 and not _steps.depth and not self._midframe:
                # A long burst from code that does not yield (a loop submitting jobs): write
                # it now (after what a full socket left of the last write), or the peer hears
                # nothing for as long as the loop runs and may take this end for dead. The
                # writer may be runnable meanwhile, but it is not in the middle of a frame.
                if self._pending and self._raw is not None:
                    with contextlib.suppress(OSError):   # the writer meets it, and closes
                        self._pending = send_nowait(self._raw, self._pending)
                if not self._pending:
                    self._flush(burst=True)
            return               # written with the others, at the step's end or by the writer
        st = _steps
        self._queued = True
        if st.depth:
            st.dirty.append(self)
        elif self._writer_idle and self._direct_epoch != st.epoch:
            # A lone message (the first of a burst, if one follows): write it now. The
            # rest of a burst goes to the writer, as one frame.
            self._direct_epoch = st.epoch
            self._flush()
        else:
            out.event.set()

    def send_later(self, header: Any, payload: bytes = b"") -> None:
        out = self._out
        if out.closed is not None:
            raise LinkClosed(out.closed)
        out.items.append((header, payload))
        if self._queued or self._lazy_since is not None:
            return               # goes with what is queued already, or by its own deadline
        self._lazy_since = trio.current_time()
        if self._writer_idle:        # it sets itself a deadline for these
            out.event.set()

    def _flush(self, burst: bool = False) -> None:
        """Write the outbox now from the calling task if the writer is idle (``burst``:
        not in the middle of a frame) and the socket takes it; else leave it (or its
        rest) to the writer."""
        self._queued = False
        out = self._out
        if not out.items:
            return
        raw = self._raw
        if raw is None or not (self._writer_idle or burst) or self._pending \
                or out.closed is not None:
            self._queued = True
            out.event.set()
            return
        self._lazy_since = None
        items, out.items = out.items, []
        try:
            parts = _coalesce(encode_parts(items))
            size = sum(map(len, parts))
            rest = send_nowait(raw, parts) if len(parts) <= IOV_MAX else parts
        except OSError:
            rest = parts           # the writer meets the error and closes the link
            size = 0
        except Exception as e:  # noqa: BLE001 - a message that cannot be encoded
            log.error("link to %s: cannot encode a message: %r", self.peer, e)
            self.close(f"cannot encode a message: {e!r}")
            return
        self.bytes_out += size
        self._last_send = trio.current_time()
        if rest:
            self._pending = rest
            out.event.set()

    def close(self, reason: str = "closed") -> None:
        super().close(reason)
        self._scope.cancel()

    def keep_time(self, now: float) -> float | None:
        """The timekeeper's look at this link: close it if the peer has been silent for
        ``timeout`` while the reader waited for it; ping if we have been quiet for our
        heartbeat (less a random part, ``PING_JITTER``). Returns when to look again
        (None: the link is closed)."""
        if self._out.closed is not None:
            return None
        due = now + KEEPER_SLACK     # what falls due this soon is done now: the next
        quiet = self._quiet_since    # look is then always later than that
        if due - quiet >= self.timeout and _bytes_waiting(self._peek):
            # The peer did speak; our reader has not run since. The event loop was
            # stopped (a long step, a starved process) and the same wake-up handed this
            # look and the reader their turns in either order: a per-wait deadline
            # lost that race by design (trio hands out I/O before deadlines), and so
            # must we: the reader is about to note the arrival.
            quiet = now
        if due - quiet >= self.timeout:
            if self._reason is None:
                self._reason = (f"peer {self.peer} silent for {self.timeout:g}s "
                                "(heartbeat timeout)")
            self.silent = True
            self._scope.cancel()
            return None
        ping_at = self._last_send + self._ping_gap
        if due >= ping_at:
            self._ping_gap = self.heartbeat * (1.0 - PING_JITTER * random.random())
            ping_at = now + self._ping_gap
            if self._writer_idle and not (self._queued or self._pending):
                self._out.items.append((_PING, b""))
                self._flush()
            # else: the writer is writing, which is as good as a ping
        # the reader may start waiting for the peer at any moment: look again within a
        # quarter of the timeout, so that silence is noticed at most that late
        return min(ping_at, quiet + self.timeout, now + self.timeout / 4)

    async def _run(self) -> None:
        self._quiet_since = now = trio.current_time()
        timekeeper().schedule(self, now + min(self.heartbeat, self.timeout / 4))
        try:
            with self._scope:
                async with trio.open_nursery() as n:
                    n.start_soon(self._guard, self._writer, n)
                    await self._guard(self._reader, n)
        finally:
            self.check_at = math.nan     # the timekeeper forgets it
        reason = self._reason or self._in.closed or "connection closed"
        self._in.close(reason)
        self._out.close(reason)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _guard(self, part: Any, n: trio.Nursery) -> None:
        """Run the reader or writer; whichever stops first records why and stops both."""
        reason: str | None = None
        try:
            reason = await part()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            reason = f"connection lost: {e or type(e).__name__}"
        except ProtocolError as e:
            reason = f"protocol error from {self.peer}: {e}"
            log.warning("dropping %s: %s", self.peer, e)
        if self._reason is None:
            self._reason = reason
        n.cancel_scope.cancel()

    async def _reader(self) -> str:
        """Read and deliver frames until the peer closes.

        Silence is the timekeeper's to judge (``keep_time``): the reader notes when it
        starts to wait for the peer (``_quiet_since``), only when nothing is there to
        read, and clears it while it waits for our own receiver (back-pressure is not the
        peer's silence) or for the rest of a big frame that keeps coming."""
        self._deliver(self._decoder.feed(b""))  # frames that arrived with the handshake
        return await self._read()

    async def _read(self) -> str:
        raw = self._raw
        waiting = 0     # bytes read since the receiver last took its messages
        lowat, slow = 1, False   # the socket's SO_RCVLOWAT; the peer sends big frames slowly
        while True:
            inbox = self._in.items
            if inbox and (len(inbox) >= INBOX_HIGH or waiting >= INBOX_BYTES):
                # Back-pressure: read on only once the receiver has taken what it was
                # given. A peer sending faster than it is served waits in TCP (its
                # kernel's buffers), not in this process's memory as decoded messages.
                self._quiet_since = math.inf
                await self._in.wait_taken()
            if not self._in.items:
                waiting = 0
            if raw is None:
                self._quiet_since = trio.current_time()
                data = await self.stream.receive_some(RECV_SIZE)
                n, batches = len(data), self._decoder.feed(data)
            else:
                # Read at once what is there; wait, and note since when, only
                # when nothing is (no scheduler trip per read).
                try:
                    n, batches = recv_frames(raw, self._decoder)
                except BlockingIOError:
                    n = -1      # wait below, not here: the exception would live as long
                if n < 0:
                    # the rest of a big frame: wake once a good part of it is there
                    # (fewer, bigger reads), unless the peer proved slower than that
                    want = wake_at(self._decoder.missing, slow)
                    if want != lowat:
                        lowat = want if set_rcvlowat(raw, want) else 1
                    if lowat > 1:
                        self._quiet_since = math.inf
                        with trio.move_on_after(LOWAT_PATIENCE):
                            await trio.lowlevel.wait_readable(raw)
                            continue
                        slow = True   # so silence below counts, from each arrival
                        continue
                    self._quiet_since = trio.current_time()
                    await trio.lowlevel.wait_readable(raw)
                    continue
                if slow and not self._decoder.missing:
                    slow = False     # that frame is complete
            if not n:
                return "connection closed by peer"
            self.bytes_in += n
            waiting += n
            self._deliver(batches)

    def _deliver(self, batches: list[list[Message]]) -> None:
        for batch in batches:
            msgs = [m for m in batch if type(m[0]) is not Ping]
            if len(msgs) != len(batch):
                for m in batch:
                    if type(m[0]) is Ping and m[0].timeout:
                        self._peer_timeout(m[0].timeout)
            self._in.put_many(msgs)

    def _peer_timeout(self, value: float) -> None:
        """The peer declares it after ``value`` seconds of silence: ping well before."""
        hb = max(MIN_HEARTBEAT, min(self.heartbeat, value / 4))
        if hb < self.heartbeat:
            log.debug("link to %s: pinging every %gs (the peer's timeout is %gs)",
                      self.peer, hb, value)
            self.heartbeat = self._ping_gap = hb
            when = self._last_send + hb
            if when < self.check_at:
                timekeeper().schedule(self, when)

    async def _writer(self) -> str | None:
        """Write what the outbox holds when a step did not; idle, wait for it without a
        deadline (pings are the timekeeper's), unless messages sent later wait for
        company: then until their time (``LAZY_DELAY``)."""
        out = self._out
        self._writer_idle = False
        while True:
            if self._pending:
                parts, self._pending = self._pending, []
                await self._write(parts)
                continue
            if not (self._queued and out.items):
                self._writer_idle = True
                try:
                    while not ((self._queued and out.items) or self._pending):
                        if out.closed is not None:
                            return out.closed
                        if self._lazy_since is None:
                            await out.event.wait()
                            out.event = trio.Event()
                            continue
                        with trio.move_on_at(self._lazy_since + LAZY_DELAY):
                            await out.event.wait()
                            out.event = trio.Event()
                            continue
                        break             # messages sent later: their time has come
                finally:
                    self._writer_idle = False
                if self._pending:
                    continue
                if not (self._queued and out.items):
                    if out.closed is not None:
                        return out.closed
                    if not out.items:
                        continue
            items, out.items = out.items, []
            self._queued = False
            self._lazy_since = None
            await self._write(encode_parts(items))

    async def _write(self, parts: list[Any]) -> None:
        """Write a frame's buffers: gathered on a plain socket (no joining copy), joined
        for other streams (TLS)."""
        raw = self._raw
        if raw is None:
            data = b"".join(parts)
            self.bytes_out += len(data)
            await self.stream.send_all(data)
        else:
            parts = _coalesce(parts)
            self.bytes_out += sum(map(len, parts))
            while parts:
                head, tail = parts[:IOV_MAX], parts[IOV_MAX:]
                rest = send_nowait(raw, head)
                while rest:
                    self._midframe = True
                    await trio.lowlevel.wait_writable(raw)
                    rest = send_nowait(raw, rest)
                parts = tail
            self._midframe = False
            await trio.lowlevel.checkpoint()
        self._last_send = trio.current_time()


_PING = Ping()


@asynccontextmanager
async def open_stream_link(stream: trio.abc.Stream, peer: str, schema: Any, *,
                           heartbeat: float = DEFAULT_HEARTBEAT,
                           timeout: float = DEFAULT_TIMEOUT,
                           decoder: FrameDecoder | None = None) -> AsyncIterator[StreamLink]:
    """A running ``StreamLink`` for the duration of the block; closed on exit."""
    link = StreamLink(stream, peer, schema, heartbeat=heartbeat, timeout=timeout,
                      decoder=decoder)
    async with trio.open_nursery() as n:
        link.start(n)
        try:
            yield link
        finally:
            link.close("done")
