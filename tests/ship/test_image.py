"""The Dockerfile, checked statically. The container tier (tests/containers) builds it and runs
the executor, workers and operator from it; the kind workflow builds it with Docker's defaults.
"""

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


def test_base_image_is_a_build_argument_defaulting_to_python_slim() -> None:
    first_from = next(i for i, (kw, _) in enumerate(INSTRUCTIONS) if kw.upper() == "FROM")
    global_args = [rest for kw, rest in INSTRUCTIONS[:first_from] if kw.upper() == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim" in global_args
    bases = [b.split()[0] for b in _all("FROM") if "--from" not in b]
    assert len(bases) == 2 and all(b == "${BASE_IMAGE}" for b in bases)


def test_no_syntax_directive() -> None:
    """`# syntax=` makes BuildKit pull a frontend image from a registry: no offline builds."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE | re.IGNORECASE)


def test_runs_as_non_root_matching_the_chart() -> None:
    users = _all("USER")
    assert users and users[-1].split(":")[0] == "10001"
    last_user = max(i for i, (kw, _) in enumerate(INSTRUCTIONS) if kw.upper() == "USER")
    assert all(kw.upper() != "RUN" for kw, _ in INSTRUCTIONS[last_user:])
    (deployment,) = [o for o in render() if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    uids = [pod.get("securityContext", {}).get("runAsUser")] + [
        c.get("securityContext", {}).get("runAsUser") for c in pod["containers"]]
    assert 10001 in uids


def test_entrypoint_is_the_grain_cli_and_no_healthcheck() -> None:
    assert _all("ENTRYPOINT") == ['["grain"]']
    assert not _all("HEALTHCHECK")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "grain" in scripts


def test_installs_project_with_operator_extra_under_constraints() -> None:
    runs = " ".join(_all("RUN"))
    assert '".[operator]"' in runs and "--constraint /wheelhouse/constraints.txt" in runs
    assert "--requirement /wheelhouse/constraints.txt" in runs
    assert "pip check" in runs


def test_offline_build_installs_only_from_the_wheelhouse() -> None:
    """With OFFLINE=1 every pip install gets --no-index --find-links /wheelhouse."""
    assert any(a.startswith("OFFLINE=") for a in _all("ARG"))
    installs = [r for r in _all("RUN") if "pip install" in r]
    assert len(installs) == 2
    for run in installs:
        assert 'if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheelhouse; fi' in run
        assert all('install "$@"' in part for part in run.split("pip ")[1:] if part.startswith("install"))
    # the wheelhouse is optional in the context (a glob that may match nothing)
    # (every part a glob: BuildKit fails on a missing parent directory of a glob)
    assert any(re.search(r"\bbuil\[d\]/wheelhous\[e\] /wheelhouse/", c) for c in _all("COPY"))


def test_final_stage_copies_only_the_environment() -> None:
    final = max(i for i, (kw, _) in enumerate(INSTRUCTIONS) if kw.upper() == "FROM")
    copies = [rest for kw, rest in INSTRUCTIONS[final:] if kw.upper() == "COPY"]
    assert copies == ["--from=build /opt/grain /opt/grain"]
    env = " ".join(rest for kw, rest in INSTRUCTIONS[final:] if kw.upper() == "ENV")
    assert "PATH=/opt/grain/bin:$PATH" in env


def test_constraints_pin_every_runtime_dependency() -> None:
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


def test_dockerignore_is_an_allowlist() -> None:
    lines = [
        ln
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {src for rest in _all("COPY") if "--from" not in rest for src in rest.split()[:-1]}
    assert {re.sub(r"[\[\]*]", "", c) for c in copied} <= allowed


def test_makefile_builds_the_image_and_the_wheelhouse() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image:", makefile, re.MULTILINE)
    assert re.search(r"^wheelhouse:", makefile, re.MULTILINE)


def test_operator_module_is_runnable() -> None:
    """The Deployment runs `python -m grain_operator`: the package needs a __main__."""
    package = ROOT / "operator" / "grain_operator"
    if not (package / "__main__.py").exists():
        pytest.skip("operator/grain_operator/__main__.py does not exist")
    text = (package / "__main__.py").read_text()
    assert "liveness" in text or "kopf" in text


def test_chart_app_version_matches_project_version() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "grain" / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version.startswith(chart["appVersion"])
