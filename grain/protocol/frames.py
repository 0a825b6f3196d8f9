"""Length-prefixed frames: the unit on every Grain connection.

A frame is ``u32 header_len | u32 payload_len | header | payload`` (big-endian). The header
is msgpack: ``[messages, payload_lengths]``, a *batch* of messages (typed structs from
``messages``, each an array ``[TAG, fields...]``); the payload is the messages' opaque byte
payloads concatenated, split by ``payload_lengths``. Both lengths are checked against
limits before anything past the prefix is read, so an oversized or hostile frame costs
nothing; the header is decoded and type-checked against the hop's message union in one
step (msgspec), so no handler ever sees a malformed message.

``FrameDecoder`` is pure (bytes in, batches out): the socket shells feed it and the fuzz
tests hammer it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgspec

from ..config import MAX_FRAME_HEADER, MAX_FRAME_PAYLOAD
from ..errors import ProtocolError

PREFIX = struct.Struct(">II")
DEFAULT_MAX_HEADER = MAX_FRAME_HEADER
DEFAULT_MAX_PAYLOAD = MAX_FRAME_PAYLOAD
BIG_FRAME = 1024 * 1024   # frames this big are gathered in pieces, joined once
COPY_BELOW = 64 * 1024
"""Payloads smaller than this are copied out of a big frame's buffer (see ``_split``)."""

Message = tuple[Any, bytes]
"""One message: (header, payload bytes). The header is a ``messages.Message`` struct (or,
for raw decoders and hostile tests, any msgpack value)."""

_encode = msgspec.msgpack.Encoder().encode


def wire_key(value: Any) -> bytes:
    """A plain value (a resource's wire form) as a dictionary key: its msgpack bytes,
    ~10x quicker to make than its ``repr``. What msgpack cannot encode (a custom kind's
    odd state, in the embedded cluster where nothing is encoded) is keyed by its
    ``repr`` after 0xc1, a byte that starts no msgpack value: the two never collide."""
    try:
        return _encode(value)
    except (TypeError, ValueError, OverflowError):
        return b"\xc1" + repr(value).encode()


FRAME_MESSAGES = 4096
"""Messages per frame at most: a burst of a million submissions goes out as frames a
receiver accepts (headers far below ``MAX_FRAME_HEADER``) and handles in steps."""
FRAME_PAYLOAD = 64 * 1024 * 1024
"""A frame's payloads add up to at most this, unless one message's payload alone is
bigger (two 600 MiB arguments must not make a 1.2 GiB frame, over the receiver's limit)."""


def encode_parts(messages: Sequence[Message]) -> list[Any]:
    """Frames carrying every message, in order, as buffers to send in order (prefix and
    header first, then the payloads as they are: no copy of a big payload). One frame,
    unless there are more than ``FRAME_MESSAGES`` or their payloads pass
    ``FRAME_PAYLOAD``: then consecutive frames, each within the receiver's limits."""
    if len(messages) == 1:   # the hot path: one message
        h, p = messages[0]
        header = _encode(([h], [len(p)]))
        return [PREFIX.pack(len(header), len(p)) + header, p] if p else \
            [PREFIX.pack(len(header), 0) + header]
    payloads = [m[1] for m in messages]
    total = sum(map(len, payloads))
    if len(messages) <= FRAME_MESSAGES and total <= FRAME_PAYLOAD:
        header = _encode(([m[0] for m in messages], [len(p) for p in payloads]))
        return [PREFIX.pack(len(header), total) + header, *(p for p in payloads if len(p))]
    out: list[Any] = []
    start, size = 0, 0
    for i, p in enumerate(payloads):
        if i > start and (i - start >= FRAME_MESSAGES or size + len(p) > FRAME_PAYLOAD):
            out += encode_parts(messages[start:i])
            start, size = i, 0
        size += len(p)
    return out + encode_parts(messages[start:])


def encode_batch(messages: Sequence[Message]) -> bytes:
    """One frame carrying every message of ``messages``, as one bytes object."""
    return b"".join(encode_parts(messages))


def encode(header: Any, payload: bytes = b"") -> bytes:
    """One frame carrying one message."""
    return encode_batch(((header, payload),))


