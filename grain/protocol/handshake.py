"""The handshake that opens every remote connection, before any payload moves.

The listener speaks first::

    listener -> dialer   HELLO   {proto, version, role, nonce}
    dialer   -> listener AUTH    {version, role, nonce, mac, info}
    listener -> dialer   WELCOME {mac, info}     or   REFUSE {reason}, then close

Both MACs are HMAC-SHA256 over both nonces keyed by the shared token, so each side proves
it knows the token without sending it, and the dialer knows it reached a real executor.
Comparisons are constant-time. Frames are limited to 64 KiB here, and the whole exchange to
``timeout`` seconds. A wrong version, role or token is refused with a reason on both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import trio

from ..errors import AuthenticationError, ProtocolError
from .frames import DEFAULT_MAX_HEADER, DEFAULT_MAX_PAYLOAD, FrameDecoder, encode
from .messages import PROTOCOL_VERSION

HANDSHAKE_LIMIT = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0


def _mac(token: str, label: bytes, a: bytes, b: bytes, role: str) -> bytes:
    return hmac.new(token.encode(), label + a + b"|" + b + b"|" + role.encode(),
                    hashlib.sha256).digest()


async def _read_one(stream: trio.abc.Stream, dec: FrameDecoder) -> list[Any]:
    data = b""
    while True:
        batches = dec.feed(data, max_frames=1)
        if batches:
            header = batches[0][0][0]
            if len(batches[0]) > 1:
                raise ProtocolError("unexpected messages during the handshake")
            if len(header) != 2 or not isinstance(header[1], dict):
                raise ProtocolError("malformed handshake message")
            return header
        data = await stream.receive_some(HANDSHAKE_LIMIT)
        if not data:
            raise ProtocolError("connection closed during the handshake")


def _small_decoder() -> FrameDecoder:
    return FrameDecoder(max_header=HANDSHAKE_LIMIT, max_payload=0)


async def accept(stream: trio.abc.Stream, token: str, role: str,
                 accept_roles: tuple[str, ...], info: dict[str, Any] | None = None,
                 timeout: float = HANDSHAKE_TIMEOUT) -> tuple[str, dict[str, Any], FrameDecoder]:
    """Listener side. Returns (peer role, peer info, decoder holding any early bytes)."""
    dec = _small_decoder()
    nonce = os.urandom(16)
    with trio.fail_after(timeout):
        await stream.send_all(encode(["HELLO", {"proto": "grain", "version": PROTOCOL_VERSION,
                                                "role": role, "nonce": nonce}]))
        kind, body = await _read_one(stream, dec)
        reason = None
        if kind != "AUTH":
            reason = f"expected AUTH, got {str(kind)[:40]!r}"
        elif body.get("version") != PROTOCOL_VERSION:
            reason = (f"protocol version mismatch: this {role} speaks {PROTOCOL_VERSION}, "
                      f"the peer {body.get('version')!r}; upgrade the older side")
        elif body.get("role") not in accept_roles:
            reason = f"a {body.get('role')!r} cannot connect here (expected {accept_roles})"
        else:
            peer_nonce = body.get("nonce")
            mac = body.get("mac")
            if not isinstance(peer_nonce, bytes) or not isinstance(mac, bytes) or \
                    not hmac.compare_digest(mac, _mac(token, b"D", nonce, peer_nonce,
                                                      body["role"])):
                reason = "authentication failed: wrong or missing token"
        if reason is not None:
            try:
                await stream.send_all(encode(["REFUSE", {"reason": reason}]))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            raise AuthenticationError(reason)
        await stream.send_all(encode(["WELCOME", {
            "mac": _mac(token, b"L", peer_nonce, nonce, role), "info": info or {}}]))
    peer_info = body.get("info")
    return body["role"], peer_info if isinstance(peer_info, dict) else {}, _open(dec)


async def dial(stream: trio.abc.Stream, token: str, role: str,
               info: dict[str, Any] | None = None, expect_role: str | None = None,
               timeout: float = HANDSHAKE_TIMEOUT) -> tuple[dict[str, Any], FrameDecoder]:
    """Dialer side. Returns (listener's info, decoder holding any early bytes)."""
    dec = _small_decoder()
    try:
        return await _dial(stream, dec, token, role, info, expect_role, timeout)
    except trio.TooSlowError:
        raise ProtocolError(
            f"no complete handshake from the peer within {timeout:g}s: is it a Grain "
            f"{expect_role or 'endpoint'}, and does it require TLS (then connect with "
            f"TLS: tls_ca=... / --tls-ca)?") from None


async def _dial(stream: trio.abc.Stream, dec: FrameDecoder, token: str, role: str,
                info: dict[str, Any] | None, expect_role: str | None,
                timeout: float) -> tuple[dict[str, Any], FrameDecoder]:
    with trio.fail_after(timeout):
        kind, hello = await _read_one(stream, dec)
        if kind != "HELLO" or hello.get("proto") != "grain":
            raise ProtocolError("the peer is not a Grain endpoint (no HELLO)")
        if hello.get("version") != PROTOCOL_VERSION:
            raise AuthenticationError(
                f"protocol version mismatch: this {role} speaks {PROTOCOL_VERSION}, the peer "
                f"{hello.get('version')!r}; upgrade the older side")
        peer_role = str(hello.get("role"))
        if expect_role is not None and peer_role != expect_role:
            raise ProtocolError(f"expected a Grain {expect_role}, reached a {peer_role}")
        their_nonce = hello.get("nonce")
        if not isinstance(their_nonce, bytes):
            raise ProtocolError("malformed HELLO")
        nonce = os.urandom(16)
        await stream.send_all(encode(["AUTH", {
            "version": PROTOCOL_VERSION, "role": role, "nonce": nonce,
            "mac": _mac(token, b"D", their_nonce, nonce, role), "info": info or {}}]))
        kind, body = await _read_one(stream, dec)
        if kind == "REFUSE":
            raise AuthenticationError(f"refused by the {peer_role}: {body.get('reason')}")
        if kind != "WELCOME":
            raise ProtocolError(f"expected WELCOME, got {str(kind)[:40]!r}")
        mac = body.get("mac")
        if not isinstance(mac, bytes) or not hmac.compare_digest(
                mac, _mac(token, b"L", nonce, their_nonce, peer_role)):
            raise AuthenticationError(f"the {peer_role} failed to prove it knows the token")
    peer_info = body.get("info")
    return peer_info if isinstance(peer_info, dict) else {}, _open(dec)


def _open(dec: FrameDecoder) -> FrameDecoder:
    """After the handshake the connection carries normal, larger frames."""
    dec.max_header, dec.max_payload = DEFAULT_MAX_HEADER, DEFAULT_MAX_PAYLOAD
    return dec
