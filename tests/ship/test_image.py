"""The Dockerfile, checked statically (no Docker engine here; the kind workflow builds it)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .chart_tools import ROOT, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.split(None, 1)
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _all(keyword: str) -> list[str]:
    return [rest for kw, rest in INSTRUCTIONS if kw.upper() == keyword]


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_base_image_and_final_stage():
    bases = [b.split()[0] for b in _all("FROM")]
    assert bases and all(b == "python:3.11-slim" for b in bases)


def test_runs_as_non_root_matching_the_chart():
    users = _all("USER")
    assert users and users[-1].split(":")[0] == "10001"
    last_user = max(i for i, (kw, _) in enumerate(INSTRUCTIONS) if kw.upper() == "USER")
    assert all(kw.upper() != "RUN" for kw, _ in INSTRUCTIONS[last_user:])
    (deployment,) = [o for o in render() if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


def test_entrypoint_is_the_grain_cli_and_no_healthcheck():
    assert _all("ENTRYPOINT") == ['["grain"]']
    assert not _all("HEALTHCHECK")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "grain" in scripts


def test_installs_project_with_operator_extra_under_constraints():
    runs = " ".join(_all("RUN"))
    assert "[operator]" in runs and "--constraint /tmp/constraints.txt" in runs
    assert "--requirement /tmp/constraints.txt" in runs


def test_constraints_pin_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [
        Requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"]["operator"]
    ]
    pins = _pins()
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned: run scripts/gen_constraints.py --write"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} violates {req}"
        )
    test_only = {"pytest", "kmock", "helm-python-sdk", "ruff", "hypothesis", "jsonschema"}
    assert not test_only & set(pins), "test tools do not belong in the image"


def test_dockerignore_is_an_allowlist():
    lines = [
        ln
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {src for rest in _all("COPY") if "--from" not in rest for src in rest.split()[:-1]}
    assert {c.rstrip("*") for c in copied} <= allowed


def test_operator_module_is_runnable():
    """The Deployment runs `python -m grain_operator`: the package needs a __main__."""
    package = ROOT / "operator" / "grain_operator"
    if not (package / "__main__.py").exists():
        pytest.skip(
            "operator/grain_operator/__main__.py does not exist yet (the operator engineer's): "
            "the chart's Deployment runs `python -m grain_operator --liveness=... --all-namespaces`"
        )
    text = (package / "__main__.py").read_text()
    assert "liveness" in text or "kopf" in text


def test_chart_app_version_matches_project_version():
    chart = yaml.safe_load((ROOT / "charts" / "grain" / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version.startswith(chart["appVersion"])
