"""Fuzzing the wire: ``FrameDecoder`` and the handshake against generated input.

Over 100,000 generated inputs in all (each hypothesis example carries several; the last
test checks the count), bounded in time. What must hold: the decoder raises nothing but
``ProtocolError``, refuses an oversized frame from its 8-byte prefix alone, and decodes
every valid stream whatever its chunking; the handshake, on either side, ends in
``ProtocolError`` (``AuthenticationError`` included) on anything that is not a correct
exchange, and never authenticates a peer that lacks the token.
"""

from __future__ import annotations

import msgpack
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grain.errors import ProtocolError
from grain.protocol import handshake
from grain.protocol.frames import PREFIX, FrameDecoder, encode, encode_batch
from grain.protocol.messages import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)

EXAMPLES = {
    "random_bytes": 2_500,
    "prefix": 1_500,
    "roundtrip": 600,
    "mutated": 1_200,
    "structured": 1_000,
    "accept": 400,
    "dial": 300,
}
INPUTS: dict[str, int] = {}
"""Inputs fed per test (an example carries several): at least 100,000 in all."""


def fuzz(name: str):  # type: ignore[no-untyped-def]
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _count(name: str, n: int = 1) -> None:
    INPUTS[name] = INPUTS.get(name, 0) + n


def _check_output(batches: list) -> None:
    for batch in batches:
        assert isinstance(batch, list)
        for header, payload in batch:
            assert (isinstance(header, list | dict) and header) or \
                isinstance(header, msgspec.Struct)
            assert isinstance(payload, bytes)


def _feed_all(dec: FrameDecoder, chunks: list[bytes]) -> list:
    out: list = []
    try:
        for c in chunks:
            got = dec.feed(c)
            _check_output(got)
            out += got
    except ProtocolError:
        return out
    return out


@fuzz("random_bytes")
@given(st.lists(st.binary(min_size=1, max_size=48), min_size=24, max_size=40),
       st.sampled_from([(64, 64), (65536, 0), (1 << 24, 1 << 30)]))
def test_decoder_on_random_bytes(inputs: list[bytes], limits: tuple[int, int]) -> None:
    for data in inputs:  # each on its own decoder ...
        _feed_all(FrameDecoder(None, *limits), [data])
    _feed_all(FrameDecoder(None, *limits), inputs)  # ... and all as one stream
    _count("random_bytes", len(inputs) + 1)


flat = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1)
        | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12))
simple = flat | st.lists(flat, max_size=4) | st.dictionaries(st.text(max_size=6), flat,
                                                             max_size=3)
message = st.tuples(st.lists(simple, min_size=1, max_size=4), st.binary(max_size=200))


@fuzz("roundtrip")
@given(st.lists(st.lists(message, min_size=1, max_size=4), min_size=1, max_size=4),
       st.lists(st.lists(st.integers(0, 3000), max_size=8), min_size=3, max_size=3))
def test_decoder_roundtrip_under_any_chunking(batches: list, chunkings: list) -> None:
    stream = b"".join(encode_batch(b) for b in batches)
    want = [[(list(h), p) for h, p in b] for b in batches]
    chunkings = [*chunkings, list(range(len(stream)))]  # and one byte at a time
    for cuts in chunkings:
        points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        dec = FrameDecoder()
        got: list = []
        for a, b in zip(points, points[1:], strict=False):
            got += dec.feed(stream[a:b])
        assert got == want
        assert dec.buffered == 0
    _count("roundtrip", len(chunkings))


@fuzz("prefix")
@given(st.lists(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1)),
                min_size=16, max_size=24),
       st.integers(1, 1 << 20), st.integers(0, 1 << 20))
def test_oversized_frames_are_refused_from_the_prefix(prefixes: list, max_header: int,
                                                      max_payload: int) -> None:
    for hlen, plen in prefixes:
        dec = FrameDecoder(None, max_header, max_payload)
        too_big = hlen == 0 or hlen > max_header or plen > max_payload
        try:
            out = dec.feed(PREFIX.pack(hlen, plen))
        except ProtocolError:
            assert too_big
        else:
            assert not too_big and out == [] and dec.buffered == 0  # waiting for the body
    _count("prefix", len(prefixes))


@fuzz("mutated")
@given(st.lists(message, min_size=1, max_size=3),
       st.lists(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                         max_size=4), min_size=6, max_size=10),
       st.integers(0, 64))
def test_decoder_on_mutated_frames(batch: list, mutations: list, cut: int) -> None:
    frame = encode_batch(batch) * 2
    for flips in mutations:
        data = bytearray(frame)
        for pos, val in flips:
            data[pos % len(data)] = val
        _feed_all(FrameDecoder(), [bytes(data[:cut]), bytes(data[cut:])])
    _count("mutated", len(mutations))


