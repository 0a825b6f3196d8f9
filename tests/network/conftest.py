"""Fixtures of the network tests: real ``grain`` processes on loopback, cleaned up after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grain_harness import Harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a longer test (still in the default run)")


@pytest.fixture
def grain_procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Start executors and workers with ``grain_procs.executor()`` / ``.worker()``.

    Teardown interrupts every process (then kills it), and fails the test when any of
    their runner processes or jobs outlives them. On failure the processes' logs are
    printed.
    """
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        problems = h.cleanup()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for p in h.procs:
                print(f"----- {p.name} ({' '.join(p.argv[-12:])}) -----\n{p.tail(60)}")
        assert not problems, "processes outlived their worker/executor:\n" + "\n".join(problems)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost, made by trustme."""
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    other = trustme.CA()  # a CA nobody trusts
    files["other_ca"] = d / "other-ca.pem"
    other.cert_pem.write_to_path(str(files["other_ca"]))
    return {k: str(v) for k, v in files.items()}
