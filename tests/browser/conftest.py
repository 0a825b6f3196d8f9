"""Fixtures of the browser tier: real Grain processes (the network tier's harness) and a
headless Chromium that every test stops, whatever happens."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NET_DIR = Path(__file__).resolve().parents[1] / "network"
if str(NET_DIR) not in sys.path:
    sys.path.insert(0, str(NET_DIR))

from chromium import Chromium, find_chromium  # noqa: E402
from grain_harness import Harness  # noqa: E402


@pytest.fixture
def grain_procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Grain executors and workers as real processes, stopped after the test (runners and
    jobs that outlive them fail it); their logs are printed when the test failed."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        problems = h.cleanup()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for p in h.procs:
                print(f"----- {p.name} -----\n{p.tail(60)}")
            named = {p.log_path for p in h.procs}
            for log in sorted(h.tmp.glob("*.log")):
                if log not in named:   # the user programs the test started
                    print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-4000:]}")
        assert not problems, "processes outlived their worker/executor:\n" + "\n".join(problems)


@pytest.fixture
def chromium(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Chromium]:
    """Headless Chromium with a private profile; stopped (its whole process group) after
    the test. Skips when Debian's ``chromium`` is not installed (scripts/system-deps.sh
    installs it when run as root)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (scripts/system-deps.sh installs Debian's "
                    "chromium as root); the browser tier needs it")
    browser = Chromium.start(tmp_path, binary)
    try:
        yield browser
    finally:
        browser.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"----- chromium -----\n{(tmp_path / 'chromium.log').read_text()[-4000:]}")
        left = browser.leftovers()
        assert not left, f"browser processes outlived the test: {left}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
