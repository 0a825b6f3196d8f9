"""A map of job ids that never stalls the event loop while it grows. Pure code.

A Python dict grows by rebuilding its whole table at once: with a million entries that is
one step of 30-150 ms on these machines, and the executor keeps several maps with one entry
per job (the ledger by job id, the queued ids, each session's jobs by the client's id, its
results not yet acknowledged). Each doubling was a stall of the executor's event loop in
which no peer was served (``bench/stall.py`` showed them at 175k, 350k and 700k jobs).

``JobTable`` keeps its entries in one small dict per block of ``2 ** BLOCK_BITS``
consecutive ids, found by the block's number. Ids are handed out in order, so one block
fills at a time and a rebuild copies at most one block; a million ids make 245 blocks.
A block that lost most of its entries is rebuilt smaller (dicts never shrink by
themselves, and a table that held a million jobs must give their memory back), and an
empty one is dropped.

Iteration is block by block, in the order the blocks were made, and in insertion order
within a block: for ids handed out in order, that is id order (ending a session's jobs
front to back keeps placement's queues cheap to cut).

Ids a client picks itself can be sparse: each then gets a block of its own, and that
session's table costs about 250 bytes per entry and grows as one dict does (the per-user
limit on queued jobs bounds both).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar, overload

V = TypeVar("V")
D = TypeVar("D")

BLOCK_BITS = 12
"""Ids ``k`` with the same ``k >> BLOCK_BITS`` share a block (4,096 of them)."""
SHRINK_BELOW = 1 / 8
"""A block whose size falls below this fraction of its largest is rebuilt."""
SHRINK_MIN = 512
"""Blocks that never held more than this many entries are never rebuilt."""

_MISSING = object()


class JobTable(MutableMapping[int, V], Generic[V]):
    """A ``dict`` of int keys whose growth costs small steps (see the module docstring)."""

    __slots__ = ("_blocks", "_peak", "_len")

    def __init__(self) -> None:
        self._blocks: dict[int, dict[int, V]] = {}
        self._peak: dict[int, int] = {}   # the largest size of each block since its rebuild
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        if type(key) is not int:
            return False
        block = self._blocks.get(key >> BLOCK_BITS)
        return block is not None and key in block

    def __getitem__(self, key: int) -> V:
        block = self._blocks.get(key >> BLOCK_BITS)
        if block is None:
            raise KeyError(key)
        return block[key]

    @overload
    def get(self, key: int, /) -> V | None: ...
    @overload
    def get(self, key: int, default: V | D, /) -> V | D: ...

    def get(self, key: int, default: object = None) -> object:
        block = self._blocks.get(key >> BLOCK_BITS)
        return default if block is None else block.get(key, default)

    def __setitem__(self, key: int, value: V) -> None:
        b = key >> BLOCK_BITS
        block = self._blocks.get(b)
        if block is None:
            block = self._blocks[b] = {}
            self._peak[b] = 0
        n = len(block)
        block[key] = value
        if len(block) > n:
            self._len += 1
            if n >= self._peak[b]:
                self._peak[b] = n + 1

    def __delitem__(self, key: int) -> None:
        if self.pop(key, _MISSING) is _MISSING:
            raise KeyError(key)

    @overload
    def pop(self, key: int, /) -> V: ...
    @overload
    def pop(self, key: int, default: V | D, /) -> V | D: ...

    def pop(self, key: int, default: object = _MISSING) -> object:
        b = key >> BLOCK_BITS
        block = self._blocks.get(b)
        if block is None or key not in block:
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = block.pop(key)
        self._len -= 1
        if not block:
            del self._blocks[b], self._peak[b]
        elif self._peak[b] > SHRINK_MIN and len(block) < self._peak[b] * SHRINK_BELOW:
            # a copy of at most an eighth of one block: a small step
            self._blocks[b] = dict(block)
            self._peak[b] = len(block)
        return value

    def __iter__(self) -> Iterator[int]:
        for chunk in self.key_chunks():
            yield from chunk

    def drop_some(self, limit: int) -> int:
        """Drop up to ``limit`` entries, from the oldest block: how many went. For freeing
        a large table in steps (a whole block of job records at once, freed with what
        they hold, was itself a stall of several milliseconds)."""
        if not self._blocks:
            return 0
        b = next(iter(self._blocks))
        block = self._blocks[b]
        n = min(limit, len(block))
        pop = block.popitem
        for _ in range(n):
            pop()
        if not block:
            del self._blocks[b]
            del self._peak[b]
        self._len -= n
        return n

    def clear(self) -> None:
        self._blocks.clear()
        self._peak.clear()
        self._len = 0

    def key_chunks(self) -> Iterator[list[int]]:
        """The keys, one block at a time (each a snapshot taken when it is reached, so
        the caller may change the table meanwhile): for work over every entry done in
        steps."""
        for b in list(self._blocks):
            block = self._blocks.get(b)
            if block:
                yield list(block)

    def __repr__(self) -> str:
        return f"JobTable({len(self)} entries in {len(self._blocks)} blocks)"
