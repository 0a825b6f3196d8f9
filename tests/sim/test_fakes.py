"""The stand-ins keep the interface of what they stand for: a method added to the real
runner pool or runner (and called by the agent) must be added to the fakes, or the
simulation would crash (or, worse, test a different agent)."""

from __future__ import annotations

import inspect
import re

from grain.testing.fake_runners import FakeRunnerPool, FakeRunnerProcess
from grain.worker.runners import RunnerPool, RunnerProcess


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))}


def test_the_fake_pool_has_every_method_of_the_real_one() -> None:
    # kill_orphans: the real pool's own business (processes a dead runner left behind)
    own = {"spawn", "kill_orphans"}
    missing = public_methods(RunnerPool) - public_methods(FakeRunnerPool) - own
    assert not missing, f"FakeRunnerPool lacks {sorted(missing)}"
    for name in public_methods(RunnerPool) - own:
        real = inspect.iscoroutinefunction(getattr(RunnerPool, name))
        fake = inspect.iscoroutinefunction(getattr(FakeRunnerPool, name))
        assert real == fake, f"{name}: async in one and not the other"


def test_the_fake_runner_has_every_method_and_attribute_of_the_real_one() -> None:
    missing = public_methods(RunnerProcess) - public_methods(FakeRunnerProcess) - {"wait"}
    assert not missing, f"FakeRunnerProcess lacks {sorted(missing)}"
    # attributes the real runner sets (but its process, socket and decoder, which the
    # agent never touches) are set by the fake too
    real = set(re.findall(r"self\.([a-z]\w*)\s*[:=]", inspect.getsource(RunnerProcess)))
    fake = set(re.findall(r"self\.([a-z]\w*)\s*[:=]", inspect.getsource(FakeRunnerProcess)))
    missing = real - fake - {"proc", "sock", "stream", "decoder"}
    assert not missing, f"FakeRunnerProcess lacks the attributes {sorted(missing)}"
