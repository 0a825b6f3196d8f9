"""``python -m grain_operator``: the command line and the kopf settings it leads to."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grain_operator.__main__ import parse_args
from grain_operator.settings import FINALIZER, OperatorConfig, kopf_settings

pytestmark = pytest.mark.timeout(30)


def test_namespaces_repeatable_and_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAIN_WATCH_NAMESPACES", raising=False)
    config = parse_args(["--namespace", "a", "-n", "b,c", "--liveness", "http://0.0.0.0:8080/healthz"])
    assert config.namespaces == ("a", "b", "c") and not config.all_namespaces
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_all_namespaces_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAIN_WATCH_NAMESPACES", raising=False)
    assert parse_args(["--all-namespaces"]).all_namespaces
    monkeypatch.setenv("GRAIN_WATCH_NAMESPACES", "x, y")
    monkeypatch.setenv("GRAIN_IMAGE", "registry/grain:9")
    config = parse_args([])
    assert config.namespaces == ("x", "y") and config.default_image == "registry/grain:9"
    monkeypatch.setenv("GRAIN_WATCH_NAMESPACES", "")
    assert parse_args([]).all_namespaces  # the chart's empty value: every namespace


def test_both_scopes_is_an_error() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--all-namespaces", "--namespace", "a"])
    with pytest.raises(ValueError):
        OperatorConfig()


def test_kopf_settings() -> None:
    settings = kopf_settings(OperatorConfig(namespaces=("a",)))
    assert settings.persistence.finalizer == FINALIZER == "grain.dev/finalizer"
    assert settings.scanning.disabled and settings.peering.standalone
    assert settings.watching.server_timeout and settings.watching.client_timeout > settings.watching.server_timeout
    assert settings.networking.request_timeout and settings.networking.connect_timeout


def test_help_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "grain_operator", "--help"], capture_output=True, text=True,
                         timeout=25, check=True)
    assert "--all-namespaces" in out.stdout and "--namespace" in out.stdout and "--liveness" in out.stdout
