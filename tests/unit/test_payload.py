"""Payload pickling: stdlib pickle when it can, dill for __main__ and closures; objects that
cannot be copied are refused; classes of the client's __main__ come back by reference."""

import io
import pickle
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grain.errors import SerializationError
from grain.protocol import payload as pl


def test_plain_data_uses_stdlib_pickle() -> None:
    data = pl.dumps(((1, "a"), {"k": [1.5]}))
    assert b"dill" not in data
    assert pl.loads(data) == ((1, "a"), {"k": [1.5]})


def test_closures_and_lambdas_use_dill() -> None:
    k = 3
    data = pl.dumps(lambda x: x * k)
    assert b"dill._dill" in data
    assert pl.loads(data)(2) == 6


def test_unpicklable_object_is_named_in_the_error() -> None:
    gen = (x for x in range(3))
    with pytest.raises(SerializationError, match="the argument <generator"):
        pl.dumps(gen, "the argument")


def test_modules_travel_by_reference() -> None:
    import json

    def uses_json() -> str:
        return json.dumps([1])
    data = pl.dumps(uses_json)
    assert len(data) < 2000, "the json module itself must not be pickled by value"
    assert pl.loads(data)() == "[1]"


def test_main_references_are_found_exactly_not_by_scanning_bytes() -> None:
    data = pl.dumps({"note": "__main__ is just text here", "blob": b"__main__" * 1000})
    assert b"dill" not in bytes(data), "a string that says __main__ needs no dill"

    class Local:
        def __init__(self) -> None:
            self.x = 1
    Local.__module__ = "__main__"      # as if defined in the user's script
    Local.__qualname__ = "Local"
    data = pl.dumps([1, Local()])
    assert b"dill._dill" in bytes(data), "an instance of a __main__ class goes by value"
    assert pl.loads(data)[1].x == 1


# -- objects that cannot be copied meaningfully are refused, naming them ----------------------
LOCK = threading.Lock()


def _uses_global_lock() -> int:
    with LOCK:
        return 1


@pytest.mark.parametrize("make, words", [
    (threading.Lock, "a threading lock"),
    (threading.RLock, "a threading lock"),
    (threading.Event, "a threading lock"),          # holds a Condition, which holds a lock
    (lambda: open(__file__), "an open file"),        # noqa: SIM115
    (socket.socket, "a socket"),
    (lambda: (x for x in range(3)), "a generator"),
])
def test_objects_that_cannot_be_copied_are_refused_in_arguments(make: Callable[[], Any], words: str) -> None:
    """stdlib pickle path: the object sits in the arguments, two levels down."""
    obj = make()
    try:
        with pytest.raises(SerializationError, match=words) as e:
            pl.dumps(((1, {"k": obj}), {}), "an argument of job f")
        assert "an argument of job f" in str(e.value)
        assert "[0][1]['k']" in str(e.value), "the message says where the object is"
    finally:
        getattr(obj, "close", lambda: None)()


def test_a_lock_held_by_a_closure_is_refused_on_the_dill_path() -> None:
    """dill pickles locks (and files) without complaint: the closure of a lambda goes
    through dill, and the lock in it must still be refused."""
    held = threading.Lock()
    held.acquire()
    fn = lambda: held.locked()  # noqa: E731
    with pytest.raises(SerializationError, match=r"refers to a threading lock <locked.*"
                                                 r"variable held of .*lambda"):
        pl.dumps(fn, "the job function")


def test_a_global_lock_of_the_script_is_named() -> None:
    """A function of the user's script travels by value with the globals it uses; a
    function of an importable module goes by reference (the runner imports the module and
    has its own lock, which is fine)."""
    script = {"__name__": "__main__", "LOCK": threading.Lock()}
    exec("def work():\n    with LOCK:\n        return 1\n", script)  # noqa: S102
    with pytest.raises(SerializationError, match=r"global LOCK of work"):
        pl.dumps(script["work"], "the job function")
    assert pl.loads(pl.dumps(_uses_global_lock))() == 1


def test_an_open_file_in_a_main_class_instance_is_refused_on_the_dill_path(tmp_path: Path) -> None:
    class Holder:
        def __init__(self, f: Any) -> None:
            self.f = f
    Holder.__module__ = "__main__"   # forces the dill path
    with open(tmp_path / "x", "w") as f:
        with pytest.raises(SerializationError, match=r"an open file .*\(\[0\]\.f\)"):
            pl.dumps([Holder(f)], "an argument")


def test_in_memory_files_are_copied_with_their_contents() -> None:
    assert pl.loads(pl.dumps(io.BytesIO(b"abc"))).read() == b"abc"
    assert pl.loads(pl.dumps(io.StringIO("abc"))).read() == "abc"


