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
