"""Resources: the original grain's semantics, plus GPU, wire form and custom kinds."""

import math
import time

import pytest

from grain.resource import (
    GPU,
    ZERO,
    Cores,
    Memory,
    Node,
    Resource,
    UnknownResourceKind,
    WTime,
    from_wire,
    res2link0,
    to_wire,
)


def test_zero():
    assert str(ZERO) == "Ø"
    assert ZERO.request(ZERO)
    assert str(ZERO.alloc(ZERO)) == "Ø"
    some = Node(1, 1)
    assert some.request(ZERO)
    assert ZERO.request(some) is False
    with pytest.raises(ValueError, match="Cannot alloc"):
        ZERO.alloc(some)


def test_cores_repr_request_alloc_dealloc():
    assert str(Cores(3)) == "CPU_Cores([0-2])"
    assert str(Cores([5, 7, 8])) == "CPU_Cores([5,7-8])"
    c0 = Cores(16)
    assert c0.request(Cores(16)) and not c0.request(Cores(17))
    with pytest.raises(ValueError, match=r"cannot allocate .* core\(s\)"):
        c0.alloc(Cores(17))
    a = c0.alloc(Cores(3))
    assert len(a.c) == 3 and not (a.c & c0.c)
    assert a.c == {0, 1, 2}, "lowest ids first, so jobs pack"
    assert not c0.request(Cores(14))
    c0.dealloc(a)
    assert len(c0.c) == c0.N == 16


def test_memory():
    assert str(Memory(16)) == "Memory(16GB)"
    m0 = Memory(64)
    assert m0.request(Memory(64)) and not m0.request(Memory(65))
    a = m0.alloc(Memory(16))
    assert a.m == 16 and a.m + m0.m == 64
    m0.dealloc(a)
    assert m0.m == m0.M == 64


def test_walltime(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    t0, t1, t2 = WTime("1:56:40"), WTime(7000), WTime(7000, countdown=True)
    now[0] += 2.0
    assert str(t0) == str(t1) == "Walltime(01:56:40)" and str(t2) == "Walltime(01:56:38)"
    now[0] = 0.0
    t2 = WTime(30, countdown=True)
    assert t2.request(WTime(30))
    now[0] += 2.0
    assert t2.request(WTime(29)) is False
    assert t2.alloc(WTime(3)).T == 3
    assert WTime("1-00:00:01").T == 86401
    assert WTime(100, softT=10).softT == 10


def test_unlimited_lifetime():
    forever = WTime(math.inf, countdown=True)
    assert forever.request(WTime(10 ** 9))
    assert str(forever) == "Walltime(unlimited)"


def test_multiresource():
    assert str(Cores(3) & Memory(16)) == "CPU_Cores([0-2]) & Memory(16GB)"
    r = Cores(6) & Memory(16)
    assert r.request(Memory(8)) and r.request(Cores(3) & Memory(8))
    assert not r.request(Cores(9)) and not r.request(Cores(3) & Memory(17))
    with pytest.raises(ValueError, match="cannot allocate"):
        r.alloc(Cores(3) & Memory(17))
    assert len(r.c) == 6, "a failed alloc gives back what it took"
    with pytest.raises(ValueError, match="does not have the same shape"):
        r.alloc(WTime(3))
    a = r.alloc(Cores(3) & Memory(8))
    assert len(a.c) == 3 and a.m == 8 and len(a.c | r.c) == 6 and a.m + r.m == 16
    r.dealloc(a)
    assert len(r.c) == r.N == 6 and r.m == r.M == 16
    assert r >= Cores(6) and not (r >= Cores(7))


def test_same_kind_twice_is_refused():
    with pytest.raises(ValueError, match="same type"):
        Cores(1) & Cores(2)


def test_gpu():
    pool = Cores(4) & GPU([0, 1, 3])
    assert str(GPU([0, 1, 3])) == "GPU([0-1,3])"
    a = pool.alloc(GPU(2))
    assert a.g == {0, 1} and pool.g == {3}
    assert not pool.request(GPU(2))
    assert not Cores(4).request(GPU(1)), "a pool without GPUs offers none"


def test_res2link0():
    assert res2link0(Cores([5, 7, 8]) & Memory(16)) == "%CPU=5,7,8\n%Mem=16GB\n"
    assert res2link0(ZERO) == ""


def test_wire_roundtrip_builtin_kinds():
    r = Cores([1, 4]) & Memory(2.5) & GPU(1) & WTime(60, softT=30)
    back = from_wire(to_wire(r))
    assert back.c == {1, 4} and back.m == 2.5 and back.g == {0} and back.T == 60
    assert back.softT == 30
    assert repr(back) == repr(r)


class Tokens(Resource):
    """A custom kind used by these tests."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def _request(self, res):
        return self.n >= res.n

    def _alloc(self, res):
        self.n -= res.n
        return Tokens(res.n)

    def _dealloc(self, res):
        self.n += res.n

    def _repr(self):
        return f"Tokens({self.n})"


def test_custom_kind_composes_and_travels_by_class():
    pool = Cores(2) & Tokens(3)
    assert pool.request(Cores(1) & Tokens(3)) and not pool.request(Tokens(4))
    wire = to_wire(Cores(1) & Tokens(2))
    assert wire[1][0].endswith(":Tokens"), "custom kinds are named module:class"
    back = from_wire(wire)
    assert isinstance(back.kinds()["Tokens"], Tokens) and back.n == 2


def test_unknown_kind_is_refused_or_stood_in_for():
    wire = [["nowhere.mod:Licence", {"n": 1}]]
    with pytest.raises(UnknownResourceKind, match="--resource-module"):
        from_wire(wire)
    standin = from_wire(wire, strict=False)
    assert standin.n == 1 and "Licence" in repr(standin)


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        Cores(-1)
    with pytest.raises(ValueError):
        Memory(-2)
    with pytest.raises(ValueError):
        WTime(0)