@fuzz("structured")
@given(st.lists(st.tuples(simple, st.binary(max_size=40)), min_size=4, max_size=8))
def test_decoder_on_well_framed_garbage_headers(items: list) -> None:
    for obj, payload in items:
        header = msgpack.packb(obj, use_bin_type=True)
        frame = PREFIX.pack(len(header), len(payload)) + header + payload
        _feed_all(FrameDecoder(), [frame])
    _count("structured", len(items))


# -- the handshake ------------------------------------------------------------------------
# Each example runs a real handshake over an in-memory stream pair inside one trio run
# shared by all examples (a trio run per example would cost more than the test itself).

TOKEN = "fuzz-token"
handshake_values = simple | st.just(PROTOCOL_VERSION) | st.sampled_from(
    ["client", "worker", "executor", "observer", "grain"]) | st.binary(min_size=16, max_size=32)
auth_bodies = st.dictionaries(
    st.sampled_from(["version", "role", "nonce", "mac", "info", "proto", "reason"])
    | st.text(max_size=5), handshake_values, max_size=6)
first_messages = st.one_of(
    st.tuples(st.sampled_from(["AUTH", "HELLO", "WELCOME", "REFUSE", 2, None]), auth_bodies
              ).map(lambda t: encode({**t[1], "kind": t[0]})),
    st.tuples(st.sampled_from(["AUTH", "HELLO", "WELCOME", "REFUSE", 2, None]), auth_bodies
              ).map(lambda t: encode([t[0], t[1]])),
    st.binary(max_size=80),
    st.lists(simple, max_size=3).map(lambda h: encode(h or [0])))
handshake_inputs = st.lists(st.tuples(first_messages, st.binary(max_size=24)).map(
    lambda t: t[0] + t[1]), min_size=4, max_size=8)


class _Driver:
    """Runs handshakes inside one trio run, fed from hypothesis in a worker thread."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token

    def accept(self, inputs: list[bytes]) -> list[BaseException | None]:
        return trio.from_thread.run(self._many, self._accept, inputs, trio_token=self.token)

    def dial(self, inputs: list[bytes]) -> list[BaseException | None]:
        return trio.from_thread.run(self._many, self._dial, inputs, trio_token=self.token)

    @staticmethod
    async def _many(fn, inputs: list[bytes]) -> list[BaseException | None]:  # type: ignore[no-untyped-def]
        return [await fn(data) for data in inputs]

    @staticmethod
    async def _accept(data: bytes) -> BaseException | None:
        listener_end, peer = trio.testing.memory_stream_pair()
        await peer.send_all(data)
        await peer.send_eof()
        try:
            await handshake.accept(listener_end, lambda role, user: [("u", TOKEN)],
                                   "executor", ("client", "worker"), timeout=5)
        except ProtocolError as e:
            return e
        return None

    @staticmethod
    async def _dial(data: bytes) -> BaseException | None:
        dialer_end, peer = trio.testing.memory_stream_pair()
        await peer.send_all(data)
        await peer.send_eof()
        try:
            await handshake.dial(dialer_end, TOKEN, "client", expect_role="executor",
                                 timeout=5)
        except ProtocolError as e:
            return e
        return None


def _run_with_driver(body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        driver = _Driver(trio.lowlevel.current_trio_token())
        await trio.to_thread.run_sync(body, driver)
    trio.run(main)


def test_fuzz_handshake_accept() -> None:
    """Whatever a dialer sends after our HELLO, the listener refuses it with a
    ProtocolError (no other exception, no hang, never a success without the token)."""
    def body(driver: _Driver) -> None:
        @fuzz("accept")
        @given(handshake_inputs)
        def check(inputs: list[bytes]) -> None:
            for err in driver.accept(inputs):
                assert err is not None, "authenticated a peer that does not know the token"
            _count("accept", len(inputs))

        check()

    _run_with_driver(body)


def test_fuzz_handshake_dial() -> None:
    """Whatever a listener sends, the dialer ends with a ProtocolError; a HELLO with the
    wrong version is an AuthenticationError."""
    def body(driver: _Driver) -> None:
        @fuzz("dial")
        @given(handshake_inputs)
        def check(inputs: list[bytes]) -> None:
            for err in driver.dial(inputs):
                assert err is not None
            _count("dial", len(inputs))

        check()

    _run_with_driver(body)


def test_fuzz_fed_at_least_100k_inputs() -> None:
    """Runs last in this module: the tests above fed over 100,000 generated inputs."""
    if set(INPUTS) != set(EXAMPLES):
        pytest.skip(f"only part of the fuzzing ran ({sorted(INPUTS)})")
    assert sum(INPUTS.values()) >= 100_000, INPUTS
    print("fuzz inputs:", INPUTS, sum(INPUTS.values()))
