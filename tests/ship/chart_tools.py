"""Helpers for the chart and manifest tests: render the chart, load the CRD, validate."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "grain"
KUBE_VERSION = "1.30.0"  # oldest Kubernetes the chart is checked against (Chart.yaml: >=1.25)


def load_script() -> ModuleType:
    """scripts/render_manifests.py as a module (scripts/ is not a package)."""
    path = ROOT / "scripts" / "render_manifests.py"
    spec = importlib.util.spec_from_file_location("render_manifests", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(
    values: dict[str, Any] | None = None, *, release: str = "grain", namespace: str = "grain-system"
) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (NOTES.txt left out)."""
    rendered = load_script().render_chart(values or {}, release=release, namespace=namespace)
    return [obj for objects in rendered.values() for obj in objects]


def notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name="grain", namespace="grain-system")
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def crd_schema() -> dict[str, Any]:
    """The GrainCluster v1 openAPIV3Schema from charts/grain/crds/ (skips until it exists)."""
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if (doc or {}).get("kind") != "CustomResourceDefinition":
                continue
            if (
                doc["spec"]["group"] == "grain.dev"
                and doc["spec"]["names"]["kind"] == "GrainCluster"
            ):
                for version in doc["spec"]["versions"]:
                    if version["name"] == "v1":
                        return version["schema"]["openAPIV3Schema"]
    pytest.skip(
        "charts/grain/crds/ has no GrainCluster v1 CRD yet (the operator's "
        "`make crd` generates it); the sample is checked against it once it exists"
    )


def check_against_crd(obj: dict[str, Any]) -> None:
    """Validate a GrainCluster object against the CRD's own schema."""
    jsonschema.Draft7Validator(crd_schema()).validate(obj)
