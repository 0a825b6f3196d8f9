"""Frames: round trips, batching, limits checked before payload is read, malformed input."""

import pytest

from grain.errors import ProtocolError
from grain.protocol.frames import PREFIX, FrameDecoder, encode, encode_batch


def test_roundtrip_byte_by_byte():
    frame = encode([2, 7, [["Cores", {"c": [0], "N": 1}]], 3, None], b"payload")
    dec = FrameDecoder()
    out = []
    for i in range(len(frame)):
        out += dec.feed(frame[i:i + 1])
    assert out == [[([2, 7, [["Cores", {"c": [0], "N": 1}]], 3, None], b"payload")]]
    assert dec.buffered == 0


def test_batch_splits_payloads():
    msgs = [([1, i], bytes([i]) * i) for i in range(5)]
    [batch] = FrameDecoder().feed(encode_batch(msgs))
    assert [(list(h), p) for h, p in batch] == [([1, i], bytes([i]) * i) for i in range(5)]


def test_several_frames_in_one_read():
    data = encode([10]) + encode([11], b"x") + encode([12])[:3]
    dec = FrameDecoder()
    assert [b[0][0][0] for b in dec.feed(data)] == [10, 11]
    assert dec.buffered == 3


def test_oversized_frames_are_refused_from_the_prefix_alone():
    dec = FrameDecoder(max_header=100, max_payload=1000)
    with pytest.raises(ProtocolError, match="payload of 5000 bytes refused"):
        dec.feed(PREFIX.pack(10, 5000))
    with pytest.raises(ProtocolError, match="header of 200 bytes refused"):
        FrameDecoder(max_header=100).feed(PREFIX.pack(200, 0))


def test_malformed_headers_are_protocol_errors():
    for header in (b"\xc1", b"\x91\x01", b"\x92\x90\x91\x05"):
        with pytest.raises(ProtocolError):
            FrameDecoder().feed(PREFIX.pack(len(header), 0) + header)


def test_max_frames_leaves_the_rest_buffered():
    dec = FrameDecoder()
    assert len(dec.feed(encode([1]) + encode([2]), max_frames=1)) == 1
    assert dec.feed(b"")[0][0][0] == [2]


def test_big_frames_decode_the_same_in_any_chunking():
    import random
    rng = random.Random(3)
    frames = [encode([2, i], bytes([i % 251]) * rng.randint(0, 200)) for i in range(60)]
    stream = b"".join(frames)
    expected = FrameDecoder(big=1 << 30).feed(stream)
    for _ in range(30):
        dec = FrameDecoder(big=64)   # most of these frames take the big-frame path
        got, pos = [], 0
        while pos < len(stream):
            n = rng.randint(1, 300)
            got += dec.feed(stream[pos:pos + n], max_frames=rng.choice([None, None, 1]))
            pos += n
        got += dec.feed(b"")
        while dec.buffered and (more := dec.feed(b"")):
            got += more
        assert [[(list(h), bytes(p)) for h, p in b] for b in got] == \
            [[(list(h), bytes(p)) for h, p in b] for b in expected]
        assert dec.buffered == 0


def test_frames_read_from_a_socket_in_any_pieces_decode_as_one_feed():
    """``recv_frames`` over a real socket, with a writer sending in random pieces and
    reads of random sizes: the batches equal one whole ``feed`` of the stream, and a big
    payload is a read-only view of the one buffer its frame was joined into."""
    import random
    import socket
    import threading

    from grain.net.transport import recv_frames
    rng = random.Random(5)
    frames = [encode([2, i], bytes([i]) * rng.choice([0, 10, 5000, 300_000]))
              for i in range(40)]
    stream = b"".join(frames)
    expected = FrameDecoder(big=1 << 30).feed(stream)
    a, b = socket.socketpair()

    def write() -> None:
        pos = 0
        while pos < len(stream):
            n = rng.randint(1, 200_000)
            a.sendall(stream[pos:pos + n])
            pos += n
        a.close()

    writer = threading.Thread(target=write)
    writer.start()
    dec = FrameDecoder(big=100_000)
    got = []
    while True:
        n, batches = recv_frames(b, dec, size=rng.randint(1, 70_000))
        if not n:
            break
        got += batches
    writer.join()
    b.close()
    assert [[(list(h), bytes(p)) for h, p in bt] for bt in got] == \
        [[(list(h), bytes(p)) for h, p in bt] for bt in expected]
    big = [p for bt in got for _, p in bt if len(p) == 300_000]
    assert big and all(isinstance(p, memoryview) and len(p.obj) > 300_000 and p.readonly
                       for p in big)


def test_the_protocol_docs_are_generated_from_the_declarations():
    """docs/protocol.md's message tables are exactly what the message structs say
    (regenerate with `python -m grain.protocol.doc --write`)."""
    from grain.protocol import doc
    assert doc.current() == doc.render()


def test_typed_frames_round_trip_and_refuse_other_hops():
    from grain.protocol import messages as m
    msgs = [(m.Submit(1, [("Cores", {"N": 1})], 2, name="f"), b"args"), (m.Ack([1, 2]), b"")]
    dec = FrameDecoder(m.ClientToExecutor)
    [batch] = dec.feed(encode_batch(msgs))
    assert batch == msgs
    with pytest.raises(ProtocolError, match="Invalid value 9"):
        FrameDecoder(m.ClientToExecutor).feed(encode(m.Done(1, 2, 0), b"x"))
    with pytest.raises(ProtocolError, match="NaN|nan|>= 0|float"):
        FrameDecoder(m.ClientToExecutor).feed(encode([10, float("nan")]))


def test_wire_keys_are_equal_exactly_for_equal_wire_forms() -> None:
    """Request caches are keyed by ``wire_key``: equal wire forms share a key, different
    ones never do, including what msgpack cannot encode (keyed by ``repr``)."""
    from grain.protocol.frames import wire_key
    from grain.resource import Cores, Memory, to_wire

    class Odd:
        def __repr__(self) -> str:
            return "Odd()"

    a, b = to_wire(Cores(2) & Memory(1)), to_wire(Cores(2) & Memory(1))
    assert wire_key(a) == wire_key(b)
    assert wire_key(a) != wire_key(to_wire(Cores(3) & Memory(1)))
    odd = [("Custom", {"x": Odd()})]
    assert wire_key(odd) == wire_key([("Custom", {"x": Odd()})])
    assert wire_key([("Custom", {"x": 2 ** 70})]) != wire_key([("Custom", {"x": 2 ** 69})])
    # a value keyed by repr cannot take the key of one that msgpack encodes
    assert wire_key(odd)[:1] == b"\xc1" and not wire_key(a).startswith(b"\xc1")
