"""Classes of the user's script come back as themselves: a job's ``@dataclass Result``,
a nested ``Outer.Inner`` and an exception ``MyError`` defined in ``__main__`` travel to the
runner by value and back by reference, so ``isinstance``, ``==``, ``hash``, ``pickle``,
``except MyError`` and ``temporary_err=(MyError,)`` work in the client, on the embedded
cluster and over TCP. A class defined inside a function cannot be named and comes back by
value (a look-alike that still works)."""

from __future__ import annotations

import pytest
from runner_cluster import RunScript, TcpCluster, last_json, tcp_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(240)

SCRIPT = """
    import json
    import os
    import pickle
    import sys
    from dataclasses import dataclass

    import numpy as np

    import grain
    from grain import Cores


    @dataclass
    class Result:
        i: int
        mean: float


    class Outer:
        @dataclass(frozen=True)
        class Inner:
            tag: str


    class MyError(Exception):
        pass


    class Flaky(Exception):
        pass


    def compute(i):
        return Result(i, float(np.mean(np.arange(i + 1))))


    def nested():
        return Outer.Inner("x")


    def fails(i):
        raise MyError(f"bad {i}")


    def flaky(path):
        # fails with Flaky the first two times, then returns
        n = int(open(path).read()) if os.path.exists(path) else 0
        with open(path, "w") as f:
            f.write(str(n + 1))
        if n < 2:
            raise Flaky(n)
        return Result(n, 0.0)


    def local_class():
        class Point:
            pass
        p = Point()
        p.x = 3
        return p


    async def main():
        out = {}
        r = await grain.exec1(Cores(1), compute, 3)
        out["isinstance"] = isinstance(r, Result)
        out["eq"] = r == Result(3, 1.5)
        out["pickle"] = pickle.loads(pickle.dumps([r])) == [Result(3, 1.5)]
        async with grain.open_waitgroup() as wg:
            for i in range(4):
                wg.submit(Cores(1), compute, i)
        out["waitgroup"] = wg.results == [Result(i, i / 2) for i in range(4)]
        n = await grain.exec1(Cores(1), nested)
        out["nested"] = (type(n) is Outer.Inner and n == Outer.Inner("x")
                         and hash(n) == hash(Outer.Inner("x")))
        try:
            await grain.exec1(Cores(1), fails, 7)
            out["caught"] = "no error"
        except MyError as e:
            out["caught"] = f"MyError: {e}"
        except Exception as e:
            out["caught"] = f"not caught as MyError: {type(e).__qualname__} {e}"
        r = await grain.exec1(Cores(1), flaky, os.path.abspath("flaky-count"))
        out["retried"] = [r == Result(2, 0.0), open("flaky-count").read()]
        out["local"] = (await grain.exec1(Cores(1), local_class)).x
        print(json.dumps(out))


    kw = dict(address=sys.argv[1], token=sys.argv[2]) if len(sys.argv) > 2 else {}
    grain.run_combine(main, temporary_err=(Flaky,), output="off", progress=False, **kw)
"""

EXPECTED = {"isinstance": True, "eq": True, "pickle": True, "waitgroup": True,
            "nested": True, "caught": "MyError: bad 7", "retried": [True, "3"], "local": 3}


def test_script_classes_come_back_as_themselves(run_script: RunScript) -> None:
    assert last_json(run_script(SCRIPT)) == EXPECTED


def test_script_classes_come_back_as_themselves_over_tcp(
        run_script: RunScript, tcp_cluster: TcpCluster) -> None:  # noqa: F811
    assert last_json(run_script(SCRIPT, args=tcp_cluster.args)) == EXPECTED
