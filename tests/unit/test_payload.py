"""Payload pickling: stdlib pickle when it can, dill for __main__ and closures."""

import pytest

from grain.errors import SerializationError
from grain.protocol import payload as pl


def test_plain_data_uses_stdlib_pickle():
    data = pl.dumps(((1, "a"), {"k": [1.5]}))
    assert b"dill" not in data
    assert pl.loads(data) == ((1, "a"), {"k": [1.5]})


def test_closures_and_lambdas_use_dill():
    k = 3
    data = pl.dumps(lambda x: x * k)
    assert b"dill._dill" in data
    assert pl.loads(data)(2) == 6


def test_unpicklable_object_is_named_in_the_error():
    gen = (x for x in range(3))
    with pytest.raises(SerializationError, match="the argument <generator"):
        pl.dumps(gen, "the argument")


def test_modules_travel_by_reference():
    import json

    def uses_json():
        return json.dumps([1])
    data = pl.dumps(uses_json)
    assert len(data) < 2000, "the json module itself must not be pickled by value"
    assert pl.loads(data)() == "[1]"


def test_main_references_are_found_exactly_not_by_scanning_bytes():
    data = pl.dumps({"note": "__main__ is just text here", "blob": b"__main__" * 1000})
    assert b"dill" not in bytes(data), "a string that says __main__ needs no dill"

    class Local:
        def __init__(self):
            self.x = 1
    Local.__module__ = "__main__"      # as if defined in the user's script
    Local.__qualname__ = "Local"
    data = pl.dumps([1, Local()])
    assert b"dill._dill" in bytes(data), "an instance of a __main__ class goes by value"
    assert pl.loads(data)[1].x == 1
