"""``JobTable``: behaves as a dict of int keys, grows one small block at a time, gives
memory back, and iterates ids handed out in order in id order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grain.executor.jobtable import BLOCK_BITS, JobTable

keys = st.one_of(st.integers(0, 20_000), st.integers(0, 2 ** 63 - 1))
ops = st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "get", "in"]), keys,
                         st.integers()), max_size=400)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_it_behaves_as_a_dict(program: list[tuple[str, int, int]]) -> None:
    table: JobTable[int] = JobTable()
    model: dict[int, int] = {}
    for op, k, v in program:
        if op == "set":
            table[k] = v
            model[k] = v
        elif op == "del":
            if k in model:
                del table[k]
                del model[k]
            else:
                with pytest.raises(KeyError):
                    del table[k]
        elif op == "pop":
            assert table.pop(k, None) == model.pop(k, None)
        elif op == "get":
            assert table.get(k) == model.get(k)
            assert table.get(k, -1) == model.get(k, -1)
        else:
            assert (k in table) == (k in model)
        assert len(table) == len(model)
    assert sorted(table) == sorted(model)
    assert dict(table.items()) == model
    assert sorted(k for chunk in table.key_chunks() for k in chunk) == sorted(model)
    with pytest.raises(KeyError):
        table.pop(-1)
    assert "not an int" not in table


def test_ids_in_order_fill_one_block_at_a_time_and_iterate_in_order() -> None:
    table: JobTable[None] = JobTable()
    for k in range(1, 100_001):
        table[k] = None
    # growth rebuilds at most one block of 4,096: never the whole table at once
    assert max(len(b) for b in table._blocks.values()) <= 1 << BLOCK_BITS
    for k in range(1, 50_001, 3):      # holes do not change the order
        del table[k]
    assert list(table) == sorted(table)
    chunks = list(table.key_chunks())
    assert len(chunks) > 20 and all(len(c) <= 1 << BLOCK_BITS for c in chunks)


def test_a_block_that_lost_most_entries_is_rebuilt_and_an_empty_one_dropped() -> None:
    table: JobTable[bytes] = JobTable()
    for k in range(1 << BLOCK_BITS):
        table[k] = b""
    block_before = table._blocks[0]
    for k in range(1, 1 << BLOCK_BITS):
        if k % 16:
            del table[k]
    assert table._blocks[0] is not block_before      # a fresh, small dict
    assert len(table._blocks[0]) == len(table)
    for k in list(table):
        del table[k]
    assert table._blocks == {} and len(table) == 0


def test_chunks_are_snapshots_so_the_caller_may_change_the_table() -> None:
    table: JobTable[int] = JobTable()
    for k in range(3 << BLOCK_BITS):
        table[k] = k
    seen = 0
    for chunk in table.key_chunks():
        for k in chunk:
            seen += 1
            del table[k]
    assert seen == 3 << BLOCK_BITS and len(table) == 0


def test_a_table_is_freed_in_bounded_steps_oldest_first() -> None:
    table: JobTable[int] = JobTable()
    for k in range(10_000):
        table[k] = k
    assert table.drop_some(100) == 100
    assert len(table) == 9_900 and 10_000 - 1 in table
    assert sorted(table)[:1] == [0]   # the oldest block loses entries, no other block
    assert table.drop_some(1 << BLOCK_BITS) == (1 << BLOCK_BITS) - 100   # the block's rest
    assert 0 not in table and (1 << BLOCK_BITS) in table
    steps = 0
    while table:
        steps += 1
        assert 0 < table.drop_some(1000) <= 1000
    assert steps == 5 + 2 and len(table) == 0 and table.drop_some(1000) == 0  # 4,096 + 1,808
