"""The GitHub workflows and kind configs hang together (they only run on GitHub)."""

from __future__ import annotations

import yaml

from .chart_tools import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def _steps(workflow: str, job: str) -> list[dict]:
    return yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]["steps"]


def test_ci_runs_the_project_script():
    runs = [s.get("run", "") for s in _steps("ci.yml", "test")]
    assert "bash .ci/run" in runs


def test_e2e_matrix_has_both_kubelet_variants_with_configs():
    wf = yaml.safe_load((WORKFLOWS / "e2e.yml").read_text())
    job = wf["jobs"]["kind"]
    variants = job["strategy"]["matrix"]["variant"]
    assert set(variants) == {"default", "static-cpu"}
    assert job["env"]["GRAIN_E2E_REQUIRED"] == "1"
    for variant in variants:
        config = yaml.safe_load((ROOT / "tests" / "e2e" / f"kind-{variant}.yaml").read_text())
        roles = [n["role"] for n in config["nodes"]]
        assert roles == ["control-plane", "worker", "worker"]
        patches = "".join(config.get("kubeadmConfigPatches", []))
        assert ("cpuManagerPolicy: static" in patches) == (variant == "static-cpu")
        if variant == "static-cpu":
            assert "reservedSystemCPUs" in patches


def test_e2e_builds_loads_installs_and_dumps_on_failure():
    steps = _steps("e2e.yml", "kind")
    text = "\n".join(s.get("run", "") for s in steps)
    assert "docker build -t grain:e2e ." in text
    assert "kind load docker-image grain:e2e" in text
    assert "pytest -p no:kmock tests/e2e" in text
    dump = [s for s in steps if s.get("if") == "failure()"]
    assert dump and "dump.sh" in dump[0]["run"]
    assert "kubectl get all -A" in (ROOT / "tests" / "e2e" / "dump.sh").read_text()
