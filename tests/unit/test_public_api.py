"""The public API is pinned: programs written for the original grain keep importing it."""

import grain
import grain.resource


def test_all_is_pinned():
    assert sorted(grain.__all__) == sorted([
        "GPU", "GVAR", "ZERO", "Cores", "Memory", "Node", "Resource", "WTime", "WaitGroup",
        "__version__", "combine", "exec1", "load_cache_or_exec1", "open_waitgroup",
        "res2link0", "run_combine",
    ])
    for name in grain.__all__:
        assert hasattr(grain, name)


def test_original_imports_still_work():
    from grain.resource import ZERO, Cores, Memory, Node, WTime, res2link0  # noqa: F401


def test_gvar_outside_a_job_raises_lookuperror():
    import pytest
    with pytest.raises(LookupError):
        _ = grain.GVAR.res
    assert grain.GVAR.instance == "local"


def test_gvar_res_set_by_a_runner_is_built_when_first_read_and_once():
    """A runner sets ``res`` as a ``Deferred`` (most jobs never read it): ``GVAR.res`` and
    a pickled ``GVAR`` see the built allocation, built once."""
    import contextvars
    import pickle

    from grain.context import JOB_VARS, Deferred
    from grain.resource import Cores, Memory, from_wire, to_wire

    built = []

    def build():
        built.append(1)
        return from_wire(to_wire(Cores([2, 3]) & Memory(1)))

    def job():
        JOB_VARS["res"].set(Deferred(build))
        assert built == []
        first = grain.GVAR.res
        assert first.c == {2, 3} and grain.GVAR.res is first
        state = pickle.loads(pickle.dumps(grain.GVAR)).__getstate__()
        assert state["res"].c == {2, 3}
        return built

    assert contextvars.copy_context().run(job) == [1]