class FrameDecoder:
    """Incremental frame parser: ``feed(data)`` returns the batches completed so far.

    ``schema`` is the union of message types this hop carries (``messages.CLIENT_TO_...``);
    a frame holding anything else is a ``ProtocolError``. Without a schema headers are
    returned as plain msgpack values (for tests and tools). Raises ``ProtocolError`` on a
    frame over the limits or a malformed header; after that the connection must be
    dropped (the decoder's state is undefined).
    """

    def __init__(self, schema: Any = None, max_header: int = DEFAULT_MAX_HEADER,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, big: int = BIG_FRAME) -> None:
        self.max_header = max_header
        self.max_payload = max_payload
        self.big = big
        self.set_schema(schema)
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None
        self._chunks: list[bytes | bytearray] | None = None   # the pieces of a big frame
        self._chunked = 0

    def set_schema(self, schema: Any) -> None:
        """Decode later frames as ``schema`` (after the handshake, the hop's union)."""
        self._decode = (msgspec.msgpack.Decoder(tuple[list[schema], list[int]]).decode
                        if schema is not None else msgspec.msgpack.Decoder().decode)
        self._typed = schema is not None

    @property
    def missing(self) -> int:
        """Bytes still to come of a big frame being gathered (0: none is)."""
        if self._chunks is None or self._need is None:
            return 0
        return sum(self._need) - self._chunked

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) + self._chunked

    def feed(self, data: bytes | bytearray,
             max_frames: int | None = None) -> list[list[Message]]:
        """Add ``data``; return the complete batches (at most ``max_frames`` of them)."""
        if self._chunks is not None:
            return self._feed_big(data, max_frames)
        self._buf += data
        out: list[list[Message]] = []
        buf = self._buf
        pos = 0
        while max_frames is None or len(out) < max_frames:
            if self._need is None:
                if len(buf) - pos < PREFIX.size:
                    break
                hlen, plen = PREFIX.unpack_from(buf, pos)
                if hlen > self.max_header or hlen == 0:
                    raise ProtocolError(f"frame header of {hlen} bytes refused "
                                        f"(limit {self.max_header})")
                if plen > self.max_payload:
                    raise ProtocolError(f"frame payload of {plen} bytes refused "
                                        f"(limit {self.max_payload})")
                self._need = (hlen, plen)
                pos += PREFIX.size
            hlen, plen = self._need
            if len(buf) - pos < hlen + plen:
                if hlen + plen >= self.big:
                    # A big frame: keep its pieces and join them once, rather than grow
                    # a buffer and copy the payload out of it.
                    self._chunks = [bytes(buf[pos:])]
                    self._chunked = len(buf) - pos
                    pos = len(buf)
                break
            header = bytes(buf[pos:pos + hlen])
            payload = memoryview(buf)[pos + hlen:pos + hlen + plen].tobytes() if plen else b""
            pos += hlen + plen
            self._need = None
            out.append(self._split(header, payload))
        if pos:
            del buf[:pos]
        return out

    def _feed_big(self, data: bytes | bytearray,
                  max_frames: int | None) -> list[list[Message]]:
        assert self._chunks is not None and self._need is not None
        self._chunks.append(data)
        self._chunked += len(data)
        hlen, plen = self._need
        need = hlen + plen
        if self._chunked < need or max_frames == 0:
            return []
        blob = b"".join(self._chunks)   # the one copy of a big frame
        self._chunks, self._chunked, self._need = None, 0, None
        view = memoryview(blob)
        out = [self._split(bytes(view[:hlen]), view[hlen:need])]
        rest = blob[need:]
        if rest:
            out += self.feed(rest, None if max_frames is None else max_frames - 1)
        return out

    def _split(self, header: bytes, payload: Any) -> list[Message]:
        try:
            decoded = self._decode(header)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ProtocolError(f"malformed frame header: {e}") from None
        if not self._typed:
            if (not isinstance(decoded, list) or len(decoded) != 2
                    or not isinstance(decoded[0], list) or not isinstance(decoded[1], list)
                    or not all(isinstance(h, list | dict) and h for h in decoded[0])):
                raise ProtocolError("malformed frame header: expected [messages, lengths]")
        headers, lengths = decoded
        if len(headers) != len(lengths):
            raise ProtocolError("malformed frame header: messages and lengths differ")
        if len(headers) == 1:  # the common case: one message, the whole payload
            if lengths[0] != len(payload):
                raise ProtocolError("frame payload lengths do not add up")
            return [(headers[0], payload)]
        msgs: list[Message] = []
        off = 0
        # A big frame's payload is a view of one buffer: a small payload is copied out of
        # it (a view costs ~180 bytes and keeps the whole frame alive for as long as the
        # message lives, e.g. a job queued for hours); a big one stays a view (no copy).
        view = type(payload) is memoryview
        for h, n in zip(headers, lengths, strict=True):
            if not isinstance(n, int) or n < 0:
                raise ProtocolError("malformed message in frame")
            part = payload[off:off + n]
            msgs.append((h, part.tobytes() if view and n < COPY_BELOW else part))
            off += n
        if off != len(payload):
            raise ProtocolError("frame payload lengths do not add up")
        return msgs
