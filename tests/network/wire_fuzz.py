"""Arbitrary messages for the message-layer fuzz tests (``test_fuzz_messages.py``).

``Gen`` builds messages from their declarations in ``grain.protocol.messages`` (every field
of every struct, read with ``msgspec.inspect``): well-typed ones with arbitrary values
(ids from small pools, so that they name jobs, functions and sessions that exist;
resources with negative, fractional, NaN and absurd sizes; names and texts up to their
limits), messages of other hops, and raw arrays that break the declarations. A seeded
``random.Random`` drives it (hypothesis draws the seed and the shape of each session), so
that hundreds of thousands of messages cost seconds, not the minutes hypothesis would
take to draw every field itself.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import random
from typing import Any

import msgspec
from msgspec import inspect as mi

from grain.protocol import messages as m

NAMES = ["", "root", "alice", "fz1", "fz2", "wz", "x" * 256, "é", "\x00"]
TEXTS = ["", "ok", "worker draining", "y" * 1000]
KINDS = ["Cores", "Memory", "WTime", "GPU", "Unobtainium", "", "Cores "]
NUMBERS: list[Any] = [0, 1, 1, 2, 0.5, -1, 1.5, 2 ** 40, 2 ** 63 - 1, -(2 ** 63), math.nan,
                      math.inf, -math.inf, 1e308, "1", None, True, [1], {"N": 1}]


def by_tag() -> dict[int, type[m.Message]]:
    return {m.tag_of(c): c for c in m.all_messages()}


def hop_classes(union: Any) -> list[type[m.Message]]:
    return list(union.__args__)


class Gen:
    """Messages from a seeded random generator. ``sessions``, ``cids``, ``fids`` are the
    ids worth naming (they exist on the other side); ``pairs`` are (session, job) pairs
    the fuzzer saw (a fake worker answers for jobs it was really given)."""

    def __init__(self, rng: random.Random, sessions: list[int], workers: list[str]) -> None:
        self.rng = rng
        self.sessions = sessions
        self.workers = workers
        self.pairs: list[tuple[int, int]] = []
        self.fn_payloads: list[bytes] = [b"", b"\x80\x04N.", b"garbage",
                                         pickle.dumps(((), {})), pickle.dumps(((1,), {}))]

    # -- whole messages ------------------------------------------------------------------
    def message(self, cls: type[m.Message]) -> tuple[m.Message, bytes]:
        """A well-typed ``cls`` with arbitrary values, and a payload."""
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        values = {}
        for f in info.fields:
            if not f.required and self.rng.random() < 0.3:
                continue
            values[f.name] = self.value(f.type, f.name)
        if cls in (m.Done, m.JobOutput, m.Kill, m.Run) and self.pairs \
                and self.rng.random() < 0.6:
            values["sess"], values["cid"] = self.rng.choice(self.pairs)
        payload = self.payload()
        if cls in (m.ProjectBundle, m.SessionBundle) and self.rng.random() < 0.7:
            values["digest"] = hashlib.sha256(payload).hexdigest()   # gets past the check
        return cls(**values), payload

    def payload(self) -> bytes:
        r = self.rng.random()
        if r < 0.4:
            return b""
        if r < 0.7:
            return self.rng.choice(self.fn_payloads)
        if r < 0.97:
            return self.rng.randbytes(self.rng.randrange(64))
        return self.rng.randbytes(self.rng.randrange(64 * 1024))

    def raw(self) -> list[Any]:
        """An array that breaks the declarations: a known or unknown tag, fields of any
        type, too few or too many."""
        tag = self.rng.choice([*by_tag(), 0, 11, 99, -1, 2 ** 40, "2", None])
        return [tag, *(self.anything(2) for _ in range(self.rng.randrange(8)))]

    # -- values ----------------------------------------------------------------------------
    def value(self, t: mi.Type, name: str) -> Any:
        rng = self.rng
        if isinstance(t, mi.UnionType):
            t = rng.choice(t.types)
        if isinstance(t, mi.NoneType):
            return None
        if isinstance(t, mi.IntType):
            return self.int_for(t, name)
        if isinstance(t, mi.FloatType):
            hi = t.le if t.le is not None else 1e9
            return rng.choice([0.0, 0.001, 0.1, 1.0, 3.0, rng.uniform(0, 60), hi])
        if isinstance(t, mi.BoolType):
            return rng.random() < 0.5
        if isinstance(t, mi.StrType):
            if t.pattern:
                return rng.randbytes(32).hex()
            if name in ("started_on", "worker"):
                return rng.choice(self.workers + NAMES)
            pool = TEXTS if (t.max_length or 0) > 256 else NAMES
            s = rng.choice(pool)
            return s[:t.max_length] if t.max_length else s
        if isinstance(t, mi.BytesType):
            return rng.randbytes(rng.randrange(32))
        if isinstance(t, mi.ListType):
            if name in ("request", "alloc", "capacity"):
                return self.resource()
            n = rng.choice([0, 1, 1, 2, 3, 10])
            return [self.value(t.item_type, name) for _ in range(n)]
        if isinstance(t, mi.TupleType):
            return tuple(self.value(x, name) for x in t.item_types)
        if isinstance(t, mi.DictType):
            return {rng.choice(["a", "b", "OMP_NUM_THREADS", "jobs", ""]): (
                self.value(t.value_type, name) if not isinstance(t.value_type, mi.AnyType)
                else self.anything(1)) for _ in range(rng.randrange(4))}
        if isinstance(t, mi.StructType):
            return t.cls(**{f.name: self.value(f.type, f.name) for f in t.fields
                            if f.required or rng.random() < 0.5})
        return self.anything(1)

    def int_for(self, t: mi.IntType, name: str) -> int:
        rng = self.rng
        lo = t.ge if t.ge is not None else 0
        hi = t.le if t.le is not None else 2 ** 62
        if name == "sess":
            v = rng.choice(self.sessions + [0, rng.randrange(2 ** 63)])
        elif name in ("cid", "after", "cids"):
            v = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 20, 2 ** 63 - 1])
        elif name in ("fid", "key", "jid"):
            v = rng.choice([0, 1, 2, 3, 5, 2 ** 63 - 1])
        elif name == "end":
            v = rng.randrange(int(max(m.End)) + 1)
        else:
            v = rng.choice([lo, lo + 1, hi, rng.randrange(lo, min(hi, 2 ** 40) + 1)])
        return max(lo, min(hi, v))

    def resource(self) -> list[Any]:
        rng = self.rng
        parts = []
        for kind in rng.sample(KINDS, rng.choice([0, 1, 1, 2, 3])):
            if kind.startswith("Cores") or kind == "GPU":
                ids = rng.choice([[0], [0, 1], [], [1], [0, 0], [-1], list(range(40))])
                key = ("N", "c") if kind.startswith("Cores") else ("G", "g")
                state: dict[str, Any] = {key[0]: rng.choice(NUMBERS), key[1]: ids}
            elif kind == "Memory":
                state = {"m": rng.choice(NUMBERS), "M": rng.choice(NUMBERS)}
            elif kind == "WTime":
                state = {"T": rng.choice(NUMBERS), "softT": rng.choice(NUMBERS),
                         "left": rng.choice(NUMBERS)}
            else:
                state = {"x": rng.choice(NUMBERS)}
            if rng.random() < 0.1:
                state[rng.choice(["junk", "N", "m"])] = self.anything(2)
            parts.append((kind, state))
        if parts and rng.random() < 0.5:   # mostly sane: Cores(1) or Cores(2)
            parts[0] = ("Cores", {"N": rng.choice([1, 1, 2]), "c": [0]})
        return parts

    def anything(self, depth: int) -> Any:
        rng = self.rng
        r = rng.random()
        if depth <= 0 or r < 0.6:
            return rng.choice([*NUMBERS, "", "x" * 300, b"\xff", rng.randbytes(8)])
        if r < 0.8:
            return [self.anything(depth - 1) for _ in range(rng.randrange(4))]
        return {str(self.anything(0)): self.anything(depth - 1) for _ in range(rng.randrange(3))}


def encode_frame(messages: list[tuple[Any, bytes]]) -> bytes:
    """One frame of messages (structs or raw arrays) and their payloads."""
    from grain.protocol.frames import PREFIX
    enc = msgspec.msgpack.Encoder()
    header = enc.encode(([h for h, _ in messages], [len(p) for _, p in messages]))
    return PREFIX.pack(len(header), sum(len(p) for _, p in messages)) + header + \
        b"".join(p for _, p in messages)


def speak_to_worker(data: bytes, mode: str) -> int:
    """A job that plays a runner badly: writes ``data`` into its runner's socket (the
    runner is ``python -m grain.runner FD WORKER_PID``, the job runs inside it), then
    returns, sleeps, hangs or exits the runner."""
    import os
    import sys
    import time
    try:
        os.write(int(sys.argv[1]), data)
    except OSError:
        pass    # the worker may have hung up on us already
    if mode == "sleep":
        time.sleep(0.2)
    elif mode == "hang":
        time.sleep(60)
    elif mode == "exit":
        os._exit(3)
    return len(data)
