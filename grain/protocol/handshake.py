"""The handshake that opens every remote connection, before any payload moves.

The listener speaks first::

    listener -> dialer   Hello   {proto, version, role, nonce}
    dialer   -> listener Auth    {version, role, user, nonce, mac, info}
    listener -> dialer   Welcome {user, mac, info}     or   Refuse {reason}, then close

Both MACs are HMAC-SHA256 over both nonces, the role and the user name, keyed by the
dialer's secret (a client's own token, or the workers' secret), so each side proves it
knows the secret without sending it, and the dialer knows it reached a real executor.
Which secrets a role may use is the listener's ``keys`` callback's business (see
``grain.auth``): a client token can never register a worker. Comparisons are
constant-time. Frames are limited to 64 KiB here, and the whole exchange to ``timeout``
seconds. A wrong version, role or secret is refused with a reason on both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Union

import msgspec
import trio
from msgspec import Meta, Struct

from ..config import HANDSHAKE_LIMIT, HANDSHAKE_TIMEOUT
from ..errors import AuthenticationError, ProtocolError
from .frames import DEFAULT_MAX_HEADER, DEFAULT_MAX_PAYLOAD, FrameDecoder, encode
from .messages import PROTOCOL_VERSION

__all__ = ["HANDSHAKE_LIMIT", "HANDSHAKE_TIMEOUT", "Auth", "Hello", "Keys", "Refuse",
           "Welcome", "accept", "dial"]

_Short = Annotated[str, Meta(max_length=256)]
_Nonce = Annotated[bytes, Meta(min_length=16, max_length=64)]
_Mac = Annotated[bytes, Meta(min_length=32, max_length=32)]


class Hello(Struct, tag="HELLO", tag_field="kind"):
    proto: _Short
    version: int
    role: _Short
    nonce: _Nonce


class Auth(Struct, tag="AUTH", tag_field="kind"):
    version: int
    role: _Short
    nonce: _Nonce
    mac: _Mac
    user: _Short | None = None
    info: dict[str, Any] = {}


class Welcome(Struct, tag="WELCOME", tag_field="kind"):
    mac: _Mac
    user: _Short | None = None
    info: dict[str, Any] = {}


class Refuse(Struct, tag="REFUSE", tag_field="kind"):
    reason: Annotated[str, Meta(max_length=4096)]


_Handshake = Union[Hello, Auth, Welcome, Refuse]  # noqa: UP007

Keys = Callable[[str, "str | None"], Sequence[tuple[str, str]]]
"""``keys(role, claimed_user)`` -> the ``(user, secret)`` pairs a dialer of that role may
prove; the first whose MAC matches names the peer."""


def _mac(secret: str, label: bytes, a: bytes, b: bytes, role: str, user: str | None) -> bytes:
    msg = label + a + b"|" + b + b"|" + role.encode() + b"|" + (user or "").encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


async def _read_one(stream: trio.abc.Stream, dec: FrameDecoder) -> Any:
    data: bytes | bytearray = b""
    while True:
        batches = dec.feed(data, max_frames=1)
        if batches:
            if len(batches[0]) != 1:
                raise ProtocolError("unexpected messages during the handshake")
            return batches[0][0][0]
        data = await stream.receive_some(HANDSHAKE_LIMIT)
        if not data:
            raise ProtocolError("connection closed during the handshake")


def _small_decoder() -> FrameDecoder:
    return FrameDecoder(_Handshake, max_header=HANDSHAKE_LIMIT, max_payload=0)


async def accept(stream: trio.abc.Stream, keys: Keys, role: str,
                 accept_roles: tuple[str, ...], info: dict[str, Any] | None = None,
                 timeout: float = HANDSHAKE_TIMEOUT
                 ) -> tuple[str, str, dict[str, Any], FrameDecoder]:
    """Listener side. Returns (peer role, peer user, peer info, decoder holding any early
    bytes). Raises ``AuthenticationError`` (after telling the peer why) or
    ``ProtocolError``."""
    dec = _small_decoder()
    nonce = os.urandom(16)
    with trio.fail_after(timeout):
        await stream.send_all(encode(Hello("grain", PROTOCOL_VERSION, role, nonce)))
        try:
            auth = await _read_one(stream, dec)
        except ProtocolError as e:
            await _refuse(stream, f"malformed handshake: {e}")
            raise
        user: str | None = None
        reason = None
        if not isinstance(auth, Auth):
            reason = f"expected AUTH, got {type(auth).__name__.upper()}"
        elif auth.version != PROTOCOL_VERSION:
            reason = (f"protocol version mismatch: this {role} speaks {PROTOCOL_VERSION}, "
                      f"the peer {auth.version!r}; upgrade the older side")
        elif auth.role not in accept_roles:
            reason = f"a {auth.role!r} cannot connect here (expected {accept_roles})"
        else:
            for name, secret in keys(auth.role, auth.user):
                if hmac.compare_digest(auth.mac, _mac(secret, b"D", nonce, auth.nonce,
                                                      auth.role, auth.user)):
                    user, key = name, secret
                    break
            else:
                reason = f"authentication failed: wrong or missing token for a {auth.role}"
        if reason is not None or user is None:
            await _refuse(stream, reason or "authentication failed")
            raise AuthenticationError(reason)
        await stream.send_all(encode(Welcome(
            _mac(key, b"L", auth.nonce, nonce, role, user), user, info or {})))
    return auth.role, user, auth.info, _open(dec)


async def _refuse(stream: trio.abc.Stream, reason: str) -> None:
    try:
        await stream.send_all(encode(Refuse(reason[:4096])))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def dial(stream: trio.abc.Stream, token: str, role: str,
               info: dict[str, Any] | None = None, expect_role: str | None = None,
               user: str | None = None, timeout: float = HANDSHAKE_TIMEOUT
               ) -> tuple[Welcome, FrameDecoder]:
    """Dialer side. Returns (the listener's Welcome, decoder holding any early bytes)."""
    dec = _small_decoder()
    try:
        with trio.fail_after(timeout):
            return await _dial(stream, dec, token, role, info, expect_role, user)
    except trio.TooSlowError:
        raise ProtocolError(
            f"no complete handshake from the peer within {timeout:g}s: is it a Grain "
            f"{expect_role or 'endpoint'}, and does it require TLS (then connect with "
            f"TLS: tls_ca=... / --tls-ca)?") from None


async def _dial(stream: trio.abc.Stream, dec: FrameDecoder, token: str, role: str,
                info: dict[str, Any] | None, expect_role: str | None, user: str | None
                ) -> tuple[Welcome, FrameDecoder]:
    try:
        hello = await _read_one(stream, dec)
    except ProtocolError:
        raise ProtocolError("the peer is not a Grain endpoint (no HELLO)") from None
    if not isinstance(hello, Hello) or hello.proto != "grain":
        raise ProtocolError("the peer is not a Grain endpoint (no HELLO)")
    if hello.version != PROTOCOL_VERSION:
        raise AuthenticationError(
            f"protocol version mismatch: this {role} speaks {PROTOCOL_VERSION}, the peer "
            f"{hello.version!r}; upgrade the older side")
    if expect_role is not None and hello.role != expect_role:
        raise ProtocolError(f"expected a Grain {expect_role}, reached a {hello.role}")
    nonce = os.urandom(16)
    await stream.send_all(encode(Auth(
        PROTOCOL_VERSION, role, nonce, _mac(token, b"D", hello.nonce, nonce, role, user),
        user, info or {})))
    reply = await _read_one(stream, dec)
    if isinstance(reply, Refuse):
        raise AuthenticationError(f"refused by the {hello.role}: {reply.reason}")
    if not isinstance(reply, Welcome):
        raise ProtocolError(f"expected WELCOME, got {type(reply).__name__.upper()}")
    if not hmac.compare_digest(reply.mac, _mac(token, b"L", nonce, hello.nonce,
                                               hello.role, reply.user)):
        raise AuthenticationError(f"the {hello.role} failed to prove it knows the token")
    return reply, _open(dec)


def _open(dec: FrameDecoder) -> FrameDecoder:
    """After the handshake the connection carries normal, larger frames."""
    dec.max_header, dec.max_payload = DEFAULT_MAX_HEADER, DEFAULT_MAX_PAYLOAD
    return dec


def typed_info(info: dict[str, Any], cls: type[Any]) -> Any:
    """A peer's handshake ``info`` as ``cls``, every field checked; ``ProtocolError``
    naming the bad field otherwise."""
    try:
        return msgspec.convert(info, cls)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"malformed registration: {e}") from None