def test_the_same_refusals_apply_to_a_runners_results() -> None:
    with pytest.raises(SerializationError, match="a threading lock"):
        pl.runner_dumps({"lock": threading.Lock()}, "the job's result")


# -- the size limit --------------------------------------------------------------------------
def test_a_payload_over_its_limit_is_refused_without_being_built() -> None:
    big = b"x" * (8 << 20)
    with pytest.raises(pl.TooLarge, match=r"the job's result is over the size limit of 1 MiB"):
        pl.runner_dumps([big], "the job's result", limit=1 << 20)
    assert pl.loads(pl.runner_dumps([b"x" * 1000], limit=1 << 20)) == [b"x" * 1000]


# -- classes of the client's __main__ come back as themselves ---------------------------------
@pytest.fixture
def client_main(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A stand-in for the user's script: classes whose module is ``__main__`` and that the
    ``__main__`` module really holds (as in a program run as ``python main.py``)."""
    main = sys.modules["__main__"]

    @dataclass
    class Result:
        n: int

    class Outer:
        class Inner(Exception):
            pass

    for cls, qual in ((Result, "Result"), (Outer, "Outer"), (Outer.Inner, "Outer.Inner")):
        cls.__module__ = "__main__"
        cls.__qualname__ = qual
    monkeypatch.setattr(main, "Result", Result, raising=False)
    monkeypatch.setattr(main, "Outer", Outer, raising=False)
    monkeypatch.setattr(pl, "_client_classes", weakref.WeakSet())
    return Result, Outer


def _as_if_in_a_runner(data: bytes) -> Any:
    """Unpickle as a runner does (its __main__ is not the user's)."""
    return pl.runner_loads(data)


def test_main_classes_go_to_the_runner_by_value_and_come_back_by_reference(client_main: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    Result, Outer = client_main
    sent = pl.dumps(((Result(1), Outer.Inner("bad")), {}))
    assert b"dill._dill" in bytes(sent), "the runner has no __main__.Result: by value"
    (r, e), _ = _as_if_in_a_runner(sent)
    assert type(r) is not Result and type(r).__qualname__ == "Result"   # a copy, there
    back = pl.runner_dumps((r, e), "the job's result")
    assert b"dill" not in bytes(back), "by reference: stdlib pickle, no class body"
    assert b"_from_main" in bytes(back)
    monkeypatch.setattr(pl, "_client_classes", weakref.WeakSet())      # now, the client's process
    r2, e2 = pl.loads(back)
    assert type(r2) is Result and r2 == Result(1)
    assert type(e2) is Outer.Inner and e2.args == ("bad",)
    assert pickle.loads(pickle.dumps([r2])) == [Result(1)], "the user can pickle it"


def test_classes_defined_in_a_function_still_go_by_value(client_main: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def factory() -> type:
        class Local:
            pass
        return Local
    Local = factory()
    Local.__module__ = "__main__"
    obj = Local()
    obj.x = 5
    (back_obj,), _ = _as_if_in_a_runner(pl.dumps(((obj,), {})))
    back = pl.runner_dumps(back_obj)
    assert b"_from_main" not in bytes(back)
    monkeypatch.setattr(pl, "_client_classes", weakref.WeakSet())
    assert pl.loads(back).x == 5


def test_a_main_class_the_client_does_not_have_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pl, "_client_classes", weakref.WeakSet())
    with pytest.raises(pickle.UnpicklingError, match="class NoSuchThing of the script"):
        pl._from_main("NoSuchThing")


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_runner_reads_a_payload_view_in_place(protocol: int) -> None:
    """A big payload reaches a runner as a read-only view of the frame it came in: it is
    unpickled from the view itself, the same as from bytes, whatever the pickle protocol
    (0 reads lines, 5 reads big objects straight into them)."""
    value = {"big": bytes(range(256)) * 5000, "text": "é\n" * 3, "n": [1.5, None, (2, 3)],
             "arr": bytearray(b"\x00\n" * 70_000)}
    data = pickle.dumps(value, protocol=protocol)
    view = memoryview(bytearray(b"??" + data)).toreadonly()[2:]   # not a bytes object
    assert pl.runner_loads(view) == value
    assert pl.runner_loads(data) == value


def test_a_runner_does_not_copy_a_payload_view_before_unpickling_it() -> None:
    """Unpickling a big view costs the objects it builds, not a second copy of it first
    (``io.BytesIO`` would copy any buffer that is not bytes)."""
    import tracemalloc
    value = [bytes(1 << 20) for _ in range(4)]
    view = memoryview(bytearray(pickle.dumps(value, protocol=5))).toreadonly()
    tracemalloc.start()
    try:
        out = pl.runner_loads(view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == value
    assert peak < 1.5 * len(view), f"{peak} bytes allocated to unpickle {len(view)}"
